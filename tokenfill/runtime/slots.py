"""KV cache slots for reuse across requests while a person types.

Consecutive requests share almost all of their prompt. Each slot keeps a KV cache and the ids it
holds; a request takes the slot with the longest common token prefix (or the least recently used
one) and only the tokens after that prefix are run. Not thread-safe: the one model worker owns it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tokenfill.runtime.model import KVCache, Transformer


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Slot:
    cache: KVCache
    ids: list[int] = field(default_factory=list)   # what positions [0, len(ids)) of the cache hold
    last_used: float = 0.0


@dataclass
class SlotStats:
    requests: int = 0
    hits: int = 0              # requests that reused at least one cached token
    prompt_tokens: int = 0
    evaluated_tokens: int = 0  # prompt tokens run through the model (the rest came from a slot)


class SlotPool:
    def __init__(self, model: Transformer, n_slots: int, max_seq: int):
        assert n_slots >= 1
        self.slots = [Slot(model.new_cache(1, max_seq)) for _ in range(n_slots)]
        self.stats = SlotStats()

    def acquire(self, prompt: list[int], reuse: bool = True) -> tuple[Slot, int]:
        """The slot to run `prompt` in and how many of its leading tokens that slot already holds."""
        best, best_len = None, 0
        if reuse:
            for slot in self.slots:
                n = common_prefix(slot.ids, prompt)
                if n > best_len:
                    best, best_len = slot, n
        if best is None:
            best = min(self.slots, key=lambda s: s.last_used)
        best.last_used = time.monotonic()
        best.ids = best.ids[:best_len]  # positions past the shared prefix are about to be overwritten
        self.stats.requests += 1
        self.stats.hits += best_len > 0
        self.stats.prompt_tokens += len(prompt)
        self.stats.evaluated_tokens += len(prompt) - min(best_len, len(prompt) - 1)
        return best, best_len
