"""Building a body of code's n-gram table for the corpus drafter (speculative/ngram_table.py
holds the table and its lookup): `tokenfill ngrams`, and the training recipe's export.

What comes next is counted twice over: the code's own next token, and, on part of the code, the
token the model itself predicts there (`model_predictions`, its greedy choice with the code so
far as context). The second is what speculative decoding must guess, since verification accepts
only the model's own choice; the two tables are merged, the longer context winning and the
model's prediction on a tie (`merge`). Measured on block bodies (BENCHMARKS.md).

Only contexts seen `min_count` times whose top next token has at least `min_share` are kept, and
a context is dropped where the next shorter context kept already names the same token: the
lookup falls back to it and finds the same token. `reference_next` is the slow path `count` is
tested against: plain dictionaries of every n-gram, no hashing, no pruning.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenfill.speculative.ngram_table import (
    _MIX,
    _MULT,
    FILE,
    HASH_BITS,
    KEY_SHIFT,
    MAX_N,
    TOKEN_BITS,
    NGramTable,
    tokenizer_digest,
)

if TYPE_CHECKING:
    from tokenfill.runtime.model import Transformer


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


def merge(preferred: NGramTable, other: NGramTable, info: dict | None = None) -> NGramTable:
    """Both tables' contexts in one: a lookup takes the longest context either kept, and where
    both kept the same context, `preferred`'s token."""
    keys = np.concatenate([preferred.keys, other.keys])
    sort = np.argsort(keys, kind="stable")  # preferred's entry first among equal keys
    keys = keys[sort]
    first = np.r_[True, keys[1:] != keys[:-1]]
    pick = sort[first]
    wide = np.int32 if max(preferred.next.dtype.itemsize, other.next.dtype.itemsize) > 2 else np.uint16
    return NGramTable(keys[first],
               np.concatenate([preferred.next, other.next]).astype(wide)[pick],
               np.concatenate([preferred.share, other.share])[pick],
               np.concatenate([preferred.order, other.order])[pick],
               info if info is not None else dict(preferred.info))


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
    from tokenfill.train.corpus import read

    return read(path, "train")


def build_beside(directory: Path, texts: list[str], *, min_count: int = 3,
                 min_share: float = 0.4, predict: int = 0, source: str = "", seed: int = 0,
                 progress: bool = True) -> NGramTable:
    """Count `texts` in the tokens of the checkpoint in `directory` and keep the table there.

    `predict` > 0: the checkpoint's model also reads about that many tokens of the texts (whole
    files, drawn at random with `seed`), and what it predicts after each position is counted as
    well (`model_predictions`, under the same gates); where both say something of a context,
    the longer context wins, and the model's prediction on a tie (`merge`). The table
    then drafts what this model writes, not only what the code it read says next."""
    from tqdm import tqdm

    from tokenfill.runtime.tokenizer import Tokenizer

    directory = Path(directory)
    tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
    docs, chunk = [], 256
    for i in tqdm(range(0, len(texts), chunk), desc="tokenizing", unit="chunk",
                  disable=not progress):
        docs += [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(texts[i:i + chunk])]
    info = {"tokenizer": tokenizer_digest(directory / "tokenizer.json"), "source": source}
    table = count(docs, min_count=min_count, min_share=min_share, progress=progress,
                             info=info)
    if predict > 0:
        from tokenfill.runtime.checkpoint import load_model

        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        sample, total = [], 0
        for i in order:
            if total >= predict:
                break
            sample.append(docs[i])
            total += len(docs[i])
        predicted = count(
            sample, targets=model_predictions(load_model(directory), sample, progress=progress),
            min_count=min_count, min_share=min_share, progress=progress)
        info = dict(table.info, predicted={"tokens": total, "documents": len(sample),
                                           "contexts": len(predicted)})
        table = merge(predicted, table, info)
    table.save(directory / FILE)
    return table


def model_predictions(model: Transformer, docs: Sequence[np.ndarray], *, window: int = 512, batch: int = 16,
                      progress: bool = False) -> list[np.ndarray]:
    """For each document, the model's greedy next token after each of its positions, read in
    windows of `window` tokens (each window sees only itself), `batch` windows per pass, on the
    GPU where there is one."""
    import torch
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    window = min(window, model.config.max_position_embeddings)
    spans = [(d, s) for d, doc in enumerate(docs) for s in range(0, len(doc), window)]
    spans.sort(key=lambda span: -min(window, len(docs[span[0]]) - span[1]))  # little padding
    out = [np.zeros(len(doc), dtype=np.int32) for doc in docs]
    with torch.inference_mode(), tqdm(total=sum(map(len, docs)), desc="model predictions",
                                      unit="token", unit_scale=True, disable=not progress) as bar:
        for i in range(0, len(spans), batch):
            group = spans[i:i + batch]
            width = min(window, len(docs[group[0][0]]) - group[0][1])
            x = torch.zeros(len(group), width, dtype=torch.long)
            for row, (d, s) in enumerate(group):
                part = docs[d][s:s + width]
                x[row, :len(part)] = torch.from_numpy(np.asarray(part, dtype=np.int64))
            best = model(x.to(device)).argmax(-1).cpu().numpy()  # padding comes after: unseen
            for row, (d, s) in enumerate(group):
                n = min(width, len(docs[d]) - s)
                out[d][s:s + n] = best[row, :n]
                bar.update(n)
    return out


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


def reference_next(docs: Sequence[Sequence[int]], tail: Sequence[int], min_count: int = 3,
                   min_share: float = 0.4,
                   targets: Sequence[Sequence[int]] | None = None) -> int | None:
    """The token `NGramTable.lookup` names after `tail`, from every n-gram counted in plain
    dictionaries: the longest context of `tail` that clears the gates, its most frequent next
    token (ties to the smallest id); with `targets`, `targets[d][i]` counts as what follows the
    runs ending at position i of document d (where the document goes on after i)."""
    counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for d, doc in enumerate(docs):
        for i in range(1, len(doc)):
            follow = doc[i] if targets is None else targets[d][i - 1]
            for n in range(1, min(MAX_N, i) + 1):
                counts[tuple(doc[i - n:i])][follow] += 1
    for n in range(min(MAX_N, len(tail)), 0, -1):
        row = counts.get(tuple(tail[len(tail) - n:]))
        if not row:
            continue
        token, count = min(row.items(), key=lambda kv: (-kv[1], kv[0]))
        if sum(row.values()) >= min_count and count / sum(row.values()) >= min_share:
            return token
    return None
