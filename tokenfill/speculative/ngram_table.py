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
from collections.abc import Sequence
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


