"""The LSP overhead benchmark runs end to end (tiny model, synthetic files)."""

from __future__ import annotations

from tokenfill import lsp_bench, realcode

from .test_holes import FILES


def test_overhead_report(monkeypatch, model_dir):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    report = lsp_bench.run(model_dir, n=3, max_tokens=2, typing_files=2, typing_chars=6, cps=30)
    assert "| overhead (round trip less engine time, per request) |" in report
    assert "target < 5 ms" in report
    assert "12 requests" in report  # 2 regions x 6 keystrokes


def test_position_counts_utf16_units():
    assert lsp_bench.position_of("a\nx = '𝄞'") == lsp_bench.types.Position(1, 8)  # 𝄞: 2 units
