"""The LSP overhead benchmark runs end to end (tiny model, synthetic files)."""

from __future__ import annotations

import pytest

from benchmarks import lsp
from tests.eval.test_holes import FILES
from tokenfill.eval import realcode

pytestmark = pytest.mark.e2e


def test_overhead_report(monkeypatch, model_dir):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    report = lsp.run(model_dir, n=3, max_tokens=2, typing_files=2, typing_chars=6, cps=30)
    assert "| overhead (round trip less engine time, per request) |" in report
    assert "target < 5 ms" in report
    assert "12 requests" in report  # 2 regions x 6 keystrokes


def test_position_counts_utf16_units():
    assert lsp.position_of("a\nx = '𝄞'") == lsp.types.Position(1, 8)  # 𝄞: 2 units
