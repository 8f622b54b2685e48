"""Retrieval for a cursor: definitions of the names in use first, then similar chunks, within the
budget, never the file being completed, near duplicates passed over, recent files first."""

from __future__ import annotations

import pytest

from tokenfill.context.drafts import workspace_table
from tokenfill.context.index import WorkspaceIndex
from tokenfill.context.retrieve import Retriever
from tokenfill.speculative.decoding import Speculator

SHAPES = '''class Circle:
    """A circle of a given radius."""

    def __init__(self, radius):
        self.radius = radius


def area_of_circle(circle, precision=2):
    """The area, rounded."""
    return round(3.14159 * circle.radius ** 2, precision)
'''

REPORT = '''from shapes import area_of_circle


def report_areas(circles):
    for circle in circles:
        print(area_of_circle(circle))
'''


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def index(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "shapes.py").write_text(SHAPES)
    (root / "report.py").write_text(REPORT)
    (root / "copy_of_report.py").write_text(REPORT)          # vendored copies are common
    index = WorkspaceIndex(root, cache=tmp_path / "cache")
    index.update()
    return index


def test_definitions_of_names_in_use_come_with_their_signature(index):
    prefix = "from shapes import Circle, area_of_circle\n\nc = Circle(2)\nx = area_of_"
    got = Retriever(index, words, budget=400).retrieve(prefix, "\n", str(index.root / "new.py"))
    texts = dict(got.pieces)
    assert got.definitions == 2 and "shapes.py" in texts
    signature = [t for p, t in got.pieces if t.startswith("def area_of_circle")]
    assert signature == ['def area_of_circle(circle, precision=2):\n    """The area, rounded."""']
    assert any(t.startswith("class Circle") and "self.radius = radius" in t
               for _, t in got.pieces)                      # a small class goes in whole
    assert got.pieces[-1][1].startswith(("def area_of_circle", "class Circle"))  # nearest cursor


def test_the_file_being_completed_is_never_retrieved(index):
    prefix = REPORT[:REPORT.index("print")]
    got = Retriever(index, words, budget=400).retrieve(prefix, "", str(index.root / "report.py"))
    assert got.pieces and all(path != "report.py" for path, _ in got.pieces)


def test_budget_and_near_duplicates(index):
    prefix = "def report_areas(circles):\n    for circle in circles:\n        print("
    roomy = Retriever(index, words, budget=1000).retrieve(prefix, ")\n")
    texts = [t for _, t in roomy.pieces]
    assert len(texts) == len(set(texts))                      # a copy's chunk only once
    assert sum("for circle in circles" in t for t in texts) == 1
    tight = Retriever(index, words, budget=12).retrieve(prefix, ")\n")
    assert tight.tokens <= 12 and len(tight.pieces) < len(roomy.pieces)
    assert Retriever(index, words, budget=0).retrieve(prefix, "").pieces == ()


def test_recent_files_rank_first_among_equals(index):
    retriever = Retriever(index, words, budget=1000)
    prefix = "for circle in circles:\n    print(area_of_circle(circle))\n"
    retriever.touch(str(index.root / "copy_of_report.py"))
    first = [p for p, _ in retriever.retrieve(prefix, "").pieces]
    assert "copy_of_report.py" in first and "report.py" not in first


def test_a_chunk_the_prompt_already_holds_is_passed_over(index):
    # a request that does not name its file: the file's own chunks must not come back as context
    prefix = REPORT + "\n\nreport_areas(circles)\nfor circle in circles:\n    print("
    got = Retriever(index, words, budget=1000).retrieve(prefix, ")\n")
    assert all(text.strip() not in prefix for _, text in got.pieces)


def test_the_same_pieces_are_kept_while_typing_until_the_index_changes(index):
    retriever = Retriever(index, words, budget=1000)
    prefix = "from shapes import area_of_circle\n\nx = area_of_circle(c"
    first = retriever.retrieve(prefix, ")\n", "new.py")
    typed = retriever.retrieve(prefix + "i", ")\n", "new.py")     # one more character
    assert typed.reused and typed.pieces == first.pieces
    index.update_file("shapes.py", SHAPES + "\n\ndef area_of_square(side):\n    return side ** 2\n")
    after = retriever.retrieve(prefix + "ir", ")\n", "new.py")
    assert not after.reused
    other = retriever.retrieve("import os\nos.path.join(", ")\n", "new.py")
    assert not other.reused


def test_the_workspace_drafter_drafts_what_the_workspace_holds(index, tokenizer):
    table, info = workspace_table(index, tokenizer)
    assert info["files"] == 3 and info["tokens"] > 0 and len(table) > 0
    spec = Speculator(tokenizer.vocab_size)
    spec.use_workspace(table)
    drafter = next(d for d in spec.drafters if d.name == "workspace")
    context = tokenizer.encode("for circle in circles:\n        print(area_of_")
    drafts = drafter.propose(context, 16, 8)
    assert drafts and all(d.source.startswith("workspace:") for d in drafts)
    spec.use_workspace(None)
    assert drafter.propose(context, 16, 8) == []
