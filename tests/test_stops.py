"""The line rule: one line after text on the cursor's line, else a block up to a blank line or dedent."""

from __future__ import annotations

import pytest

from tokenfill.stops import StopRule, valid_utf8_prefix

# (prefix, suffix, raw model output, expected completion, stops before the output ends)
CASES = [
    # text before the cursor on its line: that line only
    ("x = ", "\n", "compute()\nprint(x)\n", "compute()", True),
    ("    return self.resu", "\n", "lt\n    def", "lt", True),
    ("x = ", "\n", "compute()", "compute()", False),
    # empty line at an indentation: a block, ended by a blank line
    ("def f():\n    ", "\n", "a = 1\n    b = 2\n\n    c = 3", "a = 1\n    b = 2", True),
    # ended by a dedent below the cursor's line
    ("def f():\n    ", "\n", "a = 1\n    return a\nprint(f())", "a = 1\n    return a", True),
    # the dedent is seen as soon as the line has a character
    ("def f():\n    ", "\n", "a = 1\nx", "a = 1", True),
    # deeper lines are part of the block
    ("def f():\n    ", "\n", "for i in x:\n        y(i)\n    z\nw", "for i in x:\n        y(i)\n    z", True),
    # cursor at the start of a line whose text follows the cursor: keep the newline
    ("def f():\n", "    return r\n", "    r = 1\n    \n", "    r = 1\n", True),
    ("def f():\n", "    return r\n", "    r = 1\nx", "    r = 1\n", True),
    # cursor at column 0 of an empty line: the block's reference is its first line
    ("def f():\n", "\n", "    a = 1\n    b = 2\n\n", "    a = 1\n    b = 2", True),
    # no stop yet: everything so far
    ("def f():\n    ", "", "a = 1\n    b", "a = 1\n    b", False),
]


@pytest.mark.parametrize("prefix,suffix,raw,expected,stops", CASES)
def test_line_rule(tokenizer, prefix, suffix, raw, expected, stops):
    stop = StopRule(tokenizer, prefix, suffix)
    stopped = False
    for token in tokenizer.encode(raw):
        if stop(token):
            stopped = True
            break
    assert stopped == stops
    assert stop.text() == expected


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


@pytest.mark.parametrize("prefix,suffix,raw,stops", [case[:3] + ((),) for case in CASES] + [
    ("x = ", "\n", "foo(1) # done", ("# d", "zz")),
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
