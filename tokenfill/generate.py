"""Sampling, prefill and the decode loop. Token ids in, token ids out.

`generate` reads top to bottom: prefill the prompt into the KV cache, then sample a token, ask
the caller's stop rule whether to go on, and decode one more step. Text-level rules (line ends,
indentation) live in the caller's `should_stop`, which sees each new token id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .model import KVCache, Transformer


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0   # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def generator(self) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else torch.seed())
        return g


def sample(logits: Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token id from logits (vocab,): argmax when greedy, else temperature + nucleus sampling."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # keeps at least one
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def prefill(model: Transformer, cache: KVCache, ids: list[int], start: int = 0) -> Tensor:
    """Run `ids` into the cache at [start, start+len(ids)); logits (vocab,) after the last one."""
    return model(torch.tensor([ids]), start, cache)[0, -1]


def decode_one(model: Transformer, cache: KVCache, token: int, pos: int) -> Tensor:
    return model(torch.tensor([[token]]), pos, cache)[0, -1]


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"      # "stop" (end token or stop rule) or "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *,
             end_ids: frozenset[int] = frozenset(), sampling: Sampling = Sampling(),
             should_stop: Callable[[int], bool] | None = None,
             cache: KVCache | None = None) -> Generation:
    """Generate up to `max_new_tokens` after `prompt`.

    Stops at a token in `end_ids` (not included in the output) or when `should_stop(token)` says
    so after that token was appended.
    """
    out = Generation()
    if cache is None:
        cache = model.new_cache(1, len(prompt) + max_new_tokens)
    t0 = time.perf_counter()
    logits = prefill(model, cache, prompt)
    out.prefill_s = time.perf_counter() - t0
    generator = sampling.generator()
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        token = sample(logits, sampling, generator)
        if token in end_ids:
            out.finish_reason = "stop"
            break
        out.tokens.append(token)
        if should_stop is not None and should_stop(token):
            out.finish_reason = "stop"
            break
        if i + 1 < max_new_tokens:
            logits = decode_one(model, cache, token, len(prompt) + i)
    out.decode_s = time.perf_counter() - t0
    return out
