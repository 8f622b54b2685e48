"""Completions at a cursor: text before and after it in, the text to insert out.

The Engine joins the layers: the FIM format builds the prompt in ids, the context is fitted to the
model's window (prefix favoured, cut at line boundaries), `generate` runs on ids, and the stop rule
watches each new token. The engine holds one model; it is not thread-safe (a server serialises
calls to it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import corpus_ngrams, cursor, fim, utf8
from .checkpoint import fim_layout, load_model
from .corpus_ngrams import NGramTable
from .generate import Generation, Sampling, generate, prefill
from .hardware import resolve_dtype
from .model import Transformer
from .slots import SlotPool
from .speculative import Speculator
from .monitor import MemberConstraint, Monitor
from .stops import StopRule
from .syntax import analyze, decide
from .tokenizer import Tokenizer

ENCODED_TEXTS = 256  # texts whose encodings an engine keeps for the requests that follow


@dataclass
class Completion:
    text: str                  # to insert at the cursor
    tokens: int                # decode steps: tokens, and bytes generated one at a time (exact)
    finish_reason: str         # "stop", "length", "time" (budget spent) or "aborted"
    prompt_tokens: int
    prompt_evaluated: int      # prompt tokens run through the model; the rest came from a KV slot
    prefill_ms: float
    decode_ms: float
    total_ms: float
    stop_string: str = ""      # the stop string that ended it, if one did
    cursor_ms: float = 0.0     # exact: the prompt and the partial word's bytes, one at a time
    cursor_passes: int = 0     # exact: forward passes that took (the first runs the prompt too)
    forwards: int = 0          # decoding passes (speculative: one per draft tree)
    drafted: int = 0           # speculative: draft tokens verified
    accepted: int = 0          # speculative: draft tokens accepted
    by_drafter: dict[str, list[int]] | None = None  # speculative: name -> [drafted, accepted]
    mode: str = ""             # syntax: "line" or "block" (empty with syntax off)
    skipped: str = ""          # syntax: why no completion was made here, when none was
    members: int = 0           # syntax: the attribute names decoding was held to after `name.`

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per decoding pass (each pass also yields one of its own)."""
        return self.accepted / self.forwards if self.forwards else 0.0


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, name: str = "model",
                 require_fim: bool = True, fim_layout: str = "psm",
                 ngrams: NGramTable | None = None):
        self.model = model
        self.tokenizer = tokenizer
        try:
            self.fim: fim.FimTokens | None = fim.detect(tokenizer, fim_layout)
        except fim.FimUnsupportedError:
            if require_fim:
                raise
            self.fim = None  # plain left-to-right completion only; a suffix is refused
        self.context = model.config.max_position_embeddings
        self.name = name
        self.ngrams = ngrams  # the corpus drafter's table (corpus_ngrams.py), if the model has one
        self.speculator = Speculator(len(tokenizer.token_bytes), ngrams=ngrams)  # outlives requests
        self.monitor = Monitor()  # attribute names after `name.`, cached per document
        # texts fitting the context encoded lately: while a person types, the suffix and its
        # windows come back request after request
        self.encoded: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "auto", require_fim: bool = True) -> Engine:
        directory = Path(directory)
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        if require_fim:
            fim.detect(tokenizer)  # before the weights: fail fast on a checkpoint without FIM tokens
        model = load_model(directory, resolve_dtype(dtype))
        return cls(model, tokenizer, name=directory.name, require_fim=require_fim,
                   fim_layout=fim_layout(directory), ngrams=corpus_ngrams.beside(directory))

    @property
    def end_ids(self) -> frozenset[int]:
        if self.fim is not None:
            return self.fim.stops
        eos = self.tokenizer.token_id("<|endoftext|>") or self.tokenizer.token_id("</s>")
        return frozenset() if eos is None else frozenset({eos})

    def prompt_ids(self, prefix: str, suffix: str, max_tokens: int,
                   extra: tuple[tuple[str, str], ...] = (), cursor_mode: str = "none",
                   ) -> tuple[list[int], bytes]:
        """The FIM prompt, with prefix and suffix cut to leave room for `max_tokens`, and the bytes
        the middle must start with: what `cursor_mode` took back from the end of the prefix (the
        partial word for `exact`, the healed tokens' text for `heal`, nothing for `none`).

        `extra` is context from other files, (filename, text) pairs: it goes before the prefix as
        plain text, each chunk headed by a `# filename` comment, and is the first text cut.
        """
        cursor.check_mode(cursor_mode)
        if self.fim is None and suffix:
            raise fim.FimUnsupportedError("this model has no fill-in-the-middle tokens, so it "
                                          "cannot use the text after the cursor (suffix)")
        reserve = 0
        if cursor_mode == "exact":  # room for the paths through the partial word
            partial = cursor.split_partial(self.tokenizer, prefix)[1].encode()
            reserve = cursor.room(self.tokenizer, partial, min(cursor.MAX_BYTES, self.context // 8))
        budget = self.context - max_tokens - reserve - (self.fim.overhead if self.fim else 0)
        if budget < 0:
            raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in the model's "
                             f"{self.context}-token context")
        head = "".join(f"# {name}\n{text.rstrip()}\n\n" for name, text in extra)
        encoded = self.encoded  # fitting counts the texts it keeps: each encoded once

        def encode(text: str) -> list[int]:
            ids = encoded.get(text)
            if ids is None:
                ids = encoded[text] = tuple(self.tokenizer.encode(text))
                if len(encoded) > ENCODED_TEXTS:
                    encoded.popitem(last=False)
            else:
                encoded.move_to_end(text)
            return list(ids)

        prefix, suffix = fim.fit_context(head + prefix, suffix, lambda text: len(encode(text)),
                                         budget)
        forced = b""
        if cursor_mode == "exact":
            prefix, partial = cursor.split_partial(self.tokenizer, prefix)
            forced = partial.encode()
        prefix_ids = encode(prefix)
        if cursor_mode == "heal" and prefix_ids:
            k = cursor.heal_rollback(self.tokenizer, prefix_ids)
            forced = self.tokenizer.decode_bytes(prefix_ids[len(prefix_ids) - k:])
            prefix_ids = prefix_ids[:len(prefix_ids) - k]
        if self.fim is None:  # a left-to-right prompt; an empty one starts at an end-of-text token
            return prefix_ids or sorted(self.end_ids)[:1] or [0], forced
        return self.fim.prompt(prefix_ids, encode(suffix)), forced

    def complete(self, prefix: str, suffix: str = "", *, max_tokens: int = 64,
                 sampling: Sampling = Sampling(), stop: tuple[str, ...] = (), n_indent: int = 0,
                 single_line: bool = False, extra: tuple[tuple[str, str], ...] = (),
                 cursor_mode: str = "exact", time_budget_ms: float | None = None,
                 slots: SlotPool | None = None, reuse: bool = True,
                 abort: Callable[[], bool] | None = None,
                 on_text: Callable[[str], None] | None = None,
                 speculative: bool = True, syntax: bool = True, invoked: bool = False,
                 path: str | None = None, project: str | None = None) -> Completion:
        """The completion at the cursor between `prefix` and `suffix`.

        `cursor_mode` says how a prefix that ends inside a token is handled (cursor.py). With
        `slots`, the prompt runs in a KV cache slot, reusing the longest cached prefix unless
        `reuse` is off; `max_tokens=0` then only fills a slot (a warm-up). `abort` is polled after
        every token; `on_text` receives the text as it becomes final, in pieces whose
        concatenation is the completion. `speculative` decodes by verified draft trees
        (speculative.py): the same output, in fewer passes. `syntax` reads the cursor's context
        (syntax.py) to decide whether to complete (a comment or the middle of a word is skipped
        unless `invoked`), one line or a block, and where to stop (stops.py); after `name.` it
        holds the identifier to the members static analysis finds (monitor.py; `path` and
        `project` help it resolve imports). Off, decoding runs raw to the end token.
        """
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        start = time.perf_counter()
        context = analyze(prefix, suffix) if syntax else None
        decision = decide(context, invoked=invoked) if context is not None else None
        if decision is not None and not decision.complete and max_tokens > 0:
            return Completion(text="", tokens=0, finish_reason="stop", prompt_tokens=0,
                              prompt_evaluated=0, prefill_ms=0.0, decode_ms=0.0,
                              total_ms=(time.perf_counter() - start) * 1000,
                              mode=decision.mode, skipped=decision.reason)
        max_tokens = min(max_tokens, self.context // 2)
        prompt, forced = self.prompt_ids(prefix, suffix, max_tokens, extra, cursor_mode)
        rule = StopRule(self.tokenizer, prefix, suffix, stop_strings=stop, n_indent=n_indent,
                        single_line=single_line, syntax=syntax, context=context)
        out = _Output(rule, on_text, abort,
                      start + time_budget_ms / 1000 if time_budget_ms else None)
        slot, cached = slots.acquire(prompt, reuse) if slots is not None else (None, 0)
        cache = slot.cache if slot else self.model.new_cache(1, self.context)
        vocab = len(self.tokenizer.token_bytes)
        generator = sampling.generator()
        path: tuple[int, ...] = ()
        passes, cursor_ms, prefill_ms, ended, stepped, n_members = 0, 0.0, 0.0, False, 0, 0
        cached = min(cached, len(prompt) - 1)  # the last prompt token is run: its logits are needed
        with torch.inference_mode():
            t0 = time.perf_counter()
            if cursor_mode == "exact" and forced and max_tokens > 0:
                scorer = cursor.ModelScorer(self.model, cache, prompt, cached, vocab)
                begun = cursor.ExactCursor(self.tokenizer, scorer, forced, self.end_ids).run(
                    sampling, generator, out.feed, max_bytes=min(cursor.MAX_BYTES, max_tokens))
                ended = begun.ended
                if not ended:
                    path, logits = begun.seq, scorer.lay(begun.seq)
                forced, passes, stepped = begun.need, scorer.passes, len(begun.text)
                cursor_ms = (time.perf_counter() - t0) * 1000
            else:
                logits = prefill(self.model, cache, prompt[cached:], cached)
                prefill_ms = (time.perf_counter() - t0) * 1000
            if ended:
                gen = Generation(finish_reason="stop", cache_valid=len(prompt) + len(path))
            else:
                out.skip = len(forced)
                before = prefix.encode() + out.rule.data  # the forced bytes are spelled again
                before = before[:len(before) - len(forced)]
                guard = utf8.Guard(self.tokenizer.token_bytes, vocab, utf8.incomplete_tail(before))
                constraints = [guard, *([cursor.Constraint(self.tokenizer, forced)] if forced else [])]
                if context is not None and context.after_dot and max_tokens > 0:
                    members = self.monitor.members(prefix, suffix, context, path, project)
                    if members:
                        constraints.append(MemberConstraint(self.tokenizer, members, before))
                        n_members = len(members)
                room = cache.max_seq - len(prompt) - len(path)
                decode = self.speculator.generate if speculative else generate
                gen = decode(self.model, prompt + list(path), min(max_tokens - stepped, room),
                               end_ids=self.end_ids, sampling=sampling,
                               should_stop=out.feed_token, cache=cache,
                               cached=len(prompt) + len(path), vocab_limit=vocab, logits=logits,
                               constraints=constraints, generator=generator)
        if slot is not None:
            slot.ids = (prompt + list(path) + gen.tokens)[:gen.cache_valid]
        text = out.finish()
        return Completion(text=text, tokens=stepped + len(gen.tokens),
                          finish_reason=out.reason or gen.finish_reason,
                          prompt_tokens=len(prompt), prompt_evaluated=len(prompt) - cached,
                          prefill_ms=prefill_ms, decode_ms=gen.decode_s * 1000,
                          total_ms=(time.perf_counter() - start) * 1000, stop_string=rule.matched,
                          cursor_ms=cursor_ms, cursor_passes=passes, forwards=gen.forwards,
                          drafted=gen.drafted, accepted=gen.accepted,
                          by_drafter=gen.by_drafter if speculative else None,
                          mode=rule.mode or "", members=n_members)


class _Output:
    """The generated bytes on their way out: the stop rule, the abort and the time budget see
    each piece, and `on_text` gets the text as it becomes final. The first `skip` bytes of the
    token phase are text the completion already holds (or the user typed) and are passed over."""

    def __init__(self, rule: StopRule, on_text: Callable[[str], None] | None,
                 abort: Callable[[], bool] | None, deadline: float | None):
        self.rule, self.on_text, self.abort, self.deadline = rule, on_text, abort, deadline
        self.skip = 0
        self.sent = ""
        self.reason: str | None = None  # "aborted" or "time"
        self.stopped = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True when the completion must end here."""
        if self.skip:
            taken = min(self.skip, len(data))
            data, self.skip = data[taken:], self.skip - taken
        if data and self.rule.feed(data):
            self.stopped = True
            return True
        if self.on_text is not None:
            committed = self.rule.committed()
            if len(committed) > len(self.sent):
                self.on_text(committed[len(self.sent):])
                self.sent = committed
        if self.abort is not None and self.abort():
            self.reason = "aborted"
        elif self.deadline is not None and time.perf_counter() > self.deadline:
            self.reason = "time"
        return self.reason is not None

    def feed_token(self, token: int) -> bool:
        return self.feed(self.rule.token_bytes[token])

    def ended(self) -> bool:
        return self.stopped or self.reason is not None

    def finish(self) -> str:
        text = self.rule.text()
        if self.on_text is not None and len(text) > len(self.sent):
            self.on_text(text[len(self.sent):])
        return text
