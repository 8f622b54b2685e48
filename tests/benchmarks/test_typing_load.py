"""The typing replay end to end against real servers (tiny model, a few keystrokes, short load)."""

from __future__ import annotations

import pytest

from benchmarks import typing_load
from tokenfill.eval import realcode
from tokenfill.train.corpus import HeldOut, Manifest, Package

pytestmark = pytest.mark.e2e

FILES = [(f"pkg/m{i}.py", "import os\n\n\ndef helper_%d(x):\n    return x + %d\n\n\n"
          "def other(y):\n    return helper_%d(y) * 2\n" % (i, i, i)) for i in range(3)]


def test_regions_start_at_a_def_line(monkeypatch):
    monkeypatch.setattr(realcode, "files", lambda: FILES)
    regions = typing_load.regions(2, 12, seed=0)
    assert len(regions) == 2
    for r in regions:
        assert r.typed.startswith("def ") and len(r.typed) == 12
        assert (r.before + r.typed + r.after) in [text for _, text in FILES]


def test_replay_reports_reuse_on_and_off(monkeypatch, model_dir):
    monkeypatch.setattr(realcode, "files", lambda: FILES)
    report = typing_load.run(model_dir, files=2, chars=8, cps=40, n_predict=2, load_clients=2,
                              load_seconds=1.0)
    rows = [line for line in report.splitlines() if line.startswith("| on ") or
            line.startswith("| off ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) == 16 and int(cells[-1]) == 0    # 2 x 8 keystrokes, no errors
    loads = [line for line in report.splitlines() if line.startswith(("| fp32 ", "| bf16 "))]
    assert len(loads) == 2  # the load phase once in each dtype
    for row in loads:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) > 0 and cells[3:5] == ["0", "0"]  # requests; no errors, no 5xx


def test_heldout_packages_are_not_training_packages():
    heldout = HeldOut.load()
    heldout.check_disjoint(Manifest.load())
    try:
        HeldOut([Package("Django", "1")], []).check_disjoint(Manifest.load())
    except ValueError as e:
        assert "django" in str(e)
    else:
        raise AssertionError("overlap not detected")


def test_the_typist_pauses_at_word_ends():
    typed = "def f(x):"
    ends = [i for i in range(1, len(typed) + 1) if typing_load.word_end(typed, i)]
    assert [typed[:i] for i in ends] == ["def ", "def f(", "def f(x)"]
