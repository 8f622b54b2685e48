"""Retrieval as drafts (REST, RASD): what the workspace's code most often has next after the last
few tokens, for speculative decoding's `workspace` drafter.

The table is the corpus drafter's kind (speculative/ngram_table.py), counted over the indexed
files' chunks in the model's tokens; contexts seen twice whose top token has at least 30% are
kept (a workspace is small: the corpus table's gates would keep little). Drafts stay lossless:
verification keeps only what the model itself picks.
"""

from __future__ import annotations

import time

from tokenfill.context.index import WorkspaceIndex
from tokenfill.runtime.tokenizer import Tokenizer
from tokenfill.speculative import ngram_table
from tokenfill.speculative.ngram_table import NGramTable

MIN_COUNT, MIN_SHARE = 2, 0.3
MAX_TOKENS = 500_000  # a workspace larger than this is counted in part (~250 B a token at the peak)


def workspace_table(index: WorkspaceIndex, tokenizer: Tokenizer) -> tuple[NGramTable, dict]:
    """The workspace's n-gram table, and what building it took (files, tokens, seconds)."""
    start = time.perf_counter()
    by_file: dict[str, list[str]] = {}
    for path, text in index.db.execute("SELECT path, text FROM chunks ORDER BY path, start_line"):
        by_file.setdefault(path, []).append(text)
    docs, size = [], 0
    for chunks in by_file.values():
        ids = tokenizer.encode("\n\n".join(chunks))
        docs.append(ids)
        size += len(ids)
        if size >= MAX_TOKENS:
            break
    table = ngram_table.count(docs, min_count=MIN_COUNT, min_share=MIN_SHARE)
    return table, {"files": len(docs), "tokens": size, "seconds": time.perf_counter() - start}
