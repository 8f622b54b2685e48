"""Training samples: windows of source files, most of them turned into fill-in-the-middle examples.

A FIM example cuts a window into prefix, middle and suffix, encodes each piece on its own, and
lays them out as prefix-suffix-middle (`<fim_prefix> P <fim_suffix> S <fim_middle> M <eot>`) or
suffix-prefix-middle (`<fim_suffix> S <fim_prefix> P <fim_middle> M <eot>`). The cuts:
- units, the spans editors ask for (as in syntax-aware FIM training): the rest of a line, a whole
  line, a few whole lines, the body of a block, the arguments of a call. The middle ends exactly
  where the unit does, so the model learns to end a line or a block where the suffix takes over;
- short cuts at arbitrary characters (a few characters to a few lines), so cursors inside tokens
  occur;
- uniform cuts of the window.
Units are found from the window's lines, indentation and brackets (a window is rarely whole
Python, so no parser). Rows are packed with whole samples, each row starting at a sample start;
the last one is cut.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from tokenfill.completion.fim import FimTokens
from tokenfill.runtime.tokenizer import Tokenizer

UNITS = ("rest-of-line", "line", "lines", "block-body", "arguments")


@dataclass
class FimMix:
    fim_rate: float = 0.7      # share of samples that are FIM examples
    spm_rate: float = 0.5      # of those, share laid out suffix-prefix-middle
    unit_rate: float = 0.6     # of those, share whose middle is a unit (UNITS)
    short_rate: float = 0.5    # of the rest, share with a short middle (<= ~200 chars)
    window_chars: int = 2000   # characters of source per sample


def _lines(text: str) -> list[tuple[int, str]]:
    """(start offset, line without its newline) of each line."""
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _code(line: str) -> str:
    """The line without a trailing comment (quotes are not followed: a heuristic)."""
    return line.split("#", 1)[0].rstrip() if "#" in line and "'" not in line and '"' not in line \
        else line.rstrip()


def unit_spans(text: str, kind: str) -> list[tuple[int, int]]:
    """(start, end) of every middle of this kind in `text` (see UNITS); lines with their newline
    where the unit is whole lines, so the suffix starts at the next line."""
    lines = _lines(text)
    whole = [(start, line) for start, line in lines[:-1] if line.strip()]  # ends with a newline
    spans: list[tuple[int, int]] = []
    if kind == "rest-of-line":
        spans = [(start + k, start + len(line)) for start, line in lines if line.strip()
                 for k in range(_indent(line) + 1, len(line))]
    elif kind == "line":
        for start, line in whole:
            spans += [(start, start + len(line) + 1), (start + _indent(line), start + len(line) + 1)]
    elif kind == "lines":
        for i in range(len(lines) - 1):
            for k in range(2, 6):
                block = lines[i:i + k]
                if i + k < len(lines) and all(line.strip() for _, line in block):
                    start, last = block[0][0], block[-1]
                    spans.append((start + _indent(block[0][1]), last[0] + len(last[1]) + 1))
    elif kind == "block-body":
        for i, (start, line) in enumerate(lines[:-1]):
            if not _code(line).endswith(":"):
                continue
            j = i + 1
            while j < len(lines) - 1 and (not lines[j][1].strip() or
                                          _indent(lines[j][1]) > _indent(line)):
                j += 1
            while j > i + 1 and not lines[j - 1][1].strip():
                j -= 1
            first, last = lines[i + 1], lines[j - 1]
            if j > i + 1 and j < len(lines) and _indent(first[1]) > _indent(line):
                spans.append((first[0] + _indent(first[1]), last[0] + len(last[1]) + 1))
    elif kind == "arguments":
        for start, line in lines:
            for k, c in enumerate(line):
                if c == "(" and k and (line[k - 1].isalnum() or line[k - 1] in "_)]"):
                    close = _matching(line, k)
                    if close is not None and close > k + 1:
                        spans.append((start + k + 1, start + close))
    else:
        raise ValueError(f"unknown unit {kind!r}; units: {', '.join(UNITS)}")
    return spans


def _matching(line: str, at: int) -> int | None:
    """The offset of the bracket that closes the one at `at` on the same line, if any."""
    depth, quote = 0, None
    for k in range(at, len(line)):
        c = line[k]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return k
    return None


class SampleStream:
    def __init__(self, docs: list[str], tokenizer: Tokenizer, fim: FimTokens, eot: int,
                 mix: FimMix, seed: int):
        assert docs, "no documents to sample from"
        self.docs, self.tok, self.fim, self.eot, self.mix = docs, tokenizer, fim, eot, mix
        self.rng = random.Random(seed)
        self.cum = []
        total = 0
        for d in docs:
            total += len(d)
            self.cum.append(total)

    def window(self) -> str:
        """A random window of a random document (documents weighted by length), from a line start."""
        doc = self.docs[bisect.bisect_right(self.cum, self.rng.randrange(self.cum[-1]))]
        if len(doc) <= self.mix.window_chars:
            return doc
        start = self.rng.randrange(len(doc) - self.mix.window_chars // 2)
        start = doc.rfind("\n", 0, start) + 1
        return doc[start:start + self.mix.window_chars]

    def cuts(self, text: str) -> tuple[int, int]:
        rng, n = self.rng, len(text)
        if rng.random() < self.mix.unit_rate:
            spans = unit_spans(text, rng.choice(UNITS))
            if spans:
                return rng.choice(spans)
        if rng.random() < self.mix.short_rate:
            length = min(n, int(rng.expovariate(1 / 40)))
            a = rng.randint(0, n - length)
            return a, a + length
        a, b = sorted((rng.randint(0, n), rng.randint(0, n)))
        return a, b

    def sample(self) -> list[int]:
        text = self.window()
        if self.rng.random() >= self.mix.fim_rate:
            return self.tok.encode(text) + [self.eot]
        a, b = self.cuts(text)
        pre, mid, suf = self.tok.encode_batch([text[:a], text[a:b], text[b:]])
        f = self.fim
        if self.rng.random() < self.mix.spm_rate:
            return [f.suffix, *suf, f.prefix, *pre, f.middle, *mid, self.eot]
        return [f.prefix, *pre, f.suffix, *suf, f.middle, *mid, self.eot]

    def batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, seq_len)."""
        rows = []
        for _ in range(batch_size):
            row: list[int] = []
            while len(row) < seq_len + 1:
                row.extend(self.sample())
            rows.append(row[:seq_len + 1])
        data = torch.tensor(rows, dtype=torch.long)
        return data[:, :-1], data[:, 1:]
