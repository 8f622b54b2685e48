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
    elif kind == "multi-line":  # 2 to 5 whole lines, none blank (speculative decoding's bench)
        for i in range(1, len(lines)):
            for k in range(2, 6):
                if i + k <= len(lines) and all(line.strip() for line in lines[i:i + k]):
                    out.append((starts[i], starts[i + k - 1] + len(lines[i + k - 1])))
    else:
        raise ValueError(f"unknown hole kind {kind!r}; kinds: {', '.join(KINDS)}, multi-line")
    return out


TOKEN_KINDS = ("identifier", "number", "operator", "indentation")


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every single-line identifier, number and multi-character operator,
    and of every line's indentation (when it is at least two characters)."""
    starts = line_starts(text)
    kinds = {tokenize.NAME: "identifier", tokenize.NUMBER: "number", tokenize.OP: "operator"}
    out = []
    for tok in _tokens(text):
        kind = kinds.get(tok.type)
        if tok.type == tokenize.INDENT or (kind and tok.start[0] == tok.end[0]):
            if tok.start[0] > len(starts):
                continue
            begin = starts[tok.start[0] - 1] + tok.start[1]
            end = starts[tok.end[0] - 1] + tok.end[1] if kind else begin + len(tok.string)
            if end - begin > 1:
                out.append((kind or "indentation", begin, end))
    for begin in starts:  # indentation of lines that do not open a block (no INDENT token)
        line = text[begin:text.find("\n", begin) if "\n" in text[begin:] else len(text)]
        width = len(line) - len(line.lstrip(" \t"))
        if width > 1 and line.strip() and (("indentation", begin, begin + width) not in out):
            out.append(("indentation", begin, begin + width))
    return out


@dataclass
class CursorPair:
    """A cursor strictly inside a token, and its control: the cursor at that token's start.
    Both holes end where the line ends; `kind` is the token's kind (TOKEN_KINDS)."""
    kind: str
    inside: Hole
    control: Hole
    token: str  # the whole token the cursor sits in (suffix pairs: the one the hole ends in)


def cursor_pairs(files: list[tuple[str, str]], kind: str, n: int, seed: int) -> list[CursorPair]:
    """`n` pairs whose token is of `kind`, each from a different file where possible."""
    rng = random.Random(f"{seed}:pair:{kind}")
    order = list(range(len(files)))
    rng.shuffle(order)
    pairs: list[CursorPair] = []
    for _ in range(3):
        for index in order:
            path, text = files[index]
            spans = [(b, e) for k, b, e in token_spans(text) if k == kind]
            if not spans:
                continue
            begin, end = rng.choice(spans)
            cursor = rng.randint(begin + 1, end - 1)
            stop = _rest_of_line(text, cursor)
            pairs.append(CursorPair(kind, Hole(f"{kind}:{path}:{cursor}", kind, text[:cursor],
                                               text[cursor:stop], text[stop:]),
                                    Hole(f"{kind}:{path}:{begin}", kind, text[:begin],
                                         text[begin:stop], text[stop:]), text[begin:end]))
            if len(pairs) == n:
                return pairs
    return pairs


def suffix_pairs(files: list[tuple[str, str]], n: int, seed: int) -> list[CursorPair]:
    """The suffix side: the cursor at the start of an identifier, number or operator, the hole
    ending strictly inside it (the suffix starts mid-token); the control ends at its end."""
    rng = random.Random(f"{seed}:suffix")
    order = list(range(len(files)))
    rng.shuffle(order)
    pairs: list[CursorPair] = []
    for index in order:
        path, text = files[index]
        spans = [(k, b, e) for k, b, e in token_spans(text) if k != "indentation"]
        if not spans:
            continue
        kind, begin, end = rng.choice(spans)
        cut = rng.randint(begin + 1, end - 1)
        pairs.append(CursorPair(kind, Hole(f"suffix:{path}:{cut}", kind, text[:begin],
                                           text[begin:cut], text[cut:]),
                                Hole(f"suffix:{path}:{end}", kind, text[:begin], text[begin:end],
                                     text[end:]), text[begin:end]))
        if len(pairs) == n:
            break
    return pairs


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
