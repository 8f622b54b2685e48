"""Workspaces indexed in the background: ready without blocking, edits followed after a pause,
nothing outside the folder read, the innermost workspace owns a file, requests augmented."""

from __future__ import annotations

import time

import pytest

from tokenfill.completion.request import CompletionRequest
from tokenfill.context import workspace as workspace_module
from tokenfill.context.index import WorkspaceError
from tokenfill.context.workspace import Workspace, Workspaces

HELPERS = '''def compute_total(prices, tax_rate):
    """Sum of prices with tax."""
    return sum(prices) * (1 + tax_rate)
'''


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "shop"
    (root / "pkg").mkdir(parents=True)
    (root / "helpers.py").write_text(HELPERS)
    (root / "pkg" / "orders.py").write_text("from helpers import compute_total\n")
    return root


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(workspace_module, "SETTLE_S", 0.05)


def until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_the_first_pass_runs_in_the_background_and_retrieval_follows(root, tmp_path):
    ws = Workspace(root, cache=tmp_path / "cache", budget=400)
    try:
        assert not ws.ready.is_set()          # nothing indexed before start(): no blocking work
        ws.start()
        assert ws.wait(10) and ws.progress[1] == 2 and ws.stats.indexed == 2
        got = ws.retrieve("from helpers import compute_total\n\ntotal = compute_", "\n",
                          str(root / "pkg" / "orders.py"))
        assert any(t.startswith("def compute_total(prices, tax_rate):") for _, t in got.pieces)
        assert all(p != "pkg/orders.py" for p, _ in got.pieces)
    finally:
        ws.close()


def test_edits_are_indexed_after_a_pause_and_outside_files_never(root, tmp_path):
    ws = Workspace(root, cache=tmp_path / "cache").start()
    try:
        ws.wait(10)
        assert ws.changed(root / "helpers.py", HELPERS + "\ndef refund_order(order):\n    pass\n")
        assert until(lambda: ws.index.definitions(["refund_order"]))
        (root / "pkg" / "new.py").write_text("def ship_parcel(box):\n    pass\n")
        assert ws.changed(root / "pkg" / "new.py")                     # created: read from disk
        assert until(lambda: ws.index.definitions(["ship_parcel"]))
        (root / "pkg" / "new.py").unlink()
        assert ws.changed(root / "pkg" / "new.py")                     # deleted: dropped
        assert until(lambda: not ws.index.definitions(["ship_parcel"]))
        outside = tmp_path / "elsewhere.py"
        outside.write_text("def secret():\n    pass\n")
        assert not ws.changed(outside) and not ws.changed(outside, "def secret(): pass\n")
        assert not ws.changed(root / "notes.txt", "text")
        time.sleep(0.2)
        assert not ws.index.definitions(["secret"])
    finally:
        ws.close()


def test_a_bad_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        Workspace(tmp_path / "missing", cache=tmp_path / "cache")
    (tmp_path / "file.py").write_text("")
    with pytest.raises(WorkspaceError, match="not a folder"):
        Workspaces(cache=tmp_path / "cache").add(tmp_path / "file.py")


def test_the_innermost_workspace_owns_a_file_and_augments_its_requests(root, tmp_path):
    spaces = Workspaces(cache=tmp_path / "cache", budget=400)
    try:
        outer, inner = spaces.add(root), spaces.add(root / "pkg")
        assert spaces.add(root) is outer and len(spaces) == 2
        assert spaces.owner(str(root / "pkg" / "orders.py")) is inner
        assert spaces.owner(str(root / "helpers.py")) is outer
        assert spaces.owner(str(tmp_path / "x.py")) is None
        assert spaces.owner("helpers.py") is None            # relative: ambiguous with two
        outer.wait(10)
        request = CompletionRequest(prefix="total = compute_total(", suffix=")\n",
                                    path=str(root / "main.py"), extra=(("given.py", "G = 1"),))
        augmented, got = spaces.augment(request)
        assert got.chunks >= 1 and augmented.project == str(root)
        assert augmented.extra[-1] == ("given.py", "G = 1")        # the client's own stay last
        assert augmented.extra[:-1] == got.pieces
        alone, nothing = spaces.augment(CompletionRequest(prefix="x", path=str(tmp_path / "y.py")))
        assert nothing.chunks == 0 and alone.extra == () and alone.project is None
        spaces.remove(root / "pkg")
        assert len(spaces) == 1 and spaces.owner("helpers.py") is outer
    finally:
        spaces.close()


def test_with_a_tokenizer_the_drafters_table_is_counted(root, tmp_path, tokenizer):
    tables = {}
    (root / "more.py").write_text(HELPERS * 3)
    ws = Workspace(root, cache=tmp_path / "cache", tokenizer=tokenizer,
                   on_table=tables.__setitem__).start()
    try:
        assert until(lambda: str(ws.root) in tables)
        assert len(tables[str(ws.root)]) > 0
    finally:
        ws.close()
