"""Fitting the confidence gate: thresholds from held-out completions, observing completions with
the gate off, and refitting from a person's saved outcomes."""

from __future__ import annotations

import json
import random

import pytest

from tokenfill.completion.confidence import FEATURES, MIN_EXIT_TOKENS, Gate, TokenStats
from tokenfill.completion.engine import Engine
from tokenfill.eval import gate as fitting


def observed(rng: random.Random, right: bool) -> fitting.Observed:
    stats = TokenStats()
    for _ in range(rng.randint(2, 12)):
        lp = rng.gauss(-0.3 if right else -2.0, 0.5)
        stats.logprobs.append(min(lp, 0.0))
        stats.entropies.append(rng.uniform(0.1, 2.0))
        stats.margins.append(rng.uniform(0.0, 1.0))
    return fitting.Observed("whole-line", stats, right)


def test_calibration_keeps_half_the_right_ones_and_exits_below_the_threshold():
    rng = random.Random(0)
    seen = [observed(rng, rng.random() < 0.2) for _ in range(500)]
    gate = fitting.calibrate(seen, "synthetic")
    scores = [gate.score(o.features()) for o in seen]
    right = [s for s, o in zip(scores, seen) if o.exact]
    assert sum(s >= gate.threshold for s in right) >= fitting.KEEP_RIGHT * len(right)
    shown = [o.exact for s, o in zip(scores, seen) if s >= gate.threshold]
    assert sum(shown) / len(shown) > 2 * gate.fitted["ungated_precision"]
    assert 0 <= gate.exit_threshold <= gate.threshold
    stopped = sum(fitting.running_minimum(gate, o) < gate.exit_threshold
                  for o in seen if o.exact and len(o.stats) >= MIN_EXIT_TOKENS)
    assert stopped <= (1 - fitting.EXIT_SPARES) * len(right) + 1
    with pytest.raises(ValueError, match="both kinds"):
        fitting.calibrate([observed(rng, False) for _ in range(20)], "none right")


def test_observing_completes_holes_with_the_gate_off(model_dir):
    engine = Engine.load(model_dir, dtype="fp32")
    engine.gate = Gate({}, 10.0, {}, {}, threshold=0.99, exit_threshold=0.99)  # would stop all
    files = [("pkg/a.py", "def add(a, b):\n    return a + b\n\n\nx = add(1, 2)\nprint(x)\n")]
    seen = fitting.observe(engine, files, per_kind=2, progress=False)
    assert seen and all(len(o.stats) > 0 and o.kind in fitting.KINDS for o in seen)


def test_a_refit_from_telemetry_needs_enough_outcomes(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "telemetry.jsonl"
    lines = []
    for _ in range(80):
        accepted = rng.random() < 0.4
        features = {n: rng.gauss(0, 1) for n in FEATURES}
        features["mean_logprob"] = rng.gauss(-0.2 if accepted else -2.0, 0.5)
        lines.append(json.dumps({"accepted": accepted, "features": features}))
    path.write_text("\n".join(lines) + "\n{\"cut short")
    base = Gate({}, 0.0, {}, {}, threshold=0.5, exit_threshold=0.1)
    gate = fitting.from_telemetry(path, base)
    assert gate.weights["mean_logprob"] > 0 and gate.fitted["accepted"] == sum(
        json.loads(x)["accepted"] for x in lines)
    assert gate.exit_threshold == min(0.1, gate.threshold)
    path.write_text("\n".join(lines[:10]))
    with pytest.raises(ValueError, match="at least"):
        fitting.from_telemetry(path, base)
