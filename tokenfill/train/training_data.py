"""Training samples: windows of source files, half of them turned into fill-in-the-middle examples.

A FIM example cuts a window at two arbitrary characters (so cursors inside tokens occur) into
prefix, middle and suffix, encodes each piece on its own, and lays them out as
prefix-suffix-middle (`<fim_prefix> P <fim_suffix> S <fim_middle> M <eot>`) or
suffix-prefix-middle (`<fim_suffix> S <fim_prefix> P <fim_middle> M <eot>`). Half of the middles
are short (a few characters to a few lines), the size editors ask for; the rest are uniform cuts.
Rows are packed with whole samples, each row starting at a sample start; the last one is cut.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from tokenfill.completion.fim import FimTokens
from tokenfill.runtime.tokenizer import Tokenizer


@dataclass
class FimMix:
    fim_rate: float = 0.5      # share of samples that are FIM examples
    spm_rate: float = 0.5      # of those, share laid out suffix-prefix-middle
    short_rate: float = 0.5    # of those, share with a short middle (<= ~200 chars)
    window_chars: int = 2000   # characters of source per sample


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

    def cuts(self, n: int) -> tuple[int, int]:
        rng = self.rng
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
        a, b = self.cuts(len(text))
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
