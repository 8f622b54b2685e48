"""The cursor context and the decisions made from it, and the golden cases (tests/golden/syntax.toml):
each a file with a cursor, the decision expected there, and what a raw model output becomes once
the stop and trim rules have run on it inside the decode loop."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tokenfill.completion.stops import StopRule
from tokenfill.completion.syntax import analyze, decide, detect_indentation

CURSOR = "‸"
GOLDEN = tomllib.loads((Path(__file__).parent / "golden" / "syntax.toml").read_text())["case"]


def split(code: str) -> tuple[str, str]:
    assert code.count(CURSOR) == 1, "a case marks its cursor exactly once"
    prefix, suffix = code.split(CURSOR)
    return prefix, suffix


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_golden_decision(case):
    decision = decide(analyze(*split(case["code"])), invoked=case.get("invoked", False))
    if case["decision"] == "skip":
        assert not decision.complete and case["why"] in decision.reason
    else:
        assert decision.complete and decision.mode == case["decision"], decision.reason


def run_rule(rule: StopRule, pieces: list[bytes]) -> tuple[str, list[str]]:
    commits = []
    for piece in pieces:
        done = rule.feed(piece)
        commits.append(rule.committed())
        if done:
            break
    return rule.text(), commits


@pytest.mark.parametrize("case", [c for c in GOLDEN if c["decision"] != "skip"],
                         ids=[c["name"] for c in GOLDEN if c["decision"] != "skip"])
def test_golden_result(case, tokenizer):
    prefix, suffix = split(case["code"])
    context = analyze(prefix, suffix)
    by_token = [tokenizer.token_bytes[t] for t in tokenizer.encode(case["raw"])]
    by_byte = [bytes([b]) for b in case["raw"].encode()]
    for pieces in (by_token, by_byte):  # where tokens split the text does not matter
        rule = StopRule(tokenizer, prefix, suffix, context=context)
        text, commits = run_rule(rule, pieces)
        assert text == case["expected"]
        sent = ""
        for committed in commits:  # what a stream sent is never taken back
            assert committed.startswith(sent) and text.startswith(committed)
            sent = committed


def test_golden_file_covers_enough_cases():
    assert len(GOLDEN) >= 60
    assert len({c["name"] for c in GOLDEN}) == len(GOLDEN)


@pytest.mark.parametrize("prefix,suffix,fields", [
    ("x = 1  # note", "", dict(in_comment=True)),
    ("s = 'abc", "'\n", dict(string="'")),
    ('s = rb"abc', "", dict(string='rb"')),
    ('def f():\n    """Doc\n    more', "", dict(string='"""')),
    ('x = f"{a} and {b', '}"', dict(string='f"')),
    ("x = value", "", dict(partial="value")),
    ("x = 0x1f", "", dict(partial="0x1f", in_number=True)),
    ("y = self.items.", "", dict(after_dot=True, receiver="self.items")),
    ("y = get(a).na", "", dict(after_dot=True, receiver="get(a)", partial="na")),
    ("    return ", "", dict(after_keyword="return", indent=4)),
    ("for x in y:", "\n", dict(block_opener=True)),
    ("if f(a,\n      b):", "\n", dict(block_opener=True)),
    ("d = {1:", "}", dict(block_opener=False, open_brackets=["{"], suffix_closes="}")),
    ("f(a, [b, (c", ")])", dict(open_brackets=["(", "[", "("], suffix_closes=")])")),
    ("f(a, [b, (c", "), d])", dict(open_brackets=["(", "[", "("], suffix_closes=")")),
    ("def f():\n    ", "\n", dict(blank_line=True, indent=4)),
    ("x = ')'\ny = (", "", dict(open_brackets=["("])),
    ("s = '''a\nb'''\nt = [", "]", dict(open_brackets=["["], suffix_closes="]", string=None)),
])
def test_cursor_context(prefix, suffix, fields):
    ctx = analyze(prefix, suffix)
    for name, value in fields.items():
        assert getattr(ctx, name) == value, name


@pytest.mark.parametrize("text,unit", [
    ("def f():\n    return 1\n", "    "),
    ("def f():\n  if x:\n    return 1\n", "  "),
    ("def f():\n\tif x:\n\t\treturn 1\n", "\t"),
    ("x = 1\n", "    "),
])
def test_indentation_is_read_from_the_file(text, unit):
    assert detect_indentation(text).unit == unit


def test_a_broken_line_above_does_not_put_the_cursor_in_a_string():
    ctx = analyze("x = 'oops\ny = ", "")
    assert ctx.string is None


def test_a_long_prefix_is_read_from_a_top_level_line_near_the_cursor():
    filler = "".join(f"def f{i}(x):\n    return [x,\n            {i}]\n\n" for i in range(400))
    ctx = analyze(filler + "def g(a):\n    y = compute(a, ", ")\n")
    assert ctx.open_brackets == ["("] and ctx.suffix_closes == ")" and ctx.indent == 4
    assert analyze(filler + "s = 'abc", "'\n").string == "'"
