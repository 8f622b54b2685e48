"""`python -m benchmarks tokenizer --corpus CORPUS`: the BPE vocabulary size, by measurement.

A byte-level BPE (runtime/tokenizer.py, the recipe's) is trained at each size on the same sample
of a built corpus's training files (every `every`-th file), then each encodes text it never saw:
the held-out packages' files (realcode.py) and the corpus's held-out split. Reported: characters
per token on each (more is better: fewer tokens to run per completion and per prompt) and the
training time. A larger vocabulary also grows the output layer, which every decoding step runs:
`python -m benchmarks sizing --vocab N` times a model shape with each.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import header
from tokenfill.eval import realcode
from tokenfill.runtime.tokenizer import train_bpe
from tokenfill.train import corpus

SIZES = (8192, 16384, 24576, 32768)


def chars_per_token(tok, texts: list[str]) -> float:
    tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return sum(map(len, texts)) / max(tokens, 1)


def run(corpus_path: Path, sizes: tuple[int, ...] = SIZES, every: int = 4,
        progress: bool = True) -> str:
    docs = list(corpus.documents(corpus_path))
    sample = [d["text"] for i, d in enumerate(docs) if d["split"] == "train" and i % every == 0]
    heldout_split = [d["text"] for d in docs if d["split"] == "heldout"]
    unseen = [text for _, text in realcode.files()]
    rows = []
    for size in sizes:
        start = time.perf_counter()
        tok = train_bpe(sample, size, progress=progress)
        seconds = time.perf_counter() - start
        rows.append((size, chars_per_token(tok, unseen), chars_per_token(tok, heldout_split),
                     seconds))
    lines = [header(f"python -m benchmarks tokenizer --corpus {corpus_path}"),
             f"trained on every {every}th training file of the corpus ({len(sample):,} files, "
             f"{sum(map(len, sample)) / 1e6:.0f}M characters); encoded: the held-out packages "
             f"({len(unseen):,} files) and the corpus's held-out split ({len(heldout_split):,} "
             "files).", "",
             "| vocabulary | chars/token, held-out packages | chars/token, held-out split | "
             "training s |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {size:,} | {unseen_cpt:.2f} | {split_cpt:.2f} | {seconds:.0f} |"
              for size, unseen_cpt, split_cpt, seconds in rows]
    return "\n".join(lines)
