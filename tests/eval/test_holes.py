"""Hole cutting: each kind puts the cursor where its name says, and prefix+middle+suffix is the file."""

from __future__ import annotations

import pytest

from tokenfill.eval import holes

SOURCE = '''import os


class Store:
    def __init__(self, root):
        self.root = root
        self.count = 0
        self.limit = 4096
        self.half = self.limit // 2

    def path(self, name):
        if name.startswith("/"):
            raise ValueError(name)
        return os.path.join(self.root, name)
'''
FILES = [("a.py", SOURCE), ("b.py", SOURCE.replace("Store", "Shelf"))]


@pytest.mark.parametrize("kind", [*holes.KINDS, "multi-line"])
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
    for hole in holes.cut(FILES, "multi-line", 5, seed=1):
        lines = hole.middle.splitlines()
        assert hole.prefix.endswith("\n") and 2 <= len(lines) <= 5 and all(x.strip() for x in lines)


def test_cutting_is_reproducible():
    a = holes.cut(FILES, "mid-line", 4, seed=3)
    assert a == holes.cut(FILES, "mid-line", 4, seed=3)
    assert a != holes.cut(FILES, "mid-line", 4, seed=4)


@pytest.mark.parametrize("kind", holes.TOKEN_KINDS)
def test_cursor_pairs_put_the_cursor_inside_a_token_and_the_control_at_its_start(kind):
    pairs = holes.cursor_pairs(FILES, kind, 6, seed=0)
    assert len(pairs) == 6
    for pair in pairs:
        inside, control = pair.inside, pair.control
        assert inside.prefix + inside.middle + inside.suffix in (SOURCE, FILES[1][1])
        assert control.prefix + control.middle == inside.prefix + inside.middle
        assert control.middle.endswith(inside.middle) and len(control.middle) > len(inside.middle)
        moved = inside.prefix[len(control.prefix):]  # the part of the token before the cursor
        rest = inside.middle[0]
        if kind == "indentation":
            assert moved.strip(" ") == "" and rest == " "
        elif kind == "identifier":
            assert (moved + rest).isidentifier()
        elif kind == "number":
            assert (moved + rest).isdigit()
        else:
            assert not (moved + rest).strip("=!<>+-*/%&|^.:").strip() and " " not in moved + rest


def test_suffix_pairs_end_inside_a_token_or_at_its_end():
    for pair in holes.suffix_pairs(FILES, 8, seed=0):
        assert pair.inside.prefix == pair.control.prefix
        assert pair.control.middle.startswith(pair.inside.middle)
        assert pair.inside.middle and pair.inside.suffix[0] not in " \n"
