"""Holes cut from real Python files: where a person would ask for a completion.

Kinds (each hole is prefix | middle | suffix of one file, reproducible from a seed):
- `whole-line`: a whole non-blank line, the cursor at its start (the middle ends with its newline);
- `mid-line`: the cursor after some text of a line, the middle the rest of that line;
- `mid-token`: the cursor strictly inside an identifier, number or multi-character operator, the
  middle the rest of that line;
- `block-body`: the body of a block (the lines indented under a `...:` opener), the cursor at the
  start of the body's first line;
- `dot-identifier`: the cursor right after `name.`, the middle the rest of that line.
"""

from __future__ import annotations

import io
import random
import tokenize
from dataclasses import dataclass

KINDS = ("whole-line", "mid-line", "mid-token", "block-body", "dot-identifier")


@dataclass
class Hole:
    id: str
    kind: str
    prefix: str
    middle: str
    suffix: str


def line_starts(text: str) -> list[int]:
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    return starts


def _rest_of_line(text: str, at: int) -> int:
    end = text.find("\n", at)
    return len(text) if end < 0 else end


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return []


def candidates(text: str, kind: str) -> list[tuple[int, int]]:
    """(cursor, end of middle) pairs of this kind in `text`."""
    starts = line_starts(text)
    lines = text.splitlines(keepends=True)
    out = []
    if kind == "whole-line":
        for start, line in zip(starts[1:], lines[1:]):
            if line.strip():
                out.append((start, start + len(line)))
    elif kind == "mid-line":
        for start, line in zip(starts, lines):
            body = line.rstrip("\n")
            indent = len(body) - len(body.lstrip())
            for at in range(start + indent + 1, start + len(body)):
                out.append((at, start + len(body)))
    elif kind in ("mid-token", "dot-identifier"):
        toks = _tokens(text)
        for prev, tok in zip(toks, toks[1:]):
            if tok.start[0] != tok.end[0] or tok.start[0] > len(starts):
                continue  # multi-line strings, the end marker
            begin = starts[tok.start[0] - 1] + tok.start[1]
            if kind == "dot-identifier":
                if prev.type == tokenize.OP and prev.string == "." and tok.type == tokenize.NAME:
                    out.append((begin, _rest_of_line(text, begin)))
            elif tok.type in (tokenize.NAME, tokenize.NUMBER, tokenize.OP) and len(tok.string) > 1:
                for k in range(1, len(tok.string)):
                    out.append((begin + k, _rest_of_line(text, begin + k)))
    elif kind == "block-body":
        for i, line in enumerate(lines[:-1]):
            code = line.split("#", 1)[0].rstrip()
            if not code.endswith(":"):
                continue
            indent = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or
                                      len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1  # trailing blank lines belong to what follows
            if j > i + 1 and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent:
                out.append((starts[i + 1], starts[j - 1] + len(lines[j - 1])))
    else:
        raise ValueError(f"unknown hole kind {kind!r}; kinds: {', '.join(KINDS)}")
    return out


def cut(files: list[tuple[str, str]], kind: str, n: int, seed: int,
        max_middle: int = 600) -> list[Hole]:
    """`n` holes of one kind, each from a different file where possible (reproducible)."""
    rng = random.Random(f"{seed}:{kind}")
    order = list(range(len(files)))
    rng.shuffle(order)
    holes = []
    for _ in range(3):  # files may give a second or third hole when there are few
        for index in order:
            path, text = files[index]
            options = [c for c in candidates(text, kind) if 0 < c[1] - c[0] <= max_middle]
            if not options:
                continue
            cursor, end = rng.choice(options)
            holes.append(Hole(f"{kind}:{path}:{cursor}", kind, text[:cursor], text[cursor:end],
                              text[end:]))
            if len(holes) == n:
                return holes
    return holes
