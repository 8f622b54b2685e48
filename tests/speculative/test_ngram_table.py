"""The corpus drafter's table: a lookup takes the longest context kept (counting it is
train/ngrams.py's, tested in tests/train/test_ngrams.py)."""

from __future__ import annotations

import numpy as np

from tokenfill.speculative.ngram_table import KEY_SHIFT, NGramTable, tail_hashes


def table_of(entries: dict[tuple[int, ...], int]) -> NGramTable:
    """A table holding exactly `entries` (context -> next token), share 1."""
    keys = {tail_hashes(context)[len(context) - 1] >> KEY_SHIFT: (token, len(context))
            for context, token in entries.items()}
    order = sorted(keys)
    return NGramTable(np.array(order, dtype=np.uint32),
                      np.array([keys[k][0] for k in order], dtype=np.uint16),
                      np.full(len(order), 255, dtype=np.uint8),
                      np.array([keys[k][1] for k in order], dtype=np.uint8))


def test_lookup_takes_the_longest_context_kept():
    table = table_of({(5,): 1, (4, 5): 2, (9, 4, 5): 3})
    assert table.lookup([7, 9, 4, 5]) == (3, 1.0, 3)
    assert table.lookup([8, 4, 5]) == (2, 1.0, 2)
    assert table.lookup([6, 5]) == (1, 1.0, 1)
    assert table.lookup([6]) is None and table.lookup([]) is None


def test_sizes_and_orders():
    table = table_of({(5,): 1, (4, 5): 2})
    assert len(table) == 2 and table.nbytes() == 2 * (4 + 2 + 1 + 1)
    assert table.by_order()[1] == 1 and table.by_order()[2] == 1
