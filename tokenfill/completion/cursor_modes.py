"""How a prefix that ends inside a token is handled: the cursor modes, by name (cursor.py has the
methods behind them).

A mode answers three questions of the engine:
- `reserve`: how many cache positions past the prompt it needs beyond the generated tokens;
- `cut`: the prefix's ids, and the bytes the middle must start with (what it took back);
- `begin`: the first logits, from the prompt in the cache (and, for `exact`, from the partial
  word's bytes, generated one at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenfill.completion import cursor
from tokenfill.runtime.generate import Sampling, prefill
from tokenfill.runtime.model import KVCache, Transformer
from tokenfill.runtime.tokenizer import Tokenizer


@dataclass
class Begun:
    """Where the prompt phase left decoding."""
    logits: Tensor | None                 # after the prompt and `path`; None when `ended`
    path: tuple[int, ...] = ()            # tokens laid in the cache after the prompt
    need: bytes = b""                     # bytes the next tokens must spell first
    stepped: int = 0                      # bytes generated one at a time
    passes: int = 0                       # forward passes that took (the first ran the prompt)
    ended: bool = False                   # the middle is over already
    prefill_ms: float = 0.0
    cursor_ms: float = 0.0


class Plain:
    """`none`: the prefix is encoded as it is."""
    name = "none"

    def reserve(self, tokenizer: Tokenizer, prefix: str, limit: int) -> int:
        return 0

    def cut(self, tokenizer: Tokenizer, prefix: str, encode: Callable[[str], list[int]]
            ) -> tuple[list[int], bytes]:
        return encode(prefix), b""

    def begin(self, model: Transformer, tokenizer: Tokenizer, cache: KVCache, prompt: list[int],
              cached: int, forced: bytes, *, sampling: Sampling,
              generator: torch.Generator | None, on_bytes: Callable[[bytes], bool],
              end_ids: frozenset[int], max_tokens: int) -> Begun:
        t0 = time.perf_counter()
        logits = prefill(model, cache, prompt[cached:], cached)
        return Begun(logits, need=forced, prefill_ms=(time.perf_counter() - t0) * 1000)


class Heal(Plain):
    """`heal`: token healing; the prefix's last tokens are taken back and spelled again."""
    name = "heal"

    def cut(self, tokenizer: Tokenizer, prefix: str, encode: Callable[[str], list[int]]
            ) -> tuple[list[int], bytes]:
        ids = encode(prefix)
        if not ids:
            return ids, b""
        k = cursor.heal_rollback(tokenizer, ids)
        return ids[:len(ids) - k], tokenizer.decode_bytes(ids[len(ids) - k:])


class Exact(Plain):
    """`exact`: the partial word's bytes are generated from the exact next-byte distribution."""
    name = "exact"

    def reserve(self, tokenizer: Tokenizer, prefix: str, limit: int) -> int:
        partial = cursor.split_partial(tokenizer, prefix)[1].encode()
        return cursor.room(tokenizer, partial, min(cursor.MAX_BYTES, limit))

    def cut(self, tokenizer: Tokenizer, prefix: str, encode: Callable[[str], list[int]]
            ) -> tuple[list[int], bytes]:
        head, partial = cursor.split_partial(tokenizer, prefix)
        return encode(head), partial.encode()

    def begin(self, model: Transformer, tokenizer: Tokenizer, cache: KVCache, prompt: list[int],
              cached: int, forced: bytes, *, sampling: Sampling,
              generator: torch.Generator | None, on_bytes: Callable[[bytes], bool],
              end_ids: frozenset[int], max_tokens: int) -> Begun:
        if not forced or max_tokens <= 0:
            return super().begin(model, tokenizer, cache, prompt, cached, forced,
                                 sampling=sampling, generator=generator, on_bytes=on_bytes,
                                 end_ids=end_ids, max_tokens=max_tokens)
        t0 = time.perf_counter()
        scorer = cursor.ModelScorer(model, cache, prompt, cached, len(tokenizer.token_bytes))
        start = cursor.ExactCursor(tokenizer, scorer, forced, end_ids).run(
            sampling, generator, on_bytes, max_bytes=min(cursor.MAX_BYTES, max_tokens))
        logits = None if start.ended else scorer.lay(start.seq)
        return Begun(logits, path=() if start.ended else start.seq, need=start.need,
                     stepped=len(start.text), passes=scorer.passes, ended=start.ended,
                     cursor_ms=(time.perf_counter() - t0) * 1000)


CURSOR_MODES: dict[str, Plain] = {mode.name: mode for mode in (Exact(), Heal(), Plain())}
