"""How a completion is scored against the text that was there, the same way everywhere.

- `em_first_line`: the first lines are equal, white space at both ends ignored;
- `es_first_line`, `es_middle`: Levenshtein similarity (0..1), trailing white space ignored;
- `em_middle`: the whole middles are equal, trailing white space ignored;
- `parses`: the file with the completion in place parses (`ast.parse`);
- `too_short`: the completion holds fewer than half of the gold's characters (white space at
  both ends ignored): it ended mid-thought;
- `runs_on`: the completion has more non-blank lines than the gold: it ran past where the gold
  ends.
"""

from __future__ import annotations

import ast
import warnings

from rapidfuzz.distance import Levenshtein


def first_line(text: str) -> str:
    """The text up to its first newline, as it is (callers say which white space they ignore)."""
    return text.split("\n", 1)[0]


def same_first_line(got: str, want: str) -> bool:
    return first_line(got).strip() == first_line(want).strip()


def parses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse(source)
            return True
        except (SyntaxError, ValueError):
            return False


def similarity(got: str, want: str) -> float:
    return Levenshtein.normalized_similarity(got, want)


def too_short(got: str, want: str) -> bool:
    return len(got.strip()) < len(want.strip()) / 2


def runs_on(got: str, want: str) -> bool:
    def lines(text: str) -> int:
        return sum(1 for line in text.split("\n") if line.strip())

    return lines(got) > lines(want)


def score_middle(got: str, want: str, prefix: str, suffix: str) -> dict[str, float]:
    """The figures of a completion `got` where `want` was, between `prefix` and `suffix`."""
    return {
        "em_first_line": same_first_line(got, want),
        "es_first_line": similarity(first_line(got).rstrip(), first_line(want).rstrip()),
        "em_middle": got.rstrip() == want.rstrip(),
        "es_middle": similarity(got.rstrip(), want.rstrip()),
        "parses": parses(prefix + got + suffix),
        "too_short": too_short(got, want),
        "runs_on": runs_on(got, want),
    }
