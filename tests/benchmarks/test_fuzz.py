"""The fuzz bench end to end on the tiny model, a few bodies (its figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks import fuzz

pytestmark = pytest.mark.e2e


def test_fuzz_report_counts_every_body(model_dir):
    table = fuzz.run(model_dir, bodies=40, lsp_messages=30, progress=False)
    row = next(line for line in table.splitlines() if line.startswith("| HTTP routes"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "40" and sum(map(int, cells[2:6])) == 40
    assert cells[4] == "0" and cells[6] == "yes"  # no 5xx; the server still up
    assert "| language server | 30 messages | 1 of 1 checks answered |" in table
