"""Completions at a cursor: text before and after it in, the text to insert out.

The Engine joins the layers: the FIM format builds the prompt in ids, the context is fitted to the
model's window (prefix favoured, cut at line boundaries), `generate` runs on ids, and the stop rule
watches each new token. The engine holds one model; it is not thread-safe (a server serialises
calls to it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fim
from .checkpoint import load_model
from .generate import Sampling, generate
from .hardware import resolve_dtype
from .model import Transformer
from .slots import SlotPool
from .stops import StopRule
from .tokenizer import Tokenizer


@dataclass
class Completion:
    text: str                  # to insert at the cursor
    tokens: int                # tokens generated (some may lie past the cut)
    finish_reason: str         # "stop", "length", "time" (budget spent) or "aborted"
    prompt_tokens: int
    prompt_evaluated: int      # prompt tokens run through the model; the rest came from a KV slot
    prefill_ms: float
    decode_ms: float
    total_ms: float
    stop_string: str = ""      # the stop string that ended it, if one did


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, name: str = "model",
                 require_fim: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        try:
            self.fim: fim.FimTokens | None = fim.detect(tokenizer)
        except fim.FimUnsupportedError:
            if require_fim:
                raise
            self.fim = None  # plain left-to-right completion only; a suffix is refused
        self.context = model.config.max_position_embeddings
        self.name = name

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "auto", require_fim: bool = True) -> Engine:
        directory = Path(directory)
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        if require_fim:
            fim.detect(tokenizer)  # before the weights: fail fast on a checkpoint without FIM tokens
        model = load_model(directory, resolve_dtype(dtype))
        return cls(model, tokenizer, name=directory.name, require_fim=require_fim)

    @property
    def end_ids(self) -> frozenset[int]:
        if self.fim is not None:
            return self.fim.stops
        eos = self.tokenizer.token_id("<|endoftext|>") or self.tokenizer.token_id("</s>")
        return frozenset() if eos is None else frozenset({eos})

    def prompt_ids(self, prefix: str, suffix: str, max_tokens: int,
                   extra: tuple[tuple[str, str], ...] = ()) -> list[int]:
        """The FIM prompt, with prefix and suffix cut to leave room for `max_tokens`.

        `extra` is context from other files, (filename, text) pairs: it goes before the prefix as
        plain text, each chunk headed by a `# filename` comment, and is the first text cut.
        """
        if self.fim is None and suffix:
            raise fim.FimUnsupportedError("this model has no fill-in-the-middle tokens, so it "
                                          "cannot use the text after the cursor (suffix)")
        budget = self.context - max_tokens - (self.fim.overhead if self.fim else 0)
        if budget < 0:
            raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in the model's "
                             f"{self.context}-token context")
        head = "".join(f"# {name}\n{text.rstrip()}\n\n" for name, text in extra)
        count = lambda text: len(self.tokenizer.encode(text))  # noqa: E731
        prefix, suffix = fim.fit_context(head + prefix, suffix, count, budget)
        if self.fim is None:  # a left-to-right prompt; an empty one starts at an end-of-text token
            return self.tokenizer.encode(prefix) or sorted(self.end_ids)[:1] or [0]
        return self.fim.prompt(self.tokenizer.encode(prefix), self.tokenizer.encode(suffix))

    def complete(self, prefix: str, suffix: str = "", *, max_tokens: int = 64,
                 sampling: Sampling = Sampling(), stop: tuple[str, ...] = (), n_indent: int = 0,
                 single_line: bool = False, extra: tuple[tuple[str, str], ...] = (),
                 time_budget_ms: float | None = None, slots: SlotPool | None = None,
                 reuse: bool = True, abort: Callable[[], bool] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """The completion at the cursor between `prefix` and `suffix`.

        With `slots`, the prompt runs in a KV cache slot, reusing the longest cached prefix unless
        `reuse` is off; `max_tokens=0` then only fills a slot (a warm-up). `abort` is polled after
        every token; `on_text` receives the text as it becomes final, in pieces whose
        concatenation is the completion.
        """
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        start = time.perf_counter()
        max_tokens = min(max_tokens, self.context // 2)
        prompt = self.prompt_ids(prefix, suffix, max_tokens, extra)
        rule = StopRule(self.tokenizer, prefix, suffix, stop_strings=stop, n_indent=n_indent,
                        single_line=single_line)
        deadline = start + time_budget_ms / 1000 if time_budget_ms else None
        reason, sent = None, ""

        def should_stop(token: int) -> bool:
            nonlocal reason, sent
            if rule(token):
                return True
            if on_text is not None:
                committed = rule.committed()
                if len(committed) > len(sent):
                    on_text(committed[len(sent):])
                    sent = committed
            if abort is not None and abort():
                reason = "aborted"
            elif deadline is not None and time.perf_counter() > deadline:
                reason = "time"
            return reason is not None

        slot, cached = slots.acquire(prompt, reuse) if slots is not None else (None, 0)
        with torch.inference_mode():
            gen = generate(self.model, prompt, max_tokens, end_ids=self.end_ids,
                           sampling=sampling, should_stop=should_stop,
                           cache=slot.cache if slot else None, cached=cached,
                           vocab_limit=len(self.tokenizer.token_bytes))
        if slot is not None:
            slot.ids = (prompt + gen.tokens)[:gen.cache_valid]
        text = rule.text()
        if on_text is not None and len(text) > len(sent):
            on_text(text[len(sent):])
        return Completion(text=text, tokens=len(gen.tokens), finish_reason=reason or gen.finish_reason,
                          prompt_tokens=len(prompt), prompt_evaluated=gen.prompt_evaluated,
                          prefill_ms=gen.prefill_s * 1000, decode_ms=gen.decode_s * 1000,
                          total_ms=(time.perf_counter() - start) * 1000, stop_string=rule.matched)
