"""Speculative decoding is lossless: greedy output identical to plain decoding, sampling
distributed as plain sampling, the cache after rejected branches as plain decoding leaves it."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from tests.conftest import SNIPPETS
from tokenfill.runtime.generate import Sampling, generate, probabilities
from tokenfill.runtime.heads import FutureHeads
from tokenfill.runtime.model import reference_logits
from tokenfill.speculative.decoding import Speculator, residual_accept
from tokenfill.speculative.draft_tree import PassCost
from tokenfill.train import ngrams


def prompts(tokenizer, n: int) -> list[list[int]]:
    """Cuts of the snippets: code the tiny tokenizer knows, repetitive enough to draft from."""
    text = "".join(SNIPPETS)
    g = torch.Generator().manual_seed(1)
    cuts = torch.randint(20, len(text), (n,), generator=g).tolist()
    return [tokenizer.encode(text[max(0, c - 300):c]) for c in cuts]


class FlatCost(PassCost):
    """Passes that cost the same whatever their size: trees keep every node drafted."""

    def __call__(self, T: int) -> float:
        return 1.0


class BanEvery7th:
    """A constraint: ids divisible by 7 are never allowed (tests that constraints still apply)."""

    def __init__(self, vocab: int):
        self.mask = torch.arange(vocab) % 7 != 0
        self.seen: list[int] = []

    def allowed(self):
        return self.mask

    def advance(self, token: int) -> None:
        self.seen.append(token)


def test_greedy_output_is_plain_greedy_output(tiny_model, tokenizer):
    spec = Speculator(tokenizer.vocab_size)
    newline = {i for i, b in enumerate(tokenizer.token_bytes) if b"\n" in b}
    accepted = 0
    for k, prompt in enumerate(prompts(tokenizer, 24)):
        limit = [1, 2, 7, 40][k % 4]
        stop = (lambda t: t in newline) if k % 3 == 0 else None
        plain_ban, spec_ban = BanEvery7th(tokenizer.vocab_size), BanEvery7th(tokenizer.vocab_size)
        plain = generate(tiny_model, prompt, limit, end_ids=frozenset({0}), should_stop=stop,
                         constraints=[plain_ban] if k % 2 else [])
        fast = spec.generate(tiny_model, prompt, limit, end_ids=frozenset({0}), should_stop=stop,
                             constraints=[spec_ban] if k % 2 else [])
        assert fast.tokens == plain.tokens, k
        assert fast.finish_reason == plain.finish_reason
        assert spec_ban.seen == plain_ban.seen  # the constraint saw the same tokens in order
        assert fast.forwards <= plain.forwards
        accepted += fast.accepted
    assert accepted > 0  # drafts were accepted: the tree path ran, not only its fallback


def test_greedy_output_with_a_corpus_table_is_plain_greedy_output(tiny_model, tokenizer):
    """A table counted from the model's own outputs on other prompts drafts what it will write:
    drafts from it are accepted, and the output stays plain greedy decoding's."""
    outputs = [generate(tiny_model, p, 30).tokens for p in prompts(tokenizer, 40)[20:]]
    table = ngrams.count(outputs, min_count=2, min_share=0.3)
    spec = Speculator(tokenizer.vocab_size, ngrams=table)
    by_corpus = 0
    for prompt in prompts(tokenizer, 20):
        plain = generate(tiny_model, prompt, 30, end_ids=frozenset({0}))
        fast = spec.generate(tiny_model, prompt, 30, end_ids=frozenset({0}))
        assert fast.tokens == plain.tokens
        by_corpus += fast.by_drafter.get("corpus", [0, 0])[1]
    assert by_corpus > 0


def test_greedy_output_with_multi_token_heads_is_plain_greedy_output(tiny_model, tokenizer):
    heads = FutureHeads(tiny_model.config.hidden_size, 3)
    with torch.no_grad():
        for p in heads.proj:
            p.weight.normal_(std=0.05)
    spec = Speculator(tokenizer.vocab_size, heads=heads, output=tiny_model.output)
    spec.cost = FlatCost()  # random heads are unsure: keep their drafts in the tree anyway
    drafted = 0
    for prompt in prompts(tokenizer, 12):
        plain = generate(tiny_model, prompt, 30, end_ids=frozenset({0}))
        fast = spec.generate(tiny_model, prompt, 30, end_ids=frozenset({0}))
        assert fast.tokens == plain.tokens
        drafted += fast.by_drafter.get("heads", [0, 0])[0]
    assert drafted > 0  # the heads drafted after every pass but a request's first


def test_cache_after_rejected_branches_equals_plain_decoding(tiny_model, tokenizer):
    spec, rejected = Speculator(tokenizer.vocab_size), 0
    for prompt in prompts(tokenizer, 4):
        cache = tiny_model.new_cache(1, 512)
        out = spec.generate(tiny_model, prompt, 48, cache=cache, end_ids=frozenset({0, 5}))
        rejected += out.drafted - out.accepted
        valid = out.cache_valid
        # at least what plain decoding leaves (all but the last token); the last too when it
        # was an accepted draft, run already
        assert len(prompt) + len(out.tokens) - 1 <= valid <= len(prompt) + len(out.tokens)
        plain = tiny_model.new_cache(1, 512)
        with torch.inference_mode():
            tiny_model(torch.tensor([(prompt + out.tokens)[:valid]]), 0, plain)
        torch.testing.assert_close(cache.k[:, :, :, :valid], plain.k[:, :, :, :valid], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.v[:, :, :, :valid], plain.v[:, :, :, :valid], atol=1e-5, rtol=0)
    assert rejected > 0  # branches were rejected along the way


def chi_square(counts: Counter, expected: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic over the cells, pooling those expected fewer than 5 times."""
    stat, df, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for cell, p in expected.items():
        e = p * n
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + counts[cell], pooled_exp + e
            continue
        stat, df = stat + (counts[cell] - e) ** 2 / e, df + 1
    if pooled_exp > 0:
        stat, df = stat + (pooled_obs - pooled_exp) ** 2 / pooled_exp, df + 1
    return stat, df


def chi_square_limit(df: int) -> float:
    """The statistic's 0.1% upper point (Wilson-Hilferty): a failure is not bad luck."""
    z = 3.090
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.8),
                                      Sampling(temperature=1.3, top_k=5, min_p=0.05)])
def test_the_residual_rule_draws_as_plain_sampling(sampling):
    logits = torch.randn(10, generator=torch.Generator().manual_seed(3)) * 1.5
    p = probabilities(logits, sampling)
    order = p.argsort(descending=True).tolist()
    drafted = [order[0], order[2], order[4]]  # drafts of all qualities, the best first
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = Counter(residual_accept(logits, drafted, sampling, g) for _ in range(n))
    assert all(p[t] > 0 for t in counts)  # never a token sampling could not draw
    stat, df = chi_square(counts, {t: float(p[t]) for t in range(10) if p[t] > 0}, n)
    assert stat < chi_square_limit(df), (stat, df)


def test_speculative_sampling_matches_plain_sampling_over_three_tokens(tiny_model, tokenizer):
    """The joint distribution of the first three tokens, from the model's exact probabilities,
    against many speculative samples whose trees hold drafts at every depth."""
    sampling = Sampling(temperature=1.5, top_k=3)
    prompt = tokenizer.encode("for i in range(10):\n    print(i)\nfor i in range(10):\n   ")
    spec = Speculator(tokenizer.vocab_size)
    spec.cost = FlatCost()  # every draft is worth its place: trees at every step
    expected: dict[tuple[int, ...], float] = {}

    def dist(seq):
        logits = reference_logits(tiny_model, torch.tensor([prompt + list(seq)]))[0, -1]
        return probabilities(logits, sampling)

    p1 = dist(())
    for a in p1.nonzero().flatten().tolist():
        p2 = dist((a,))
        for b in p2.nonzero().flatten().tolist():
            p3 = dist((a, b))
            for c in p3.nonzero().flatten().tolist():
                expected[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    g = torch.Generator().manual_seed(0)
    n, counts, drafted = 2000, Counter(), 0
    for _ in range(n):
        out = spec.generate(tiny_model, prompt, 3, sampling=sampling, generator=g)
        counts[tuple(out.tokens)] += 1
        drafted += out.drafted
    assert drafted > n  # trees with drafts were verified, most of the time
    assert set(counts) <= set(expected)
    stat, df = chi_square(counts, expected, n)
    assert stat < chi_square_limit(df), (stat, df)


def test_seeded_sampling_gives_plain_samplings_output(tiny_model, tokenizer):
    """The walk draws each token with plain sampling's own draw: a seed gives the same output
    with or without speculation, whatever the drafters hold."""
    spec = Speculator(tokenizer.vocab_size)
    spec.cost = FlatCost()  # trees at every step, whatever this machine's timings
    drafted = 0
    for k, prompt in enumerate(prompts(tokenizer, 8)):
        sampling = Sampling(temperature=0.9, top_p=0.95, seed=k)
        plain = generate(tiny_model, prompt, 30, sampling=sampling)
        for _ in range(2):  # the second time, the drafters know more
            fast = spec.generate(tiny_model, prompt, 30, sampling=sampling)
            assert fast.tokens == plain.tokens
            drafted += fast.accepted
    assert drafted > 0


def test_a_cache_too_small_for_a_tree_still_decodes(tiny_model, tokenizer):
    prompt = prompts(tokenizer, 1)[0]
    cache = tiny_model.new_cache(1, len(prompt) + 10)
    plain = generate(tiny_model, prompt, 10)
    fast = Speculator(tokenizer.vocab_size).generate(tiny_model, prompt, 10, cache=cache)
    assert fast.tokens == plain.tokens


def test_unknown_drafter_is_named():
    with pytest.raises(ValueError, match="unknown drafter"):
        Speculator(100, drafters=["prompt", "oracle"])


def test_drafter_memory_is_reported(tiny_model, tokenizer):
    spec = Speculator(tokenizer.vocab_size)
    for prompt in itertools.islice(prompts(tokenizer, 3), 3):
        spec.generate(tiny_model, prompt, 20)
    assert 0 < spec.nbytes() < 50 * 2**20


def test_drafts_never_reach_past_the_token_limit(tiny_model, tokenizer):
    spec = Speculator(tokenizer.vocab_size)
    repeated = tokenizer.encode("x = 1\n" * 40)  # prompt lookup drafts long runs here
    depths = []
    build = spec.tree

    def spy(context, budget, depth=None):
        tree = build(context, budget, depth)
        depths.append((depth, max(len(tree.path(n)) - 1 for n in range(len(tree)))))  # root: 0
        return tree

    spec.tree = spy
    for limit in (1, 2, 5):
        depths.clear()
        out = spec.generate(tiny_model, repeated, limit)
        assert out.tokens == generate(tiny_model, repeated, limit).tokens
        assert all(deepest <= max(depth, 0) for depth, deepest in depths)
