"""The endings benchmark runs end to end (tiny model, synthetic files) with every arm, and puts
the engine's rules back to their defaults afterwards."""

from __future__ import annotations

import pytest

from benchmarks import endings
from tests.eval.test_holes import FILES
from tokenfill.completion.engine import Engine
from tokenfill.eval import realcode

pytestmark = pytest.mark.slow


def test_report_has_every_arm_for_every_kind(monkeypatch, model_dir):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    engines: list[Engine] = []
    load = Engine.load

    def loaded(*args, **kwargs) -> Engine:
        engines.append(load(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(Engine, "load", loaded)
    report = endings.run(model_dir, per_kind=2, humaneval=2, max_tokens=8, progress=False)
    for kind in (*endings.KINDS, *endings.HUMANEVAL):
        for arm in endings.arms_for(kind):
            assert f"| {kind} | {arm} | " in report
    assert "| whole-line | no member prior |" not in report
    assert (engines[0].hold_end, engines[0].lines_between, engines[0].member_prior) == \
        endings.ARMS["defaults"]
