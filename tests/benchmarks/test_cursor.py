"""The cursor benchmark runs end to end (tiny model, synthetic files) and reports every mode."""

from __future__ import annotations

import pytest

from benchmarks import cursor
from tests.eval.test_holes import FILES
from tokenfill.eval import realcode

pytestmark = pytest.mark.slow


def test_report_has_every_mode_and_side(monkeypatch, model_dir, tmp_path):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    out = tmp_path / "cursor.json"
    report = cursor.run(model_dir, per_kind=2, suffix_holes=2, max_tokens=4, out=out,
                              progress=False)
    for mode in ("exact", "heal", "none"):
        assert f"| `{mode}` |" in report
    assert "identifier inside / control" in report and "suffix starts mid-token" in report
    assert "The token completed" in report
    assert "exact/identifier/inside" in out.read_text()


def test_word_done_needs_the_whole_token_and_its_end():
    assert cursor.word_done("identifier", "result", "result = 1")
    assert not cursor.word_done("identifier", "result", "results = 1")
    assert not cursor.word_done("identifier", "result", "resu")
    assert cursor.word_done("operator", "==", "== y") and not cursor.word_done("operator", "==", "=== y")
    assert cursor.word_done("indentation", "    ", "    x") and not cursor.word_done("indentation", "    ", "        x")
