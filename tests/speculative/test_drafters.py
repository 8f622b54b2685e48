"""Each drafter on its own: what it proposes, its gates, what it learns and keeps."""

from __future__ import annotations

import heapq
import random

import pytest
import torch

from tokenfill.runtime.heads import FutureHeads
from tokenfill.speculative.drafters import (
    DRAFTERS,
    ContextTokens,
    CorpusDrafter,
    HeadsDrafter,
    NGramDrafter,
    PromptLookup,
    TokenRecycling,
    reference_ends,
    registry,
)
from tokenfill.train import ngrams


def paths(drafts):
    return [d.path for d in drafts]


def test_context_lookup_equals_the_plain_loop():
    """Where the last n tokens occurred before, vectorised, against one position at a time, on
    small alphabets (many matches) as the context grows past its first array."""
    rng = random.Random(0)
    for trial in range(60):
        alphabet = rng.choice([2, 3, 5, 50])
        context = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 1500 if trial % 10 == 0 else 80))]
        seen = ContextTokens()
        for cut in sorted({len(context) // 3, len(context)}):
            seen.sync(context[:cut])
            for tail in (context[:cut][-4:], [rng.randrange(alphabet) for _ in range(5)]):
                got = seen.ends(tail, 4)
                assert got == reference_ends(context[:cut], tail, 4), (trial, cut, tail)


def test_prompt_lookup_continues_the_longest_earlier_match():
    context = [1, 2, 3, 4, 5, 6, 9, 9, 2, 3, 4, 7, 8, 1, 2, 3, 4]
    lookup = PromptLookup(max_n=3)
    lookup.begin(context[:10])
    got = paths(lookup.propose(context, budget=20, depth=3))
    assert (5, 6, 9) in got and (7, 8, 1) in got  # both earlier matches of 2 3 4, most recent first
    assert all(p[:-1] in got or len(p) == 1 for p in got)  # parents are there
    assert got.index((7,)) < got.index((5,))
    lookup.begin([42, 43])
    assert lookup.propose([42, 43], budget=5, depth=3) == []  # nothing earlier to copy


def test_prompt_lookup_sees_tokens_added_after_it_began():
    lookup = PromptLookup(max_n=2)
    lookup.begin([1, 2, 3])
    context = [1, 2, 3, 8, 9, 1, 2]
    lookup.extend(context, 4)
    assert (3, 8, 9) in paths(lookup.propose(context, budget=10, depth=3))


def test_ngram_gates_drop_weak_drafts():
    """The context's counts (taken at the first proposal) must clear both gates."""
    drafter = NGramDrafter("ngram", max_n=1, min_count=3, min_share=0.7)
    context = [1, 2, 5, 2, 1]  # after 1: 2 once: too few
    drafter.begin(context)
    assert drafter.propose(context, budget=4, depth=4) == []
    context = [1, 2, 1, 2, 1, 3, 1]  # after 1: 2 twice, 3 once: too weak a share
    drafter.begin(context)
    assert drafter.propose(context, budget=4, depth=4) == []
    context = [1, 2, 1, 2, 1, 2, 1, 3, 5, 1]  # after 1: 2 three times of four
    drafter.begin(context)
    got = drafter.propose(context, budget=4, depth=1)
    assert paths(got) == [(2,)] and abs(got[0].guess - 0.75) < 1e-9


def test_recycling_learns_the_models_top_tokens_from_verification():
    recycle = TokenRecycling(vocab=16, k=3)
    assert recycle.propose([4], budget=5, depth=3) == []
    logits = torch.full((2, 16), -10.0)
    logits[0, [7, 8, 9]] = torch.tensor([3.0, 2.0, 1.0])  # after token 4
    logits[1, [4, 1, 2]] = torch.tensor([3.0, 2.0, 1.0])  # after token 7
    recycle.verified(torch.tensor([4, 7]), logits)
    got = paths(recycle.propose([4], budget=6, depth=2))
    assert got[0] == (7,) and (7, 4) in got and (8,) in got
    assert len(got) <= 6 and all(len(p) <= 2 for p in got)
    recycle.max_nodes = 2
    assert paths(recycle.propose([4], budget=6, depth=2)) == [(7,), (7, 4)]


def best_first_reference(rows, guess, last, budget, depth):
    """Token recycling's draft grown the plain way: a heap of token paths by the product of
    their ranks' guesses."""
    heap = [(-guess[r], (t,)) for r, t in enumerate(rows[last])]
    heapq.heapify(heap)
    out = []
    while heap and len(out) < budget:
        neg, path = heapq.heappop(heap)
        out.append((path, -neg))
        if len(path) < depth:
            for r, t in enumerate(rows[path[-1]]):
                heapq.heappush(heap, (neg * guess[r], path + (t,)))
    return out


def test_recycling_grows_its_draft_best_first_as_the_plain_heap_does():
    """The rank paths worked out once give the nodes a heap over token paths gives: the same
    chances in the same order (ties may pick other nodes of the same chance), parents first."""
    rng = random.Random(1)
    for trial in range(40):
        vocab, k = rng.choice([(6, 2), (12, 3), (40, 6)])
        recycle = TokenRecycling(vocab=vocab, k=k, max_nodes=64)
        unseen = trial % 2  # then a few tokens have no row yet: the paths under them are passed over
        for token in range(vocab):
            if not unseen or rng.random() < 0.9:
                recycle.rows[token] = rng.sample(range(vocab), k)
        last, budget, depth = rng.randrange(vocab), rng.randrange(1, 40), rng.randrange(1, 8)
        got = recycle.propose([last], budget, depth)
        expected = best_first_reference(recycle.rows, recycle.guess, last, budget, depth)
        chance = {}
        for d in got:
            assert len(d.path) == 1 or d.path[:-1] in chance
            chance[d.path] = chance.get(d.path[:-1], 1.0) * d.guess
            assert len(d.path) <= depth
        got, expected = [round(c, 12) for c in chance.values()], [round(c, 12) for _, c in expected]
        if unseen:  # the best ones, in order, though it may stop short
            assert got == expected[:len(got)] and (got or not expected)
        else:
            assert got == expected


def test_corpus_drafter_follows_the_table_while_the_path_is_likely():
    # after 1 2 comes 3 (3 of 3), after 2 3 comes 4 (3 of 4), after 3 4 comes 5 (2 of 3)...
    docs = [[1, 2, 3, 4, 5, 6]] * 2 + [[1, 2, 3, 4, 9]] + [[7, 2, 3, 8]]
    table = ngrams.count(docs, min_count=2, min_share=0.3)
    drafter = CorpusDrafter(table)
    got = drafter.propose([0, 1, 2], budget=10, depth=10)
    assert [d.path for d in got] == [(3,), (3, 4), (3, 4, 5), (3, 4, 5, 6)]
    assert [d.source.split(":")[0] for d in got] == ["corpus"] * 4
    assert got[1].guess == pytest.approx(0.75, abs=0.01)  # the share: 3 of the 4 after `2 3`
    assert len(drafter.propose([0, 1, 2], budget=2, depth=10)) == 2
    assert len(drafter.propose([0, 1, 2], budget=10, depth=1)) == 1
    assert [d.path for d in CorpusDrafter(table, floor=0.6).propose([1, 2], 10, 10)] == [(3,), (3, 4)]
    assert drafter.propose([42], 10, 10) == []  # a context never seen
    assert CorpusDrafter(None).propose([1, 2], 10, 10) == []  # a model without a table
    assert drafter.nbytes() >= table.nbytes() > 0 and CorpusDrafter(None).nbytes() == 0
    for k in range(5000):  # the lookups it remembers stay few
        drafter.propose([k, k + 1], 10, 10)
    assert len(drafter.memo) <= 4096


def test_registry_has_every_drafter_fresh():
    a, b = registry(32), registry(32)
    assert set(a) == set(DRAFTERS)
    assert a["recycle"] is not b["recycle"]


def test_heads_drafter_lays_out_each_heads_likeliest_tokens_best_first():
    heads = FutureHeads(4, 2)  # fresh heads: each passes the hidden state through

    def output(h):  # the hidden state is the logits
        return h

    drafter = HeadsDrafter(heads, output, top=2)
    assert drafter.propose([1], 5, 2) == []   # no hidden state yet: the request's first tree
    drafter.settled(torch.tensor([3.0, 2.0, 0.0, -5.0]))
    drafts = drafter.propose([1], 5, 2)
    assert [d.path for d in drafts] == [(0,), (0, 0), (1,), (0, 1), (1, 0)]
    assert drafts[0].source == "heads:1" and drafts[1].source == "heads:2"
    assert drafts[0].guess == pytest.approx(torch.tensor([3.0, 2.0, 0.0, -5.0]).softmax(0)[0])
    assert all(d.path[:-1] in {e.path for e in drafts} | {()} for d in drafts)  # parents first
    assert [d.path for d in drafter.propose([1], 3, 1)] == [(0,), (1,)]      # no deeper than asked
    assert HeadsDrafter().propose([1], 5, 2) == []                           # a model without heads
