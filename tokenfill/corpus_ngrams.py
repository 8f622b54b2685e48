"""A body of code's n-gram table, for drafting: after each run of 1 to `MAX_N` tokens, the token
that most often came next, and its share of what came next.

Built once from token ids (the bundled model's training corpus, or any tree of source files) by
`tokenfill ngrams`, and kept beside the model (`ngrams.safetensors`); nothing is trained. A small
model writes the idioms of the code it learnt from, so the table guesses its next tokens where
the request itself holds nothing to copy (block bodies: docstrings, first statements).

The table is compact:
- A context of n tokens is a hash of the tokens and n: 40 bits while counting, the top 32 kept.
  All orders sit in one sorted array, so a lookup of every order of the last tokens is one
  `searchsorted`. Two contexts that share a hash only make a poorer draft: verification keeps
  the output exact. An entry takes 8 bytes (a vocabulary under 65,536 tokens).
- Only contexts seen `min_count` times whose top next token has at least `min_share` are kept.
- A context is dropped where the next shorter context kept already names the same token: the
  lookup falls back to it and finds the same token.

`lookup` takes the longest context kept; `reference_next` is the slow path it is tested against:
plain dictionaries of every n-gram, no hashing, no pruning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def tail_hashes(tail: Sequence[int]) -> list[int]:
    """The hashes of the last 1, 2, ... `MAX_N` tokens of `tail` (as many as it has)."""
    out, h = [], 0
    for n in range(1, min(MAX_N, len(tail)) + 1):
        # the last n tokens, oldest first: h_n = token[-n] * MULT^(n-1) + ... + token[-1]
        h = (h + (int(tail[-n]) + 1) * _POWERS[n - 1]) & _MASK64
        out.append(_finish(h, n))
    return out


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


@dataclass
class NGramTable:
    keys: np.ndarray    # (entries,) uint32, sorted: context hashes' top bits (all orders)
    next: np.ndarray    # (entries,) uint16 (int32 for a larger vocabulary): the most frequent next token
    share: np.ndarray   # (entries,) uint8: its share of what followed, x 255
    order: np.ndarray   # (entries,) uint8: the context's length
    info: dict = field(default_factory=dict)  # what it was built from, and with which gates

    def __len__(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.next, self.share, self.order))

    def by_order(self) -> dict[int, int]:
        """Contexts kept, by length."""
        counts = np.bincount(self.order, minlength=MAX_N + 1)
        return {n: int(counts[n]) for n in range(1, MAX_N + 1)}

    def lookup(self, tail: Sequence[int]) -> tuple[int, float, int] | None:
        """(next token, its share, context length) for the longest context of `tail` kept."""
        hashes = tail_hashes(tail)
        if not hashes or not len(self.keys):
            return None
        wanted = np.array([h >> KEY_SHIFT for h in hashes], dtype=np.uint32)
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        hit = np.flatnonzero(self.keys[at] == wanted)
        if not len(hit):
            return None
        i = at[hit[-1]]  # the longest context found
        return int(self.next[i]), float(self.share[i]) / 255, int(self.order[i])

    @classmethod
    def build(cls, docs: Iterable[Sequence[int]], *, min_count: int = 3, min_share: float = 0.4,
              info: dict | None = None, progress: bool = False) -> NGramTable:
        """Count every run of 1 to `MAX_N` tokens and the token after it, within each document."""
        from tqdm import tqdm

        parts = []
        for doc in docs:
            parts += [np.asarray(doc, dtype=np.int64), np.array([-1])]  # -1: a document ends
        tokens = np.concatenate(parts) if parts else np.array([-1])
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
            follow = tokens[n:]                                     # the token after it
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
        return cls((keys[sort] >> np.uint64(KEY_SHIFT)).astype(np.uint32),
                   follows.astype(np.uint16 if small else np.int32),
                   np.round(np.concatenate([k[2] for k in kept])[sort] * 255).astype(np.uint8),
                   order[sort], info)

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


_EMPTY = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))


def source_texts(path: Path) -> list[str]:
    """The code to count: a corpus built by `tokenfill corpus` or `tokenfill train` (JSON lines,
    .gz or .xz too), its training split; or a directory (a repository): every .py file under it."""
    path = Path(path)
    if path.is_dir():
        texts = []
        for file in sorted(path.rglob("*.py")):
            try:
                texts.append(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                continue  # unreadable or not UTF-8: not code we can count
        return texts
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus file or directory")
    from .corpus import read

    return read(path, "train")


def build_beside(directory: Path, texts: list[str], *, min_count: int = 3,
                 min_share: float = 0.4, source: str = "", progress: bool = True) -> NGramTable:
    """Count `texts` in the tokens of the checkpoint in `directory` and keep the table there."""
    from tqdm import tqdm

    from .tokenizer import Tokenizer

    directory = Path(directory)
    tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
    docs, chunk = [], 256
    for i in tqdm(range(0, len(texts), chunk), desc="tokenizing", unit="chunk",
                  disable=not progress):
        docs += [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(texts[i:i + chunk])]
    table = NGramTable.build(docs, min_count=min_count, min_share=min_share, progress=progress,
                             info={"tokenizer": tokenizer_digest(directory / "tokenizer.json"),
                                   "source": source})
    table.save(directory / FILE)
    return table


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


def reference_next(docs: Iterable[Sequence[int]], tail: Sequence[int], min_count: int = 3,
                   min_share: float = 0.4) -> int | None:
    """The token `NGramTable.lookup` names after `tail`, from every n-gram counted in plain
    dictionaries: the longest context of `tail` that clears the gates, its most frequent next
    token (ties to the smallest id)."""
    counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for doc in docs:
        for i in range(1, len(doc)):
            for n in range(1, min(MAX_N, i) + 1):
                counts[tuple(doc[i - n:i])][doc[i]] += 1
    for n in range(min(MAX_N, len(tail)), 0, -1):
        row = counts.get(tuple(tail[len(tail) - n:]))
        if not row:
            continue
        token, count = min(row.items(), key=lambda kv: (-kv[1], kv[0]))
        if sum(row.values()) >= min_count and count / sum(row.values()) >= min_share:
            return token
    return None
