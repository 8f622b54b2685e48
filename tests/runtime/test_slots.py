from __future__ import annotations

from tokenfill.runtime.slots import SlotPool, common_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_acquire_prefers_longest_prefix_then_least_recent(tiny_model):
    pool = SlotPool(tiny_model, n_slots=2, max_seq=32)
    s1, n = pool.acquire([1, 2, 3])
    assert n == 0
    s1.ids = [1, 2, 3]
    s2, n = pool.acquire([7, 8])
    assert s2 is not s1 and n == 0          # least recently used slot
    s2.ids = [7, 8]
    again, n = pool.acquire([1, 2, 3, 4])
    assert again is s1 and n == 3
    assert again.ids == [1, 2, 3]
    off, n = pool.acquire([1, 2, 3, 4], reuse=False)
    assert n == 0 and off.ids == []
    assert pool.stats.requests == 4 and pool.stats.hits == 1
    assert pool.stats.prompt_tokens == 3 + 2 + 4 + 4 and pool.stats.evaluated_tokens == 3 + 2 + 1 + 4
