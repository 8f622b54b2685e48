"""Completions at a cursor: text before and after it in, the text to insert out.

The Engine joins the layers: the FIM format builds the prompt in ids, the context is fitted to the
model's window (prefix favoured, cut at line boundaries), `generate` runs on ids, and the stop rule
watches each new token. The engine holds one model; it is not thread-safe (a server serialises
calls to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fim
from .checkpoint import load_model
from .generate import Sampling, generate
from .hardware import resolve_dtype
from .model import Transformer
from .stops import LineStop
from .tokenizer import Tokenizer


@dataclass
class Completion:
    text: str                  # to insert at the cursor
    tokens: int                # tokens generated (some may lie past the cut)
    finish_reason: str         # "stop" or "length"
    prompt_tokens: int
    prefill_ms: float
    decode_ms: float
    total_ms: float


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, name: str = "model"):
        self.model = model
        self.tokenizer = tokenizer
        self.fim = fim.detect(tokenizer)  # refuses checkpoints without FIM tokens
        self.context = model.config.max_position_embeddings
        self.name = name

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "auto") -> Engine:
        directory = Path(directory)
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        fim.detect(tokenizer)  # before the weights: fail fast on a checkpoint without FIM tokens
        model = load_model(directory, resolve_dtype(dtype))
        return cls(model, tokenizer, name=directory.name)

    def prompt_ids(self, prefix: str, suffix: str, max_tokens: int) -> list[int]:
        """The FIM prompt, with prefix and suffix cut to leave room for `max_tokens`."""
        budget = self.context - max_tokens - self.fim.overhead
        if budget < 0:
            raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in the model's "
                             f"{self.context}-token context")
        count = lambda text: len(self.tokenizer.encode(text))  # noqa: E731
        prefix, suffix = fim.fit_context(prefix, suffix, count, budget)
        return self.fim.prompt(self.tokenizer.encode(prefix), self.tokenizer.encode(suffix))

    def complete(self, prefix: str, suffix: str = "", *, max_tokens: int = 64,
                 sampling: Sampling = Sampling()) -> Completion:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        start = time.perf_counter()
        max_tokens = min(max_tokens, self.context // 2)
        prompt = self.prompt_ids(prefix, suffix, max_tokens)
        stop = LineStop(self.tokenizer, prefix, suffix)
        with torch.inference_mode():
            gen = generate(self.model, prompt, max_tokens, end_ids=self.fim.stops,
                           sampling=sampling, should_stop=stop)
        return Completion(text=stop.text(), tokens=len(gen.tokens), finish_reason=gen.finish_reason,
                          prompt_tokens=len(prompt), prefill_ms=gen.prefill_s * 1000,
                          decode_ms=gen.decode_s * 1000,
                          total_ms=(time.perf_counter() - start) * 1000)
