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

Repository context: given the documents' paths, a share of FIM examples (`repo_rate`) get what
the workspace retriever would put before them at a cursor there: definitions the window uses
and chunks like it, from other files of the same package (`RepoContext`), chosen by the same
code (context/retrieve.py's `assemble`) and laid out by the same code (fim.context_ids: the
family's file separators where the tokenizer has them) as at inference. A model trained on
single files alone has never seen a prompt that opens with other files, and learns nothing
about copying their names.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from tokenfill.completion import fim as fim_module
from tokenfill.completion.fim import FimTokens
from tokenfill.context.index import Chunk, chunk_file, chunks_from_spans
from tokenfill.context.retrieve import assemble, identifiers, jaccard, query_window
from tokenfill.context.workspace import approx_tokens
from tokenfill.runtime.tokenizer import Tokenizer

CANDIDATES = 24  # chunks ranked for a sample, as the retriever re-ranks its BM25 hits

UNITS = ("rest-of-line", "line", "lines", "block-body", "arguments")


@dataclass
class FimMix:
    fim_rate: float = 0.7      # share of samples that are FIM examples
    spm_rate: float = 0.5      # of those, share laid out suffix-prefix-middle
    unit_rate: float = 0.6     # of those, share whose middle is a unit (UNITS)
    short_rate: float = 0.5    # of the rest, share with a short middle (<= ~200 chars)
    window_chars: int = 2000   # characters of source per sample
    repo_rate: float = 0.3     # of FIM examples, share given other files' context (with paths)
    context_tokens: int = 256  # that context's budget (the retriever's, as served)


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


def repository_of(path: str) -> str:
    """The package a corpus path belongs to: `django-5.2/django/db/models.py` ->
    `django-5.2/django`, `stdlib/json/decoder.py` -> `stdlib/json`, `stdlib/os.py` -> `stdlib`."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


SIBLINGS = 8            # other files of the package looked at for one sample's context
CHUNKED = 4096          # files whose chunks a stream keeps


class RepoContext:
    """Other files of a document's package, cut into chunks as the workspace index cuts them, and
    the pieces the retriever would take from them for a window."""

    def __init__(self, paths: list[str], docs: list[str], spans: list[list | None] | None = None):
        self.paths, self.docs = paths, docs
        self.spans = spans or [None] * len(docs)   # the corpus's chunks; else parsed here
        self.repo = [repository_of(p) for p in paths]
        self.members: dict[str, list[int]] = {}
        for k, repo in enumerate(self.repo):
            self.members.setdefault(repo, []).append(k)
        self._chunks: OrderedDict[int, list[Chunk]] = OrderedDict()

    def chunks(self, k: int) -> list[Chunk]:
        found = self._chunks.get(k)
        if found is None:
            rel = self.paths[k].split("/", 2)[-1]   # the path inside the package, as served
            spans = self.spans[k]
            found = self._chunks[k] = (chunks_from_spans(rel, self.docs[k], spans)
                                       if spans is not None else chunk_file(rel, self.docs[k]))
            if len(self._chunks) > CHUNKED:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(k)
        return found

    def pieces(self, k: int, prefix: str, suffix: str, rng: random.Random,
               budget: int) -> list[tuple[str, str]]:
        """What the retriever would give a cursor between `prefix` and `suffix` in document k,
        from up to SIBLINGS other files of its package (BM25's preselection is left out: the
        candidates are ranked by shared names, as the retriever re-ranks them)."""
        others = [j for j in self.members[self.repo[k]] if j != k]
        if not others:
            return []
        window = query_window(prefix, suffix)
        chunks = [c for j in rng.sample(others, min(SIBLINGS, len(others)))
                  for c in self.chunks(j)]
        defined = [c for c in chunks if c.name in window]
        similar = sorted((c for c in chunks if identifiers(c.text) & window),
                         key=lambda c: -jaccard(identifiers(c.text), window))[:CANDIDATES]
        pieces, _, _, _ = assemble(defined, similar, approx_tokens, budget)
        return pieces


class SampleStream:
    def __init__(self, docs: list[str], tokenizer: Tokenizer, fim: FimTokens, eot: int,
                 mix: FimMix, seed: int, paths: list[str] | None = None,
                 spans: list[list | None] | None = None):
        assert docs, "no documents to sample from"
        self.docs, self.tok, self.fim, self.eot, self.mix = docs, tokenizer, fim, eot, mix
        self.spm = replace(fim, layout="spm")
        self.psm = replace(fim, layout="psm")
        self.repos = (RepoContext(paths, docs, spans) if paths is not None and mix.repo_rate
                      else None)
        self.rng = random.Random(seed)
        self.cum = []
        total = 0
        for d in docs:
            total += len(d)
            self.cum.append(total)

    def window(self) -> tuple[int, str, int]:
        """A random window of a random document (documents weighted by length), from a line
        start: the document's index, the window, and where in the document it starts."""
        k = bisect.bisect_right(self.cum, self.rng.randrange(self.cum[-1]))
        doc = self.docs[k]
        if len(doc) <= self.mix.window_chars:
            return k, doc, 0
        start = self.rng.randrange(len(doc) - self.mix.window_chars // 2)
        start = doc.rfind("\n", 0, start) + 1
        return k, doc[start:start + self.mix.window_chars], start

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
        k, text, start = self.window()
        if self.rng.random() >= self.mix.fim_rate:
            return self.tok.encode(text) + [self.eot]
        a, b = self.cuts(text)
        pre, mid, suf = self.tok.encode_batch([text[:a], text[a:b], text[b:]])
        fim = self.spm if self.rng.random() < self.mix.spm_rate else self.psm
        context = None
        if self.repos is not None and self.rng.random() < self.mix.repo_rate:
            doc = self.docs[k]
            pieces = self.repos.pieces(k, doc[:start + a], doc[start + b:], self.rng,
                                       self.mix.context_tokens)
            path = self.repos.paths[k]
            context = fim_module.context_ids(
                fim, pieces, self.tok.encode, 2 * self.mix.context_tokens,
                project=repository_of(path).split("/")[-1], path=path.split("/", 2)[-1])
        return [*fim.prompt(pre, suf, context), *mid, self.eot]

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
