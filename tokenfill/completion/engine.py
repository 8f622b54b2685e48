"""Completions at a cursor: text before and after it in, the text to insert out.

The Engine joins the layers: syntax decides whether to complete, the FIM format builds the prompt
in ids (the context fitted to the model's window, prefix favoured, cut at line boundaries), the
cursor mode starts the middle, decoding runs on ids under its constraints, the stop rule
watches each new token, and the model's confidence gate (confidence.py) scores the completion,
stopping it early, cutting it or holding it back when it is unlikely to be kept. The engine
holds one model; in-process it is not thread-safe (a server serialises calls to it), while with
the model on remote engines several requests may run at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tokenfill.completion import cursor, fim, usage, utf8
from tokenfill.completion.confidence import MIN_EXIT_TOKENS, Gate, TokenStats
from tokenfill.completion.cursor_modes import CURSOR_MODES, Begun, Plain
from tokenfill.completion.monitor import MemberConstraint, Monitor
from tokenfill.completion.request import CompletionRequest
from tokenfill.completion.stops import EndGuard, StopRule
from tokenfill.completion.syntax import CursorContext, Decision, analyze, decide
from tokenfill.runtime import gguf_io
from tokenfill.runtime.checkpoint import fim_layout, load_config, load_model
from tokenfill.runtime.generate import Generation, generate
from tokenfill.runtime.hardware import resolve_dtype
from tokenfill.runtime.heads import FutureHeads, load_heads
from tokenfill.runtime.model import KVCache, Transformer
from tokenfill.runtime.remote import CURSOR_FALLBACK, Remote, Step
from tokenfill.runtime.slots import SlotPool
from tokenfill.runtime.tokenizer import Tokenizer
from tokenfill.speculative import ngram_table
from tokenfill.speculative.decoding import Speculator
from tokenfill.speculative.ngram_table import NGramTable

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
    confidence: float | None = None  # the gate's score (confidence.py); None without a gate
    cut: bool = False          # the gate cut it at the end of its last sure line
    stats: TokenStats | None = field(default=None, repr=False)  # its tokens' probabilities

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per decoding pass (each pass also yields one of its own)."""
        return self.accepted / self.forwards if self.forwards else 0.0

    @classmethod
    def declined(cls, mode: str, reason: str, start: float) -> Completion:
        """None made: syntax-aware completion found nothing to write here (`reason`)."""
        return cls(text="", tokens=0, finish_reason="stop", prompt_tokens=0, prompt_evaluated=0,
                   prefill_ms=0.0, decode_ms=0.0, total_ms=(time.perf_counter() - start) * 1000,
                   mode=mode, skipped=reason)

    @classmethod
    def aborted(cls) -> Completion:
        """Cancelled before it ran: no model time spent."""
        return cls("", 0, "aborted", 0, 0, 0.0, 0.0, 0.0)

    @classmethod
    def made(cls, request: CompletionRequest, out: _Output, prompt: Prompt, begun: Begun,
             gen: Generation, cached: int, start: float) -> Completion:
        text = out.finish()
        return cls(text=text, tokens=begun.stepped + len(gen.tokens),
                   finish_reason=out.reason or gen.finish_reason,
                   prompt_tokens=len(prompt.ids), prompt_evaluated=len(prompt.ids) - cached,
                   prefill_ms=begun.prefill_ms, decode_ms=gen.decode_s * 1000,
                   total_ms=(time.perf_counter() - start) * 1000, stop_string=out.rule.matched,
                   cursor_ms=begun.cursor_ms, cursor_passes=begun.passes, forwards=gen.forwards,
                   drafted=gen.drafted, accepted=gen.accepted,
                   by_drafter=gen.by_drafter if request.speculative else None,
                   mode=out.rule.mode or "", members=out.members)


class Engine:
    def __init__(self, model: Transformer | None, tokenizer: Tokenizer, *, name: str = "model",
                 require_fim: bool = True, fim_layout: str = "psm",
                 ngrams: NGramTable | None = None, heads: FutureHeads | None = None,
                 gate: Gate | None = None, remote: Remote | None = None,
                 context: int | None = None):
        self.model = model  # None when the model runs on other engines (`remote`)
        self.remote = remote
        self.tokenizer = tokenizer
        try:
            self.fim: fim.FimTokens | None = fim.detect(tokenizer, fim_layout)
        except fim.FimUnsupportedError:
            if require_fim:
                raise
            self.fim = None  # plain left-to-right completion only; a suffix is refused
        self.context = context or model.config.max_position_embeddings
        self.name = name
        self.ngrams = ngrams  # the corpus drafter's table (ngram_table.py), if the model has one
        self.heads = heads  # the model's multi-token heads (runtime/heads.py), if it has them
        self.gate = gate  # the model's confidence gate (confidence.py), if it has one
        self.speculator = Speculator(  # outlives requests
            len(tokenizer.token_bytes), ngrams=ngrams, heads=heads,
            output=model.output if model is not None else None)
        self.monitor = Monitor()  # attribute names after `name.`, cached per document
        # n-gram tables of the workspaces requests name (`project`), for the workspace drafter
        self.workspace_tables: dict[str, NGramTable] = {}
        # after `name.`, names the file uses with `name` weigh more (usage.py);
        # off only to measure what the prior changes
        self.member_prior = True
        # syntax on: the end token waits until the line or block can be complete (stops.EndGuard);
        # off only to measure what the guard changes
        self.hold_end = True
        # with syntax on, one line where a line is inserted between statements (syntax.decide);
        # off only to measure what that changes
        self.lines_between = True
        # how context from other files is laid out (fim.CONTEXT_LAYOUTS); others only to measure
        self.context_layout = "auto"
        # texts fitting the context encoded lately: while a person types, the suffix and its
        # windows come back request after request
        self.encoded: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        # with remote engines several requests run at once (serve/worker.py): what they share
        # here (the encodings kept, the member lookups' cache) is taken under this lock
        self.shared = threading.Lock()

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "auto", require_fim: bool = True) -> Engine:
        """The engine of a checkpoint directory (Hugging Face layout, with what lies beside the
        weights: n-gram table, multi-token heads, gate) or of one GGUF file."""
        directory = Path(directory)
        if gguf_io.is_gguf(directory):
            model, tokenizer, layout = gguf_io.load(
                directory, lambda config: resolve_dtype(dtype, config))
            return cls(model, tokenizer, name=directory.stem, require_fim=require_fim,
                       fim_layout=layout)
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        if require_fim:
            fim.detect(tokenizer)  # before the weights: fail fast on a checkpoint without FIM tokens
        config = load_config(directory)
        chosen = resolve_dtype(dtype, config)
        model = load_model(directory, chosen)
        heads = load_heads(directory, model.config.hidden_size, chosen)
        return cls(model, tokenizer, name=directory.name, require_fim=require_fim,
                   fim_layout=fim_layout(directory), ngrams=ngram_table.beside(directory),
                   heads=heads, gate=Gate.for_model(directory))

    @classmethod
    def open(cls, model: str | Path, dtype: str = "auto", engines: tuple[str, ...] = (),
             require_fim: bool = True) -> Engine:
        """`served` on `engines` when any are given, else `load`."""
        if engines:
            return cls.served(list(engines), model, require_fim=require_fim)
        return cls.load(model, dtype, require_fim=require_fim)

    @classmethod
    def served(cls, urls: list[str], directory: str | Path, require_fim: bool = True) -> Engine:
        """An engine whose model runs on the vLLM or llama.cpp servers at `urls` (replicas of
        one model); the tokenizer, the FIM template and the context length come from the local
        checkpoint directory, its gate too. The weights are not loaded here."""
        directory = Path(directory)
        if gguf_io.is_gguf(directory):
            raise ValueError("with --engine, --model names a checkpoint directory (its tokenizer "
                             "and FIM template), not a GGUF file")
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        config = load_config(directory)
        return cls(None, tokenizer, name=directory.name, require_fim=require_fim,
                   fim_layout=fim_layout(directory), gate=Gate.for_model(directory),
                   remote=Remote(urls, len(tokenizer.token_bytes)),
                   context=config.max_position_embeddings)

    def cursor_mode(self, request: CompletionRequest) -> str:
        """The cursor mode a request gets: on remote engines, exact falls back (remote.py)."""
        if self.remote is not None:
            return CURSOR_FALLBACK.get(request.cursor_mode, request.cursor_mode)
        return request.cursor_mode

    @property
    def end_ids(self) -> frozenset[int]:
        if self.fim is not None:
            return self.fim.stops
        eos = self.tokenizer.token_id("<|endoftext|>") or self.tokenizer.token_id("</s>")
        return frozenset() if eos is None else frozenset({eos})

    def check(self, request: CompletionRequest) -> None:
        """Refuse what this model cannot do, before any work: a suffix needs FIM tokens."""
        if self.fim is None and request.suffix:
            raise fim.FimUnsupportedError("this model has no fill-in-the-middle tokens, so it "
                                          "cannot use the text after the cursor (suffix)")

    def complete(self, request: CompletionRequest, *, slots: SlotPool | None = None,
                 abort: Callable[[], bool] | None = None,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """The completion at the request's cursor.

        With `slots`, the prompt runs in a KV cache slot, reusing the longest cached prefix
        unless the request says not to. `abort` is polled after every token; `on_text` receives
        the text as it becomes final, in pieces whose concatenation is the completion.
        """
        start = time.perf_counter()
        context = analyze(request.prefix, request.suffix) if request.syntax else None
        decision = decide(context, invoked=request.invoked,
                          lines_between=self.lines_between) if context is not None else None
        if decision is not None and not decision.complete and request.max_tokens > 0:
            return Completion.declined(decision.mode, decision.reason, start)
        max_tokens = min(request.max_tokens, self.context // 2)
        prompt = self.prompt(request, max_tokens)
        threshold = self.threshold(request)
        gating = threshold > 0 and not request.invoked and max_tokens > 0
        # a completion the gate may drop or cut is sent whole once scored: none of it streams
        out = _Output(self.stop_rule(request, context, decision),
                      None if gating else on_text, abort,
                      start + request.time_budget_ms / 1000 if request.time_budget_ms else None)
        out.exit_gate = self.gate if gating else None
        out.stats.shape = cursor_shape(context, out.rule.mode)
        if self.remote is not None:  # the engines there keep their own caches
            begun, cached = Begun(None, need=prompt.forced), 0
            gen = self.decode(request, context, prompt, begun, None, out, None, max_tokens, abort)
        else:
            begun, gen, cached = self.run(request, context, prompt, out, slots, max_tokens)
        made = replace(Completion.made(request, out, prompt, begun, gen, cached, start),
                       stats=out.stats)
        return self.finish(made, out, threshold, gating, on_text)

    def run(self, request: CompletionRequest, context: CursorContext | None, prompt: Prompt,
            out: _Output, slots: SlotPool | None, max_tokens: int
            ) -> tuple[Begun, Generation, int]:
        """The in-process model's part, in a KV slot when there are slots: the cursor mode's
        start, then decoding. Also how many prompt tokens the slot held already."""
        slot, cached = (slots.acquire(prompt.ids, request.reuse) if slots is not None
                        else (None, 0))
        cached = min(cached, len(prompt.ids) - 1)  # the last prompt token runs: its logits count
        cache = slot.cache if slot else self.model.new_cache(1, self.context)
        generator = request.sampling.generator()
        self.speculator.use_workspace(self.workspace_tables.get(request.project or ""))
        with torch.inference_mode():
            begun = prompt.mode.begin(
                self.model, self.tokenizer, cache, prompt.ids, cached,
                prompt.forced, sampling=request.sampling, generator=generator, on_bytes=out.feed,
                end_ids=self.end_ids, max_tokens=max_tokens)
            gen = self.decode(request, context, prompt, begun, cache, out, generator, max_tokens)
        if slot is not None:
            slot.ids = (prompt.ids + list(begun.path) + gen.tokens)[:gen.cache_valid]
        return begun, gen, cached

    def finish(self, made: Completion, out: _Output, threshold: float, gating: bool,
               on_text: Callable[[str], None] | None) -> Completion:
        """The completion as the gate leaves it; a gated one is sent now, whole."""
        if self.gate is not None:
            made = self.gated(made, out, threshold if gating else 0.0)
            if gating and on_text is not None and made.text:
                on_text(made.text)
        return made

    def threshold(self, request: CompletionRequest) -> float:
        """The gate score a completion needs to be shown (0: all are)."""
        if self.gate is None:
            return 0.0
        return self.gate.threshold if request.min_confidence is None else request.min_confidence

    def gated(self, made: Completion, out: _Output, threshold: float) -> Completion:
        """The completion with its score; under `threshold` (or stopped early by the gate) it is
        cut after its last sure line when that part scores enough, else dropped."""
        stats = out.stats
        if not len(stats) or made.finish_reason == "aborted":
            return made  # nothing decoded to judge, or nobody left to show it to
        score = self.gate.score(stats.features())
        made = replace(made, confidence=score)
        if threshold <= 0 or (score >= threshold and out.reason != "confidence"):
            return made
        cut = stats.sure_lines_end()
        if cut > 0:
            sure = self.gate.score(stats.features(upto=cut))
            if sure >= threshold:
                lines = stats.line_starts.index(cut)
                text = "\n".join(made.text.split("\n")[:lines])
                if text.strip():
                    return replace(made, text=text, confidence=sure, cut=True,
                                   finish_reason="stop")
        return replace(made, text="", skipped="low confidence")

    def prompt(self, request: CompletionRequest, max_tokens: int) -> Prompt:
        """The FIM prompt, with prefix and suffix cut to leave room for `max_tokens`, and the
        bytes the middle must start with: what the cursor mode took back from the prefix's end.

        `request.extra` is context from other files, (path, text) pairs in prompt order: laid
        out as the model's family expects (fim.context_ids, `context_layout`), its tokens are
        kept out of the prefix's and suffix's share (up to half the window), and the pieces
        farthest from the cursor are the first dropped when they do not fit.
        """
        self.check(request)
        mode = CURSOR_MODES[self.cursor_mode(request)]
        reserve = mode.reserve(self.tokenizer, request.prefix, self.context // 8)
        budget = self.context - max_tokens - reserve - (self.fim.overhead if self.fim else 0)
        if budget < 0:
            raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in the model's "
                             f"{self.context}-token context")
        # at most half the window: the text around the cursor matters most
        context = fim.context_ids(self.fim, request.extra, self.encode, budget // 2,
                                  layout=self.context_layout, project=request.project,
                                  path=request.path) if request.extra else None
        used = len(context.ids) if context is not None else 0
        prefix, suffix = fim.fit_context(request.prefix, request.suffix,
                                         lambda text: len(self.encode(text)), budget - used)
        prefix_ids, forced = mode.cut(self.tokenizer, prefix, self.encode)
        if self.fim is None:  # a left-to-right prompt; an empty one starts at an end-of-text token
            ids = [*(context.ids if context is not None else ()), *prefix_ids]
            return Prompt(ids or sorted(self.end_ids)[:1] or [0], forced, mode)
        return Prompt(self.fim.prompt(prefix_ids, self.encode(suffix), context), forced, mode)

    def encode(self, text: str) -> list[int]:
        """The text's ids, kept for the texts fitted lately: while a person types, the suffix and
        its windows come back request after request."""
        with self.shared:
            ids = self.encoded.get(text)
            if ids is not None:
                self.encoded.move_to_end(text)
                return list(ids)
        ids = tuple(self.tokenizer.encode(text))
        with self.shared:
            self.encoded[text] = ids
            if len(self.encoded) > ENCODED_TEXTS:
                self.encoded.popitem(last=False)
        return list(ids)

    def stop_rule(self, request: CompletionRequest, context: CursorContext | None,
                  decision: Decision | None = None) -> StopRule:
        return StopRule(self.tokenizer, request.prefix, request.suffix, stop_strings=request.stop,
                        n_indent=request.n_indent, single_line=request.single_line,
                        syntax=request.syntax, context=context,
                        mode=decision.mode if decision is not None else None)

    def constraints(self, request: CompletionRequest, context: CursorContext | None,
                    out: _Output, need: bytes) -> tuple[list, int]:
        """What decoding must respect: whole UTF-8 characters, the bytes still to spell, after
        `name.` the members static analysis finds (the names the file uses there weighing more),
        and with syntax on no end before the line or block can be complete. Also how many
        members those were."""
        before = request.prefix.encode() + out.rule.data  # the needed bytes are spelled again
        before = before[:len(before) - len(need)]
        vocab = len(self.tokenizer.token_bytes)
        found: list = [utf8.Guard(self.tokenizer.token_bytes, vocab, utf8.incomplete_tail(before))]
        if need:
            found.append(cursor.Constraint(self.tokenizer, need))
        members: tuple[str, ...] = ()
        if context is not None and context.after_dot:
            with self.shared:
                members = self.monitor.members(request.prefix, request.suffix, context,
                                               request.path, request.project)
            if members:
                found.append(MemberConstraint(self.tokenizer, members, before))
            # engines elsewhere choose their own tokens: the prior weighs only ours
            prior = self.prior(request, context, before) \
                if self.member_prior and self.remote is None else None
            if prior is not None:
                found.append(prior)
        if context is not None and self.hold_end:
            found.append(EndGuard(out.rule, self.end_ids, vocab))
        return found, len(members)

    def prior(self, request: CompletionRequest, context: CursorContext,
              before: bytes) -> usage.MemberPrior | None:
        """After `name.`: the names the file uses with `name` weigh more (usage.py)."""
        head = request.prefix[:len(request.prefix) - len(context.partial)]
        counts = usage.uses(context.receiver, head + request.suffix)
        return usage.MemberPrior(self.tokenizer, counts, before) if counts else None

    def decode(self, request: CompletionRequest, context: CursorContext | None, prompt: Prompt,
               begun: Begun, cache: KVCache | None, out: _Output,
               generator: torch.Generator | None, max_tokens: int,
               abort: Callable[[], bool] | None = None) -> Generation:
        """Tokens after the prompt phase, to the end token, a stop, the limit or an abort."""
        done = len(prompt.ids) + len(begun.path)
        if begun.ended:
            return Generation(finish_reason="stop", cache_valid=done)
        out.skip = len(begun.need)  # spelled again by the first tokens: already in the text
        constraints, out.members = self.constraints(request, context if max_tokens > 0 else None,
                                                    out, begun.need)
        end_ids, stats = self.end_ids, out.stats
        if self.remote is not None:
            def seen(step: Step) -> None:
                stats.observe_top(step.logprob, step.top, step.token)

            return self.remote.generate(
                prompt.ids, min(max_tokens, self.context - done), end_ids=end_ids,
                sampling=request.sampling, should_stop=out.feed_token, constraints=constraints,
                observe=seen, abort=abort,
                key=request.path or request.project or request.prefix[:200])
        run = self.speculator.generate if request.speculative else generate

        def observe(logits: torch.Tensor, token: int) -> None:
            if token not in end_ids:
                stats.observe(logits, token)

        return run(self.model, prompt.ids + list(begun.path),
                   min(max_tokens - begun.stepped, cache.max_seq - done), end_ids=self.end_ids,
                   sampling=request.sampling, should_stop=out.feed_token, cache=cache,
                   cached=done, vocab_limit=len(self.tokenizer.token_bytes), logits=begun.logits,
                   constraints=constraints, generator=generator, observe=observe)


def cursor_shape(context: CursorContext | None, mode: str | None) -> dict[str, float]:
    """Where the cursor is, as the confidence gate reads it (confidence.SHAPE)."""
    if context is None:
        return {}
    return {"block": float(mode == "block"), "after_dot": float(context.after_dot),
            "rest_of_line": float(bool(context.rest_of_line.strip())),
            "blank_line": float(context.blank_line), "partial": float(bool(context.partial))}


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    forced: bytes          # the bytes the middle must start with (the cursor mode took them back)
    mode: Plain            # the cursor mode that cut it


class _Output:
    """The generated bytes on their way out: the stop rule, the abort and the time budget see
    each piece, and `on_text` gets the text as it becomes final. The first `skip` bytes of the
    token phase are text the completion already holds (or the user typed) and are passed over."""

    def __init__(self, rule: StopRule, on_text: Callable[[str], None] | None,
                 abort: Callable[[], bool] | None, deadline: float | None):
        self.rule, self.on_text, self.abort, self.deadline = rule, on_text, abort, deadline
        self.skip = 0
        self.sent = ""
        self.reason: str | None = None  # "aborted", "time" or "confidence" (the gate's exit)
        self.members = 0                # attribute names decoding was held to after `name.`
        # the picked tokens' probabilities (40-75 us a token at 4K-16K vocabularies, about 1% of
        # a decode step): every completion can be scored, and `tokenfill gate` fits the gate on them
        self.stats = TokenStats()
        self.exit_gate: Gate | None = None    # stops decoding once its running score is low

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True when the completion must end here."""
        if self.skip:
            taken = min(self.skip, len(data))
            data, self.skip = data[taken:], self.skip - taken
        if data and self.rule.feed(data):
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
        data = self.rule.token_bytes[token]
        over = self.feed(data)
        stats = self.stats
        if b"\n" in data:
            stats.newline()
        gate = self.exit_gate
        if (not over and gate is not None and len(stats) >= MIN_EXIT_TOKENS
                and gate.score(stats.features()) < gate.exit_threshold):
            self.reason = "confidence"
            return True
        return over

    def finish(self) -> str:
        text = self.rule.text()
        if self.on_text is not None and len(text) > len(self.sent):
            self.on_text(text[len(self.sent):])
        return text
