"""Sampling and the decode loop: greedy generation equals a slow argmax loop over full recomputes."""

from __future__ import annotations

import pytest
import torch

from tokenfill.runtime.generate import Sampling, choose, generate, greedy_rows, restrict, sample
from tokenfill.runtime.model import reference_logits


def slow_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(reference_logits(model, torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_generation_equals_slow_reference(tiny_model, seed):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, tiny_model.config.vocab_size, (7 + seed * 5,), generator=g).tolist()
    out = generate(tiny_model, prompt, 12)
    assert out.tokens == slow_greedy(tiny_model, prompt, 12)
    assert out.finish_reason == "length"


def test_end_token_stops_and_is_not_returned(tiny_model):
    prompt = [5, 6, 7]
    first = generate(tiny_model, prompt, 5).tokens
    out = generate(tiny_model, prompt, 5, end_ids=frozenset({first[2]}))
    assert out.tokens == first[:2] and out.finish_reason == "stop"


def test_should_stop_sees_each_token(tiny_model):
    seen = []
    out = generate(tiny_model, [1, 2, 3], 10, should_stop=lambda t: seen.append(t) or len(seen) == 4)
    assert out.tokens == seen and len(seen) == 4 and out.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    s = Sampling(temperature=1.0, seed=7)
    a = generate(tiny_model, [1, 2, 3], 15, sampling=s).tokens
    b = generate(tiny_model, [1, 2, 3], 15, sampling=s).tokens
    assert a == b


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, Sampling(temperature=1.0, top_p=0.7), g) for _ in range(300)}
    assert draws == {0, 1}
    draws = {sample(logits, Sampling(temperature=1.0, top_p=1.0), g) for _ in range(2000)}
    assert draws == {0, 1, 2, 3}
    assert sample(logits, Sampling(), None) == 0


@pytest.mark.parametrize("options,name", [
    ({"temperature": -1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": 1e-300}, "temperature"),
    ({"temperature": 1e308}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": float("nan")}, "top_p"), ({"min_p": float("nan")}, "min_p"),
    ({"seed": 2**63}, "seed"), ({"seed": -1}, "seed"),
])
def test_sampling_options_are_checked(options, name):
    with pytest.raises(ValueError, match=name):
        Sampling(**options)


def test_the_extremes_allowed_still_sample():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    for options in ({"temperature": 1e-3}, {"temperature": 100.0}, {"temperature": 1.0,
                    "top_p": 1e-300}, {"temperature": 1.0, "seed": 2**63 - 1}):
        s = Sampling(**options)
        assert 0 <= sample(logits, s, s.generator()) < 50


def test_top_k_and_min_p_filter():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(1)
    assert {sample(logits, Sampling(temperature=1.0, top_k=2), g) for _ in range(300)} == {0, 1}
    assert {sample(logits, Sampling(temperature=1.0, min_p=0.25), g) for _ in range(300)} == {0, 1, 2}
    with pytest.raises(ValueError, match="top_k"):
        Sampling(top_k=-1)


def test_reused_cache_gives_the_same_tokens(tiny_model):
    prompt = list(range(10, 30))
    cache = tiny_model.new_cache(1, 64)
    first = generate(tiny_model, prompt, 6, cache=cache)
    assert first.cache_valid == len(prompt) + 5 and first.prompt_evaluated == len(prompt)
    longer = prompt + [7, 8]
    again = generate(tiny_model, longer, 6, cache=cache, cached=len(prompt))
    assert again.prompt_evaluated == 2
    assert again.tokens == generate(tiny_model, longer, 6).tokens


def test_ids_past_the_vocab_limit_are_never_sampled(tiny_model):
    unlimited = generate(tiny_model, [1, 2, 3], 30, sampling=Sampling(temperature=5.0, seed=0))
    assert max(unlimited.tokens) >= 100
    limited = generate(tiny_model, [1, 2, 3], 30, sampling=Sampling(temperature=5.0, seed=0),
                       vocab_limit=100)
    assert max(limited.tokens) < 100


class _Mask:
    """A constraint that allows a fixed set of ids and records what it was told."""

    def __init__(self, allowed):
        self.mask, self.seen = allowed, []

    def allowed(self):
        return self.mask

    def advance(self, token):
        self.seen.append(token)


def test_greedy_choice_equals_restricting_first():
    """Greedy takes the argmax when every constraint allows it; the result is always the argmax
    of the logits restricted by each constraint in turn (the sampling path)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        logits = torch.randn(40, generator=g)
        if trial % 7 == 0:
            logits[3] = logits[5] = 9.0  # a tie: the first one wins either way
        masks = [torch.rand(40, generator=g) < p for p in (0.9, 0.5, 0.05)[:trial % 4]]
        if trial % 11 == 0:
            masks.append(torch.zeros(40, dtype=torch.bool))  # allows nothing: set aside
        if trial % 13 == 0:
            masks.append(None)
        expected = logits[:30]
        for mask in masks:
            expected = restrict(expected, mask)
        constraints = [_Mask(m) for m in masks]
        token = choose(logits, Sampling(), None, 30, constraints)
        assert token == int(expected.argmax())
        assert all(c.seen == [token] for c in constraints)
        given = choose(logits, Sampling(), None, 30, [_Mask(m) for m in masks],
                       argmax=greedy_rows(logits[None], 30)[0])  # the caller's argmax
        assert given == token


def test_greedy_rows_pick_what_choose_picks_row_by_row():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 40, generator=g)
    logits[::5, 7] = logits[::5, 2] = 9.0      # ties: the first one wins
    logits[1::5, 35] = 20.0                    # the best past the vocab limit is never chosen
    for limit in (None, 30):
        assert greedy_rows(logits, limit) == [choose(row, Sampling(), None, limit, ())
                                              for row in logits]
