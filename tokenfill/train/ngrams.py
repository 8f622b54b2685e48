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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenfill.speculative.ngram_table import (  # noqa: F401 - count is used from here too
    FILE,
    MAX_N,
    NGramTable,
    context_hashes,
    count,
    tokenizer_digest,
)

if TYPE_CHECKING:
    from tokenfill.runtime.model import Transformer


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
