"""A body of code's n-gram table, for drafting: after each run of 1 to `MAX_N` tokens, the token
that most often came next, and its share of what came next.

Built once from token ids (the bundled model's training corpus, or any tree of source files) by
`tokenfill ngrams` (train/ngrams.py), and kept beside the model (`ngrams.safetensors`); nothing
is trained. A small
model writes the idioms of the code it learnt from, so the table guesses its next tokens where
the request itself holds nothing to copy (block bodies: docstrings, first statements).

The table is compact:
- A context of n tokens is a hash of the tokens and n: 40 bits while counting, the top 32 kept.
  All orders sit in one sorted array. Two contexts that share a hash only make a poorer draft:
  verification keeps the output exact. An entry takes 8 bytes (a vocabulary under 65,536 tokens).
- Only contexts seen `min_count` times whose top next token has at least `min_share` are kept.
- A context is dropped where the next shorter context kept already names the same token: the
  lookup falls back to it and finds the same token.

`lookup` takes the longest context kept, by bisection over the arrays seen as Python sequences
(a drafting step makes a few dozen lookups, too few for numpy to pay); it is tested against
`train.ngrams.reference_next`: plain dictionaries of every n-gram, no hashing, no pruning.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass

MAX_N = 6
HASH_BITS = 40          # a context's hash; the next token takes the 24 bits below it when counting
TOKEN_BITS = 24
KEY_SHIFT = HASH_BITS - 32  # the table keeps a hash's top 32 bits
_MASK64 = (1 << 64) - 1
_MULT = 0x9E3779B97F4A7C15
_MIX = 0xFF51AFD7ED558CCD
_POWERS = [pow(_MULT, k, 1 << 64) for k in range(MAX_N)]
FILE = "ngrams.safetensors"


def _finish(h: int, n: int) -> int:
    h = (h ^ n) & _MASK64
    h ^= h >> 33
    h = (h * _MIX) & _MASK64
    h ^= h >> 33
    return h & ((1 << HASH_BITS) - 1)


def _unmixed(tail: Sequence[int]) -> list[int]:
    """Before `_finish`: for n = 1 ... `MAX_N` (as many as `tail` has), the last n tokens, oldest
    first, as h_n = (token[-n]+1) * MULT^(n-1) + ... + (token[-1]+1), modulo 2^64."""
    out, h = [], 0
    for n in range(1, min(MAX_N, len(tail)) + 1):
        h = (h + (int(tail[-n]) + 1) * _POWERS[n - 1]) & _MASK64
        out.append(h)
    return out


def tail_hashes(tail: Sequence[int]) -> list[int]:
    """The hashes of the last 1, 2, ... `MAX_N` tokens of `tail` (as many as it has)."""
    return [_finish(h, n) for n, h in enumerate(_unmixed(tail), start=1)]


@dataclass
class NGramTable:
    keys: np.ndarray    # (entries,) uint32, sorted: context hashes' top bits (all orders)
    next: np.ndarray    # (entries,) uint16 (int32 for a larger vocabulary): the most frequent next token
    share: np.ndarray   # (entries,) uint8: its share of what followed, x 255
    order: np.ndarray   # (entries,) uint8: the context's length
    info: dict = field(default_factory=dict)  # what it was built from, and with which gates

    def __post_init__(self) -> None:
        # the arrays seen as Python sequences: a lookup reads a few entries, and after a forward
        # pass the first numpy call of a step costs more than the whole lookup (drafters.py)
        self._views = tuple(memoryview(np.ascontiguousarray(a)) for a in
                            (self.keys, self.next, self.share, self.order))

    def __len__(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.next, self.share, self.order))

    def by_order(self) -> dict[int, int]:
        """Contexts kept, by length."""
        counts = np.bincount(self.order, minlength=MAX_N + 1)
        return {n: int(counts[n]) for n in range(1, MAX_N + 1)}

    def lookup(self, tail: Sequence[int]) -> tuple[int, float, int] | None:
        """(next token, its share, context length) for the longest context of `tail` kept: the
        longest first, each hashed only when the longer ones were not found."""
        keys, follows, shares, orders = self._views
        unmixed = _unmixed(tail)
        for n in range(len(unmixed), 0, -1):
            key = _finish(unmixed[n - 1], n) >> KEY_SHIFT
            i = bisect.bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                return follows[i], shares[i] / 255, orders[i]
        return None

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"keys": self.keys, "next": self.next, "share": self.share,
                   "order": self.order}, str(path), metadata={"info": json.dumps(self.info)})

    @classmethod
    def load(cls, path: Path) -> NGramTable:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            arrays = {k: f.get_tensor(k) for k in ("keys", "next", "share", "order")}
        return cls(**arrays, info=info)


def tokenizer_digest(path: Path) -> str:
    """What names a tokenizer: a table's token ids mean nothing under another."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def beside(directory: Path) -> NGramTable | None:
    """The table kept in a checkpoint directory (`FILE`), if there is one built with its
    tokenizer; a table built with another is left out, with a warning."""
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    table = NGramTable.load(path)
    made_with = table.info.get("tokenizer")
    if made_with != tokenizer_digest(Path(directory) / "tokenizer.json"):
        warnings.warn(f"{path} was built with another tokenizer ({made_with}); not used. "
                      "Rebuild it with `tokenfill ngrams`.", stacklevel=2)
        return None
    return table


# --- counting a table (the corpus drafter's is counted at training time, the workspace
# drafter's at run time) ---------------------------------------------------------------------

def context_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """For each i >= n-1: the hash of tokens[i-n+1 : i+1] (as `tail_hashes` computes it)."""
    tokens = tokens.astype(np.uint64) + np.uint64(1)
    h = np.zeros(len(tokens) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * np.uint64(_MULT) + tokens[j:len(tokens) - n + 1 + j]
        h ^= np.uint64(n)
        h ^= h >> np.uint64(33)
        h *= np.uint64(_MIX)
        h ^= h >> np.uint64(33)
    return h & np.uint64((1 << HASH_BITS) - 1)


def count(docs: Iterable[Sequence[int]], *, min_count: int = 3, min_share: float = 0.4,
          info: dict | None = None, progress: bool = False,
          targets: Iterable[Sequence[int]] | None = None) -> NGramTable:
    """Count every run of 1 to `MAX_N` tokens and the token after it, within each document.
    `targets` (one per document, as long): count `targets[d][i]` as what follows the runs
    ending at position i instead of the document's next token (a model's predictions)."""
    from tqdm import tqdm

    parts, wanted = [], []
    for doc, target in zip(docs, targets) if targets is not None else ((d, None) for d in docs):
        parts += [np.asarray(doc, dtype=np.int64), np.array([-1])]  # -1: a document ends
        if target is not None:
            wanted += [np.asarray(target, dtype=np.int64), np.array([-1])]
    tokens = np.concatenate(parts) if parts else np.array([-1])
    predicted = np.concatenate(wanted) if wanted else None
    if len(tokens) and tokens.max(initial=0) >= 1 << TOKEN_BITS:
        raise ValueError(f"token ids must be below 2^{TOKEN_BITS}")
    ends = np.flatnonzero(tokens < 0)
    last_end = np.maximum.accumulate(np.where(tokens < 0, np.arange(len(tokens)), -1))
    kept: list[tuple[np.ndarray, ...]] = []  # per order: keys, next, share, first position
    hashes: dict[int, np.ndarray] = {}
    for n in tqdm(range(1, MAX_N + 1), desc="counting", unit="context length",
                  disable=not progress):
        if len(tokens) <= n:
            kept.append(_EMPTY)
            continue
        h = context_hashes(np.maximum(tokens, 0), n)[:-1]      # context ending at i, i >= n-1
        follow = tokens[n:] if predicted is None else predicted[n - 1:-1]  # what follows
        # whole: no document end among the context and the token after it
        whole = last_end[n:] < np.arange(len(tokens) - n)
        hashes[n] = np.concatenate([np.zeros(n - 1, dtype=np.uint64), h])  # by end position
        pair = (h[whole] << np.uint64(TOKEN_BITS)) | follow[whole].astype(np.uint64)
        pos = np.flatnonzero(whole) + n - 1                     # where each context ends
        uniq, first, counts = np.unique(pair, return_index=True, return_counts=True)
        if not len(uniq):
            kept.append(_EMPTY)
            continue
        ctx = uniq >> np.uint64(TOKEN_BITS)
        nxt = (uniq & np.uint64((1 << TOKEN_BITS) - 1)).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
        total = np.add.reduceat(counts, starts)
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ctx)]))
        # the best next token of each context: most counts, then the smallest id
        best = np.lexsort((nxt, -counts, group))[starts]
        share = counts[best] / total
        good = (total >= min_count) & (share >= min_share)
        keys, follows, shares = ctx[best][good], nxt[best][good], share[good]
        where = pos[first[best][good]]
        if n > 1 and len(keys):  # drop what the shorter contexts kept already say
            said = _backoff(kept, hashes, where, n)
            new = said != follows
            keys, follows, shares, where = keys[new], follows[new], shares[new], where[new]
        kept.append((keys, follows, shares, where))
    keys = np.concatenate([k[0] for k in kept])
    order = np.concatenate([np.full(len(k[0]), n, dtype=np.uint8) for n, k in
                            enumerate(kept, start=1)])
    sort = np.argsort(keys, kind="stable")
    info = dict(info or {}, min_count=min_count, min_share=min_share, max_n=MAX_N,
                tokens=int((tokens >= 0).sum()), documents=len(ends))
    follows = np.concatenate([k[1] for k in kept])[sort]
    small = not len(follows) or follows.max() < 1 << 16
    return NGramTable((keys[sort] >> np.uint64(KEY_SHIFT)).astype(np.uint32),
               follows.astype(np.uint16 if small else np.int32),
               np.round(np.concatenate([k[2] for k in kept])[sort] * 255).astype(np.uint8),
               order[sort], info)


_EMPTY = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))


def _backoff(kept: list[tuple[np.ndarray, ...]], hashes: dict[int, np.ndarray],
             where: np.ndarray, n: int) -> np.ndarray:
    """For contexts of length n ending at positions `where`: the token the longest shorter
    context already kept names (-1 where none is)."""
    said = np.full(len(where), -1, dtype=np.int64)
    for m in range(n - 1, 0, -1):
        keys, follows = kept[m - 1][0], kept[m - 1][1]
        if not len(keys):
            continue
        order = np.argsort(keys)
        sorted_keys = keys[order]
        want = hashes[m][where]
        at = np.minimum(np.searchsorted(sorted_keys, want), len(keys) - 1)
        found = (sorted_keys[at] == want) & (said < 0)
        said[found] = follows[order[at[found]]]
    return said
