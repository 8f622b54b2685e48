"""The draft tree: merged and cut best-first, and its mask against running each path alone."""

from __future__ import annotations

import pytest
import torch

from tokenfill.runtime.model import reference_logits
from tokenfill.speculative.draft_tree import AcceptanceRates, DraftTree, PassCost
from tokenfill.speculative.drafters import Draft


def test_build_keeps_the_best_nodes_and_their_parents():
    drafts = [Draft((5,), 0.9, "a:x"), Draft((5, 6), 0.9, "a:x"), Draft((5, 6, 7), 0.9, "a:x"),
              Draft((8,), 0.3, "b:y"), Draft((5,), 0.5, "b:y"), Draft((5, 9), 0.2, "b:y")]
    tree = DraftTree.build(1, drafts, AcceptanceRates(), budget=4)
    assert len(tree) == 4
    assert tree.tokens[0] == 1 and tree.parents[0] == -1
    kept = {tuple(tree.path(i)[1:]) for i in range(1, len(tree))}
    assert kept == {(5,), (5, 6), (5, 6, 7)}  # 0.9, 0.81, 0.73 beat 0.3 and 0.18
    five = tree.path(1) == [1, 5] and 1
    assert set(tree.sources[five]) == {"a:x", "b:y"}  # merged: both drafted it
    for i in range(1, len(tree)):
        assert tree.parents[i] < i and tree.depths[i] == tree.depths[tree.parents[i]] + 1
        assert tree.scores[i] <= tree.scores[tree.parents[i]]


def test_nodes_come_depth_first_with_the_best_child_first():
    """The likeliest path takes the slots right after the root, where its accepted tokens'
    cache entries belong; every node still comes after its parent."""
    drafts = [Draft((5,), 0.6, "a:x"), Draft((5, 6), 0.9, "a:x"), Draft((8,), 0.9, "b:y"),
              Draft((8, 9), 0.9, "b:y"), Draft((8, 9, 4), 0.9, "b:y"), Draft((8, 3), 0.5, "c:z")]
    tree = DraftTree.build(1, drafts, AcceptanceRates(), budget=16)
    paths = [tuple(tree.path(i)[1:]) for i in range(len(tree))]
    assert paths == [(), (8,), (8, 9), (8, 9, 4), (8, 3), (5,), (5, 6)]
    assert tree.children[0] == [1, 5] and tree.children[1] == [2, 4]


def test_rates_move_from_the_guess_to_what_was_observed():
    rates = AcceptanceRates(prior=4)
    draft = Draft((3,), 0.9, "a:x")
    assert abs(rates.rate("a:x", 0.9) - 0.9) < 1e-12
    for _ in range(96):
        rates.observe("a:x", False)
    assert rates.rate("a:x", 0.9) < 0.05
    tree = DraftTree.build(1, [draft, Draft((4,), 0.3, "b:y")], rates, budget=2)
    assert tree.tokens == [1, 4]  # the unreliable source lost its place


def test_a_source_in_company_has_a_rate_of_its_own():
    """Nodes a source drafts alone and nodes other drafters draft too are counted apart: a weak
    source's rate alone does not drag down the nodes it agrees on, nor do they lift it."""
    rates = AcceptanceRates(prior=4)
    for _ in range(96):
        rates.observe("weak:r0", False)                 # alone: rejected
        rates.observe("weak:r0", True, together=True)   # with another drafter: accepted
        rates.observe("other:x", True, together=True)
    assert rates.rate("weak:r0", 0.5) < 0.05 < 0.95 < rates.rate("weak:r0", 0.5, together=True)
    drafts = [Draft((4,), 0.5, "weak:r0"), Draft((5,), 0.5, "weak:r0"), Draft((5,), 0.1, "other:x")]
    tree = DraftTree.build(1, drafts, rates, budget=2)
    assert tree.tokens == [1, 5] and tree.sources[1] == ("weak:r0", "other:x")
    assert tree.scores[1] > 0.95


def test_tree_pass_equals_each_path_run_alone(tiny_model):
    """One pass over the tree with its mask and positions gives every node the logits a full
    recompute of the prompt followed by that node's path gives."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 300, (12,), generator=g).tolist()
    drafts = [Draft((7,), 0.9, "a"), Draft((7, 8), 0.9, "a"), Draft((7, 8, 9), 0.9, "a"),
              Draft((10,), 0.8, "b"), Draft((10, 7), 0.7, "b"), Draft((7, 11), 0.5, "c")]
    tree = DraftTree.build(prompt[-1], drafts, AcceptanceRates(), budget=16)
    assert len(tree) == 7
    cache = tiny_model.new_cache(1, 64)
    with torch.inference_mode():
        tiny_model(torch.tensor([prompt[:-1]]), 0, cache)
        start = len(prompt) - 1
        got = tiny_model(torch.tensor([tree.tokens]), start, cache, positions=tree.positions(start),
                         mask=tree.mask())[0]
    for node in range(len(tree)):
        alone = reference_logits(tiny_model, torch.tensor([prompt[:-1] + tree.path(node)]))[0, -1]
        torch.testing.assert_close(got[node], alone, atol=1e-4, rtol=0)


def test_pass_cost_fits_trees_and_keeps_the_plain_step_apart():
    cost = PassCost()
    for _ in range(50):
        for T in (2, 4, 8, 16):
            cost.observe(T, 0.007 + 0.0003 * T)
        cost.observe(1, 0.005)
    a, b = cost.line()
    assert abs(a - 0.007) < 2e-4 and abs(b - 0.0003) < 2e-5
    assert abs(cost(1) - 0.005) < 1e-9 and abs(cost(10) - 0.010) < 2e-4
    # with a step that much cheaper than a tree of two, a lone weak draft is not worth a pass
    tree = DraftTree.build(1, [Draft((5,), 0.2, "a")], AcceptanceRates(), budget=8, cost=cost)
    assert len(tree) == 1
    tree = DraftTree.build(1, [Draft((5,), 0.9, "a"), Draft((5, 6), 0.9, "a")], AcceptanceRates(),
                           budget=8, cost=cost)
    assert len(tree) == 3


def test_a_tree_timed_during_a_stall_does_not_price_trees_out_for_good():
    cost = PassCost()
    cost.observe(8, 0.5)       # the first tree took half a second (a stall)
    for _ in range(20):
        cost.observe(1, 0.005)  # then only plain steps run
    assert cost(8) <= 0.005 * (1 + PassCost.MAX_SLOPE * 8) + 1e-9
    tree = DraftTree.build(1, [Draft((5,), 0.9, "a"), Draft((5, 6), 0.9, "a")], AcceptanceRates(),
                           budget=8, cost=cost)
    assert len(tree) == 3  # likely drafts still make a tree, whose timing then corrects the fit


def test_while_no_tree_is_timed_the_fit_drifts_back_to_the_prior():
    cost = PassCost()
    cost.observe(1, 0.005)
    for _ in range(5):
        cost.observe(8, 0.5)    # a busy spell: trees look dear, so none is built for a while
    drafts = [Draft((5,), 0.4, "a"), Draft((5, 6), 0.4, "a"), Draft((5, 6, 7), 0.4, "a")]
    assert len(DraftTree.build(1, drafts, AcceptanceRates(), budget=8, cost=cost)) == 1
    for _ in range(300):
        cost.observe(1, 0.005)  # plain steps only, at the machine's usual cost
    assert cost(8) < 0.005 * 1.5
    assert len(DraftTree.build(1, drafts, AcceptanceRates(), budget=8, cost=cost)) > 1


def test_pass_cost_table_gives_each_size_its_cost():
    cost = PassCost()
    assert cost.table(5)[1:] == pytest.approx([cost(T) for T in range(1, 6)])
    cost.observe(8, 0.5)        # a stall, then plain steps: the cap applies
    for _ in range(20):
        cost.observe(1, 0.005)
    cost.observe(4, 0.008)
    assert cost.table(40)[1:] == pytest.approx([cost(T) for T in range(1, 41)], rel=1e-12)
