"""Sampling, prefill and the decode loop. Token ids in, token ids out.

`generate` reads top to bottom: prefill the prompt into the KV cache, then sample a token, ask
the caller's stop rule whether to go on, and decode one more step. Text-level rules (line ends,
indentation) live in the caller's `should_stop`, which sees each new token id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from tokenfill.runtime.hardware import use_threads_for
from tokenfill.runtime.model import KVCache, Transformer


class Constraint(Protocol):
    """Limits the next token: `allowed()` masks the ids it may take (None: any); `advance` sees
    the choice. One may also weigh the tokens instead: `bias()`, if it has it, gives (vocab,)
    log-space amounts added to the logits (None: none now)."""

    def allowed(self) -> Tensor | None: ...

    def advance(self, token: int) -> None: ...


MIN_TEMPERATURE = 1e-3  # below it logits / temperature overflow: 0 is greedy
MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63 - 1     # torch's generators take a signed 64-bit seed


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0   # 0: greedy
    top_p: float = 1.0         # nucleus: smallest set of tokens with this much probability
    top_k: int = 0             # 0: no limit
    min_p: float = 0.0         # drop tokens below min_p times the most likely one's probability
    seed: int | None = None

    def __post_init__(self) -> None:
        # written so that NaN fails every check: a comparison with NaN is false
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE} to "
                             f"{MAX_TEMPERATURE}")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not self.top_k >= 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to {MAX_SEED}")

    def generator(self) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else torch.seed())
        return g


def sample(logits: Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token id from logits (vocab,): argmax when greedy, else temperature, top-k, min-p, top-p."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(probabilities(logits, sampling), 1, generator=generator))


def probabilities(logits: Tensor, sampling: Sampling) -> Tensor:
    """The distribution (vocab,) that sampling draws from: temperature, top-k, min-p, top-p."""
    logits = logits.float() / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = logits.topk(sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.min_p > 0:
        probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        outside[0] = False  # the likeliest token stays, however small top_p is
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return probs / probs.sum()


def restrict(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Logits with the ids outside the bool mask `allowed` at -inf (unchanged if none is left)."""
    if allowed is None:
        return logits
    keep = torch.zeros(logits.numel(), dtype=torch.bool)
    n = min(allowed.numel(), logits.numel())
    keep[:n] = allowed[:n]
    kept = logits.masked_fill(~keep, float("-inf"))
    return kept if bool(torch.isfinite(kept).any()) else logits


def forward(model: Transformer, tokens: Tensor, start: int, cache: KVCache, **options) -> Tensor:
    """A cached inference pass on the threads its size calls for (hardware.py): small passes on
    one thread, long prompts on all of them. `options` go to `Transformer.forward`."""
    use_threads_for(tokens.numel())
    return model(tokens, start, cache, **options)


def prefill(model: Transformer, cache: KVCache, ids: list[int], start: int = 0) -> Tensor:
    """Run `ids` into the cache at [start, start+len(ids)); logits (vocab,) after the last one."""
    return forward(model, torch.tensor([ids]), start, cache, keep=1)[0, -1]


def decode_one(model: Transformer, cache: KVCache, token: int, pos: int) -> Tensor:
    return forward(model, torch.tensor([[token]]), pos, cache)[0, -1]


def choose(logits: Tensor, sampling: Sampling, generator: torch.Generator | None,
           vocab_limit: int | None, constraints: Sequence[Constraint],
           argmax: int | None = None,
           observe: Callable[[Tensor, int], None] | None = None) -> int:
    """The next token from logits (vocab,) within the constraints, which then see it. `argmax`:
    the greedy choice without constraints, where the caller has it (`greedy_rows`). `observe`
    gets the model's logits (before any constraint) and the token chosen."""
    logits = raw = logits[:vocab_limit]
    masks = [constraint.allowed() for constraint in constraints]
    biases = [b for constraint in constraints
              if (b := getattr(constraint, "bias", _no_bias)()) is not None]
    if biases:  # the model's distribution times a prior: its argmax is no longer the model's
        logits = logits.float().clone()
        for b in biases:
            n = min(b.numel(), logits.numel())
            logits[:n] += b[:n]
        argmax = None
    # Greedy: an argmax that every constraint allows is the restricted logits' argmax as well,
    # so the masks are applied only when it is not.
    token = -1
    if sampling.temperature == 0:
        token = int(logits.argmax()) if argmax is None else argmax
    if token < 0 or not all(m is None or (token < m.numel() and bool(m[token])) for m in masks):
        for mask in masks:
            logits = restrict(logits, mask)
        token = sample(logits, sampling, generator)
    for constraint in constraints:
        constraint.advance(token)
    if observe is not None:
        observe(raw, token)
    return token


def _no_bias() -> None:
    return None


def greedy_rows(logits: Tensor, vocab_limit: int | None) -> list[int]:
    """The token `choose` picks greedily without constraints, for each row of logits (T, vocab)
    at once: the first of the largest (numpy's argmax: 6 us for 12 rows of 4,096, against
    70 us for torch's along the rows, 9 us for torch's over one row)."""
    return logits[:, :vocab_limit].numpy().argmax(-1).tolist()


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"      # "stop" (end token or stop rule) or "length"
    prompt_evaluated: int = 0          # prompt tokens run through the model (the rest were cached)
    cache_valid: int = 0               # cache positions holding (prompt + tokens)[:cache_valid]
    prefill_s: float = 0.0
    decode_s: float = 0.0
    forwards: int = 0                  # decoding passes through the model
    drafted: int = 0                   # speculative: draft tokens verified
    accepted: int = 0                  # speculative: draft tokens accepted
    by_drafter: dict[str, list[int]] = field(default_factory=dict)  # name: [drafted, accepted]


def start(model: Transformer, prompt: list[int], out: Generation, cache: KVCache, cached: int,
          logits: Tensor | None) -> Tensor:
    """Run what the cache lacks of the prompt (unless the caller did: `logits`); the logits after
    it. Records the prompt's share of the work in `out`."""
    t0 = time.perf_counter()
    if logits is None:
        cached = min(cached, len(prompt) - 1)  # the last prompt token is run: its logits are needed
        logits = prefill(model, cache, prompt[cached:], cached)
        out.prompt_evaluated = len(prompt) - cached
    out.cache_valid = len(prompt)
    out.prefill_s = time.perf_counter() - t0
    return logits


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *,
             end_ids: frozenset[int] = frozenset(), sampling: Sampling = Sampling(),
             should_stop: Callable[[int], bool] | None = None,
             cache: KVCache | None = None, cached: int = 0,
             vocab_limit: int | None = None, logits: Tensor | None = None,
             constraints: Sequence[Constraint] = (),
             generator: torch.Generator | None = None,
             observe: Callable[[Tensor, int], None] | None = None) -> Generation:
    """Generate up to `max_new_tokens` after `prompt`.

    Stops at a token in `end_ids` (not included in the output) or when `should_stop(token)` says
    so after that token was appended. With `cache`, its first `cached` positions must already hold
    `prompt[:cached]` (KV reuse): only the rest of the prompt is run; a caller that has run all of
    it passes the `logits` after it instead. Ids >= `vocab_limit` are never sampled (checkpoints
    often pad the embedding past the tokenizer's vocabulary). `constraints` limit the tokens to
    the ids they all allow (one that would leave none is set aside for that step). `observe`
    sees each pick's logits and token (completion/confidence.py scores a completion by them).
    """
    out = Generation()
    if cache is None:
        cache, cached = model.new_cache(1, len(prompt) + max_new_tokens), 0
    logits = start(model, prompt, out, cache, cached, logits)
    generator = generator if generator is not None else sampling.generator()
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        token = choose(logits, sampling, generator, vocab_limit, constraints, observe=observe)
        if token in end_ids:
            out.finish_reason = "stop"
            break
        out.tokens.append(token)
        if should_stop is not None and should_stop(token):
            out.finish_reason = "stop"
            break
        if i + 1 < max_new_tokens:
            logits = decode_one(model, cache, token, len(prompt) + i)
            out.cache_valid += 1
            out.forwards += 1
    out.decode_s = time.perf_counter() - t0
    return out
