"""Hole cutting: each kind puts the cursor where its name says, and prefix+middle+suffix is the file."""

from __future__ import annotations

import pytest

from tokenfill import holes

SOURCE = '''import os


class Store:
    def __init__(self, root):
        self.root = root
        self.count = 0

    def path(self, name):
        if name.startswith("/"):
            raise ValueError(name)
        return os.path.join(self.root, name)
'''
FILES = [("a.py", SOURCE), ("b.py", SOURCE.replace("Store", "Shelf"))]


@pytest.mark.parametrize("kind", holes.KINDS)
def test_every_kind_reassembles_the_file(kind):
    cut = holes.cut(FILES, kind, 6, seed=0)
    assert len(cut) == 6
    for hole in cut:
        assert hole.prefix + hole.middle + hole.suffix in (SOURCE, FILES[1][1])
        assert hole.middle and hole.kind == kind


def test_cursor_positions_by_kind():
    for hole in holes.cut(FILES, "whole-line", 5, seed=1):
        assert hole.prefix.endswith("\n") and hole.middle.endswith("\n")
    for hole in holes.cut(FILES, "mid-token", 5, seed=1):
        assert hole.prefix[-1] not in " \n" and hole.middle[0] not in " \n("
        assert "\n" not in hole.middle
    for hole in holes.cut(FILES, "dot-identifier", 5, seed=1):
        assert hole.prefix.endswith(".") and hole.middle[0].isalpha()
    for hole in holes.cut(FILES, "block-body", 5, seed=1):
        assert hole.prefix.rstrip("\n").endswith(":")
        assert hole.middle.startswith("    ") and hole.middle.endswith("\n")


def test_cutting_is_reproducible():
    a = holes.cut(FILES, "mid-line", 4, seed=3)
    assert a == holes.cut(FILES, "mid-line", 4, seed=3)
    assert a != holes.cut(FILES, "mid-line", 4, seed=4)
