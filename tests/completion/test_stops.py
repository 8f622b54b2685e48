"""The stop rule's mechanics: whole characters, stop strings, n_indent, raw decoding, streaming."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tokenfill.completion.stops import EndGuard, StopRule, valid_utf8_prefix
from tokenfill.completion.syntax import analyze

# The syntax-aware rules are tested case by case in tests/golden/syntax.toml (test_syntax.py);
# the end guard in tests/golden/endings.toml (below).
ENDINGS = tomllib.loads((Path(__file__).parent / "golden" / "endings.toml").read_text())["case"]


def feed_all(stop: StopRule, tokenizer, raw: str) -> bool:
    return any(stop(token) for token in tokenizer.encode(raw))


def test_raw_decoding_ends_only_at_stop_strings_and_n_indent(tokenizer):
    raw = "compute()\nprint(x)\n\ndef g():\n"
    stop = StopRule(tokenizer, "x = ", "\n", syntax=False)
    assert not feed_all(stop, tokenizer, raw) and stop.text() == raw and stop.committed() == raw
    stop = StopRule(tokenizer, "x = ", "\n", syntax=False, stop_strings=("\n\n",))
    assert feed_all(stop, tokenizer, raw) and stop.text() == "compute()\nprint(x)"


def test_single_line_forces_one_line_where_a_block_would_be_written(tokenizer):
    stop = StopRule(tokenizer, "def f():\n    ", "\n", single_line=True)
    assert feed_all(stop, tokenizer, "a = 1\n    b = 2\n") and stop.text() == "a = 1"


def test_multibyte_characters_are_never_split(tokenizer):
    stop = StopRule(tokenizer, "s = '", "'\n")
    data = "é✓日".encode()
    byte_ids = [i for b in data for i, tb in enumerate(tokenizer.token_bytes) if tb == bytes([b])]
    assert len(byte_ids) == len(data)
    texts = []
    for i in byte_ids:
        stop(i)
        texts.append(stop.text())
    assert texts[0] == "" and texts[1] == "é" and texts[-1] == "é✓日"


def test_valid_utf8_prefix():
    assert valid_utf8_prefix("ab✓".encode()[:-1]) == "ab"
    assert valid_utf8_prefix(b"") == ""


@pytest.mark.parametrize("prefix,raw,stops,expected", [
    ("x = ", "foo(1) # done", ("#",), "foo(1) "),
    ("x = ", "foo(bar)", (")", "("), "foo"),
    ("def f():\n    ", "a = 1\n    b = 2", ("b",), "a = 1\n    "),
])
def test_stop_strings(tokenizer, prefix, raw, stops, expected):
    stop = StopRule(tokenizer, prefix, "\n", stop_strings=stops)
    for token in tokenizer.encode(raw):
        if stop(token):
            break
    assert stop.text() == expected


def test_n_indent_ends_a_block_at_shallower_lines(tokenizer):
    stop = StopRule(tokenizer, "class A:\n    def f(self):\n", "", n_indent=8)
    for token in tokenizer.encode("        x = 1\n    def g(self):\n"):
        if stop(token):
            break
    assert stop.text() == "        x = 1"


@pytest.mark.parametrize("prefix,suffix,raw,stops", [
    ("x = ", "\n", "foo(1) # done", ("# d", "zz")),
    ("x = ", " + 1\n", "y + 1\n", ()),
    ("def f():\n", "    return r\n", "    r = 1\n\n\n    \nx", ()),
    ("def f():\n    ", "\n", "a = 1\n    b = 2 # x\nz", ("# x",)),
])
def test_committed_text_is_never_taken_back(tokenizer, prefix, suffix, raw, stops):
    stop = StopRule(tokenizer, prefix, suffix, stop_strings=stops)
    sent = ""
    for token in tokenizer.encode(raw):
        done = stop(token)
        committed = stop.committed()
        assert committed.startswith(sent) and stop.text().startswith(committed)
        sent = committed
        if done:
            break
    assert stop.text().startswith(sent)


CURSORS = [("x = f(", ")\n"), ("x = ", " + 1\n"), ("s = 'ab", "'\n"), ('s = """doc', '"""\n'),
           ("def f():\n", "    return r\n"), ("if a:\n    ", "\n"), ("y = [1,", "]\n"),
           ("# note ", "\n"), ("call(a, ", "b)\nz = 2\n")]


@given(cursor=st.sampled_from(CURSORS),
       pieces=st.lists(st.text(alphabet="()[]{}'\"#\\\n xab=,+", max_size=4), max_size=40))
@example(cursor=("x = ", "\n"), pieces=['""', '"a\n'])                    # a quote that grows to three
@example(cursor=("x = ", "\n"), pieces=["a '", "\\", "'b'"])              # an escape split
@example(cursor=("x = ", " + total\n"), pieces=["y + to", "tal"])          # the suffix's rest again
def test_the_scan_goes_on_where_it_left_off(tokenizer, cursor, pieces):
    """Fed piece by piece, the scan resumes from its last safe point and finds what a scan of
    the whole text from the start finds."""
    rule = StopRule(tokenizer, *cursor)
    text = ""
    for piece in pieces:
        text += piece
        assert rule.scan(text) == rule.scan_from(text, None)[0], (cursor, text)


@pytest.mark.parametrize("case", ENDINGS, ids=[c["name"] for c in ENDINGS])
def test_golden_end_guard(case, tokenizer):
    prefix, suffix = case["code"].split("‸")
    rule = StopRule(tokenizer, prefix, suffix, context=analyze(prefix, suffix))
    for b in case["text"].encode():
        assert not rule.feed(bytes([b])), "the text must not end by the stop rules"
    assert rule.may_end() == case["may_end"], rule.mode


def test_end_guard_masks_only_the_end_ids_and_only_while_the_unit_is_incomplete(tokenizer):
    rule = StopRule(tokenizer, "import os\n", "\n")
    guard = EndGuard(rule, frozenset({0, 3}), tokenizer.vocab_size)
    rule.feed(b"class B")
    mask = guard.allowed()
    assert mask is not None and not mask[0] and not mask[3] and int(mask.sum()) == len(mask) - 2
    rule.feed(b":\n    pass\n")
    assert guard.allowed() is None
    assert EndGuard(StopRule(tokenizer, "import os\n", "\n", syntax=False), frozenset({0}),
                    8).allowed() is None  # raw decoding: nothing held back


def test_raw_decoding_ends_wherever_the_model_says(tokenizer):
    rule = StopRule(tokenizer, "def f(x):\n    ", "\n", syntax=False)
    rule.feed(b"if")
    assert rule.may_end()
    assert isinstance(EndGuard(rule, frozenset({0}), 4).mask, torch.Tensor)
