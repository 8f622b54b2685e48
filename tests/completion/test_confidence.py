"""The confidence gate: token statistics against a plain reference, the fit, the thresholds'
effect in the engine (held back, early exit, a cut at the last sure line, invoked never held)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from tokenfill.completion.confidence import FEATURES, MIN_EXIT_TOKENS, Gate, TokenStats, fit
from tokenfill.completion.engine import Completion, Engine
from tokenfill.completion.request import CompletionRequest, RequestError


def reference(logits: list[float], token: int) -> tuple[float, float, float]:
    """Log-probability, entropy and top-two margin, one float at a time."""
    top = max(logits)
    total = sum(math.exp(x - top) for x in logits)
    probs = [math.exp(x - top) / total for x in logits]
    first, second = sorted(probs, reverse=True)[:2]
    return (math.log(probs[token]), -sum(p * math.log(p) for p in probs if p > 0),
            first - second)


def test_token_statistics_agree_with_the_plain_reference():
    rng = random.Random(0)
    stats = TokenStats()
    rows = [[rng.gauss(0, 3) for _ in range(50)] for _ in range(20)]
    for k, row in enumerate(rows):
        stats.observe(torch.tensor(row), k % 50)
    for k, row in enumerate(rows):
        lp, ent, margin = reference(row, k % 50)
        assert stats.logprobs[k] == pytest.approx(lp, abs=1e-4)
        assert stats.entropies[k] == pytest.approx(ent, abs=1e-4)
        assert stats.margins[k] == pytest.approx(margin, abs=1e-5)
    stats.shape = {"block": 1.0}
    f = stats.features()
    assert set(f) == set(FEATURES) and f["block"] == 1.0 and f["after_dot"] == 0.0
    assert f["min_logprob"] == min(stats.logprobs) and f["log_tokens"] == math.log1p(20)
    assert stats.features(upto=3)["mean_logprob"] == pytest.approx(
        sum(stats.logprobs[:3]) / 3)


def test_the_fit_learns_which_completions_are_kept():
    rng = random.Random(1)
    rows, labels = [], []
    for _ in range(400):
        right = rng.random() < 0.3
        lp = rng.gauss(-0.3 if right else -1.5, 0.4)
        rows.append({name: rng.gauss(0, 1) for name in FEATURES} | {"mean_logprob": lp})
        labels.append(right)
    weights, bias, mean, scale = fit(rows, labels)
    gate = Gate(weights, bias, mean, scale)
    assert weights["mean_logprob"] > 1.0 and all(
        abs(w) < 0.5 for name, w in weights.items() if name != "mean_logprob")
    scores = [gate.score(r) for r in rows]
    right = [s for s, ok in zip(scores, labels) if ok]
    wrong = [s for s, ok in zip(scores, labels) if not ok]
    assert sum(right) / len(right) > 0.6 > 0.2 > sum(wrong) / len(wrong)


def test_a_gate_survives_a_round_trip(tmp_path):
    gate = Gate({"mean_logprob": 1.5}, -0.2, {n: 0.0 for n in FEATURES},
                {n: 1.0 for n in FEATURES}, threshold=0.4, exit_threshold=0.1,
                fitted={"on": "test"})
    gate.save(tmp_path)
    assert Gate.load(tmp_path) == gate and Gate.load(tmp_path / "none") is None


def test_the_sure_part_ends_at_the_line_before_a_collapse():
    stats = TokenStats()
    for lp, newline in [(-0.1, False), (-0.2, True), (-0.1, False), (-0.3, True), (-6.0, False)]:
        stats.logprobs.append(lp)
        if newline:
            stats.newline()
    assert stats.sure_lines_end() == 4          # two whole lines, then the collapse
    stats.logprobs[0] = -9.0
    assert stats.sure_lines_end() == 0          # the first line collapses: nothing to keep


def constant_gate(score: float, threshold: float, exit_threshold: float = 0.0) -> Gate:
    """A gate that gives every completion `score`."""
    return Gate({}, math.log(score / (1 - score)), {}, {}, threshold, exit_threshold)


@pytest.fixture
def engine(model_dir):
    return Engine.load(model_dir, dtype="fp32")


def test_min_confidence_is_checked_where_the_request_is_built():
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(RequestError, match="min_confidence"):
            CompletionRequest(prefix="x", min_confidence=bad)


def test_automatic_completions_under_the_threshold_are_held_back_invoked_ones_never(engine):
    request = CompletionRequest(prefix="def add(a, b):\n    return ", suffix="\n", max_tokens=8)
    engine.gate = None
    plain = engine.complete(request)
    assert plain.confidence is None and plain.stats is not None and len(plain.stats) > 0
    engine.gate = constant_gate(0.3, threshold=0.5)
    held = engine.complete(request)
    assert held.text == "" and held.skipped == "low confidence"
    assert held.confidence == pytest.approx(0.3)
    asked = engine.complete(CompletionRequest(prefix=request.prefix, suffix="\n", max_tokens=8,
                                              invoked=True))
    assert asked.text == plain.text and asked.confidence == pytest.approx(0.3)
    shown = engine.complete(CompletionRequest(prefix=request.prefix, suffix="\n", max_tokens=8,
                                              min_confidence=0.2))
    assert shown.text == plain.text and not shown.skipped


def test_the_running_score_stops_decoding_early(engine):
    request = CompletionRequest(prefix="for i in range(10):\n", suffix="", max_tokens=40,
                                syntax=False)
    engine.gate = None
    full = engine.complete(request)
    engine.gate = constant_gate(0.3, threshold=0.5, exit_threshold=0.4)
    stopped = engine.complete(request)
    assert stopped.skipped == "low confidence" and full.tokens > MIN_EXIT_TOKENS
    assert len(stopped.stats) == MIN_EXIT_TOKENS < len(full.stats)


def test_a_collapse_on_a_later_line_cuts_the_completion_there(engine):
    stats = TokenStats()
    for lp, newline in [(-0.05, False), (-0.05, True), (-0.05, False), (-7.0, False)]:
        stats.logprobs.append(lp)
        stats.entropies.append(0.1)
        stats.margins.append(0.9)
        if newline:
            stats.newline()
    out = SimpleNamespace(stats=stats, rule=SimpleNamespace(mode="block"), reason=None)
    made = Completion("x = 1\ny = f(q", 4, "stop", 10, 10, 1.0, 1.0, 2.0)
    engine.gate = Gate({"min_logprob": 1.0}, 0.0, {n: 0.0 for n in FEATURES},
                       {n: 1.0 for n in FEATURES}, threshold=0.3)
    cut = engine.gated(made, out, threshold=0.3)
    assert cut.text == "x = 1" and cut.cut and cut.confidence >= 0.3
    stats.logprobs[0] = -7.0                   # unsure from the first line: dropped whole
    dropped = engine.gated(made, out, threshold=0.3)
    assert dropped.text == "" and dropped.skipped == "low confidence"
