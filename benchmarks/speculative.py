"""`python -m benchmarks speculative`: speculative vs plain decoding, side by side in one run.

Holes: block bodies and runs of 2 to 5 whole lines cut from held-out files (realcode.py), and
rows of ../shared/data HumanEval multi-line infilling. Each hole is completed greedily four ways,
one after the other: tokenfill plain, tokenfill speculative, and the same checkpoint run by
`transformers` `generate` (greedy, then with `prompt_lookup_num_tokens`), those two asked for as
many tokens as tokenfill's plain completion generated, from the same prompt ids, with the same
threads per pass (hardware.py). The cursor sits at a line start and `--cursor-mode none` is
used, so every runtime decodes the same prompt.

Where the checkpoint has a corpus table (corpus_ngrams.py), each hole is also completed
speculatively without it, to show what it adds.

Reported: whether speculative and plain outputs are identical (with and without the table);
mean accepted draft tokens per decoding pass; generated tokens per second of decoding (prefill
excluded); ms per completion (p50, p95, mean) from the prompt ids, prefill and decoding, as
`transformers` is timed, over the holes that generated anything; apart, what tokenfill spends
before that, turning the text at the cursor into the prompt (syntax analysis, fitting the
context, tokenizing); the drafters' memory; and a plot of where the accepted tokens came from,
by drafter and hole kind (a token two drafters proposed counts for both).

Where the speed-up goes: the cost of one forward pass by the tokens in it (`pass_costs`, sizes
interleaved so that the machine's load falls on all alike), and for each kind the ceiling those
costs allow at the tokens and tree nodes observed per pass: tokens per pass x cost(1) / cost(nodes).
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import header, model_option, same_threads
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes, realcode
from tokenfill.eval.stats import percentile
from tokenfill.paths import HUMANEVAL_MULTI, PLOTS, REPO_ROOT
from tokenfill.runtime.checkpoint import fim_layout
from tokenfill.runtime.generate import forward
from tokenfill.runtime.hardware import resolve_dtype
from tokenfill.runtime.model import Transformer, causal_mask
from tokenfill.speculative.drafters import DRAFTERS

PLOT = PLOTS / "speculative-accepted.png"
KINDS = ("block-body", "multi-line", "humaneval-multi")


def bench_holes(per_kind: int, seed: int) -> list[holes.Hole]:
    files = realcode.files()
    out = holes.cut(files, "block-body", per_kind, seed) + holes.cut(files, "multi-line", per_kind, seed)
    if HUMANEVAL_MULTI.is_file():
        with gzip.open(HUMANEVAL_MULTI, "rt") as f:
            rows = [json.loads(line) for line in f]
        for row in random.Random(seed).sample(rows, min(per_kind, len(rows))):
            out.append(holes.Hole(row["task_id"], "humaneval-multi", row["prompt"],
                                  row["canonical_solution"], row["suffix"]))
    return out


def run(model: Path, per_kind: int = 30, max_tokens: int = 128, seed: int = 0,
        compare_transformers: bool = True, progress: bool = True, plot: Path | None = PLOT) -> str:
    engine = Engine.load(model, dtype="fp32")
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
    hf = _transformers(model) if compare_transformers else None
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    by_drafter: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    cases = bench_holes(per_kind, seed)
    # the same model and drafters without the corpus table, where the checkpoint has one
    bare = Engine(engine.model, engine.tokenizer, name=engine.name,
                  fim_layout=fim_layout(model)) if engine.ngrams is not None else None
    warm = cases[0]
    for speculative in (False, True):  # both paths compiled and cached before timing
        for e in (engine, bare) if bare is not None else (engine,):
            e.complete(CompletionRequest(prefix=warm.prefix, suffix=warm.suffix, max_tokens=8,
                                         cursor_mode="none", speculative=speculative))
    for i, hole in enumerate(tqdm(cases, desc="speculative vs plain", unit="hole",
                                  disable=not progress)):
        r = rows[hole.kind]
        plain = engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                  max_tokens=max_tokens, cursor_mode="none",
                                                  speculative=False))
        engines = [engine] if bare is None else [engine, bare][::1 if i % 2 else -1]
        done = {id(e): e.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                    max_tokens=max_tokens, cursor_mode="none",
                                                    speculative=True))
                for e in engines}  # with and without the table take turns going first
        fast = done[id(engine)]
        r["same"].append(plain.text == fast.text)
        if bare is not None:
            other = done[id(bare)]
            r["same"][-1] = r["same"][-1] and other.text == plain.text
            r["bare_decode_s"].append(other.decode_ms / 1000)
            r["bare_forwards"].append(other.forwards)
            r["bare_accepted"].append(other.accepted)
        r["tokens"].append(plain.tokens)
        r["plain_decode_s"].append(plain.decode_ms / 1000)
        r["spec_decode_s"].append(fast.decode_ms / 1000)
        if plain.tokens > 0:  # timed from the prompt ids, as transformers is
            r["plain_ms"].append(plain.prefill_ms + plain.decode_ms)
            r["spec_ms"].append(fast.prefill_ms + fast.decode_ms)
            r["text_ms"].append(fast.total_ms - fast.prefill_ms - fast.decode_ms)
        r["forwards"].append(fast.forwards)
        r["accepted"].append(fast.accepted)
        r["drafted"].append(fast.drafted)
        for name, (_, accepted) in (fast.by_drafter or {}).items():
            by_drafter[hole.kind][name] += accepted
        if hf is not None and plain.tokens > 0:
            prompt = engine.prompt(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                     cursor_mode="none"), max_tokens).ids
            for label, extra in (("hf_ms", {}), ("hf_pld_ms", {"prompt_lookup_num_tokens": 10})):
                r[label].append(_hf_generate(hf, prompt, plain.tokens, extra))
    memory = engine.speculator.nbytes()
    table = _table(rows, hf is not None)
    cached = max(1, min(600, engine.model.config.max_position_embeddings - 64))
    costs = pass_costs(engine.model, cached)
    lines = [header(f"python -m benchmarks speculative{model_option(model)} --per-kind {per_kind}"),
             f"greedy, at most {max_tokens} tokens, `--cursor-mode none`; {len(cases)} holes; "
             "tokens/s over decoding only; ms per completion from the prompt ids (prefill and "
             "decoding, as `transformers` is timed) over the holes that generated anything; "
             "text to prompt: what tokenfill spends before that (syntax analysis, fitting the "
             "context, tokenizing).", "",
             *table, "",
             f"Drafters' memory kept across requests after the run: {memory / 2**20:.2f} MB "
             f"(drafters: {', '.join(DRAFTERS)}).",
             "",
             "Accepted draft tokens per decoding pass, by drafter (a token that several drafters "
             "proposed counts for each):", "",
             "| holes | " + " | ".join(DRAFTERS) + " |",
             "| --- |" + " --- |" * len(DRAFTERS)]
    for kind, r in rows.items():
        passes = max(sum(r["forwards"]), 1)
        lines.append(f"| {kind} | " + " | ".join(f"{by_drafter[kind][name] / passes:.2f}"
                                                  for name in DRAFTERS) + " |")
    if bare is not None:
        lines += ["", *_corpus_table(rows)]
    lines += ["", *_cost_table(rows, costs, cached)]
    if plot is not None:
        _plot(rows, by_drafter, costs, plot)
        shown = plot.relative_to(REPO_ROOT) if plot.is_relative_to(REPO_ROOT) else plot
        lines += ["", f"Plot: `{shown}`."]
    return "\n".join(lines)


def _table(rows: dict[str, dict[str, list]], with_hf: bool) -> list[str]:
    head = ("| holes | n | identical | mean tokens | accepted per pass | plain tokens/s | "
            "speculative tokens/s | speed-up | plain ms p50 / p95 / mean | speculative ms")
    head += " | transformers ms | transformers + prompt lookup ms" if with_hf else ""
    head += " | text to prompt ms |"
    out = [head, "| --- " * (head.count("|") - 1) + "|"]
    total: dict[str, list] = defaultdict(list)
    for kind in [*rows, "all"]:
        r = rows[kind] if kind != "all" else total
        if kind != "all":
            for key, values in r.items():
                total[key].extend(values)
        n = len(r["same"])
        tokens = sum(r["tokens"])
        plain_tps = tokens / max(sum(r["plain_decode_s"]), 1e-9)
        spec_tps = tokens / max(sum(r["spec_decode_s"]), 1e-9)
        accepted = sum(r["accepted"]) / max(sum(r["forwards"]), 1)

        def ms(key: str) -> str:
            return (f"{percentile(r[key], 0.5):.0f} / {percentile(r[key], 0.95):.0f} / "
                    f"{sum(r[key]) / max(len(r[key]), 1):.0f}")

        line = (f"| {kind} | {n} | {sum(r['same'])}/{n} | {tokens / max(n, 1):.1f} | "
                f"{accepted:.2f} | {plain_tps:.0f} | {spec_tps:.0f} | {spec_tps / plain_tps:.2f}x | "
                f"{ms('plain_ms')} | {ms('spec_ms')} |")
        if with_hf:
            line += f" {ms('hf_ms')} | {ms('hf_pld_ms')} |"
        line += f" {percentile(r['text_ms'], 0.5):.1f} / {percentile(r['text_ms'], 0.95):.1f} |"
        out.append(line)
    return out


def _corpus_table(rows: dict[str, dict[str, list]]) -> list[str]:
    """Speculative decoding with the corpus table and without it, on the same holes in the same
    run (every other drafter the same)."""
    out = ["What the corpus table adds (the same drafters without it, on the same holes, in the "
           "same run):", "",
           "| holes | accepted per pass without / with | speed-up without / with |",
           "| --- | --- | --- |"]
    every: dict[str, list] = defaultdict(list)
    for r in rows.values():
        for key, values in r.items():
            every[key].extend(values)
    for kind, r in [*rows.items(), ("all", every)]:
        plain = sum(r["plain_decode_s"])
        out.append(f"| {kind} | {sum(r['bare_accepted']) / max(sum(r['bare_forwards']), 1):.2f} / "
                   f"{sum(r['accepted']) / max(sum(r['forwards']), 1):.2f} | "
                   f"{plain / max(sum(r['bare_decode_s']), 1e-9):.2f}x / "
                   f"{plain / max(sum(r['spec_decode_s']), 1e-9):.2f}x |")
    return out


def pass_costs(model: Transformer, context: int = 600,
               sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64), rounds: int = 30) -> dict[int, float]:
    """Median ms of one forward pass of T tokens after `context` cached ones: one token as a plain
    step, more as a draft tree (a chain, with its mask and positions). The sizes take turns, round
    after round, so that the machine's load falls on all of them alike."""
    cache = model.new_cache(1, context + max(sizes))
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    times: dict[int, list[float]] = {T: [] for T in sizes}
    with torch.inference_mode():
        forward(model, torch.randint(0, vocab, (1, context), generator=g), 0, cache)
        for _ in range(rounds):
            for T in sizes:
                tokens = torch.randint(0, vocab, (1, T), generator=g)
                tree = {} if T == 1 else {"positions": torch.arange(context, context + T),
                                          "mask": causal_mask(0, T)}
                start = time.perf_counter()
                forward(model, tokens, context, cache, **tree)
                times[T].append((time.perf_counter() - start) * 1000)
    return {T: percentile(v, 0.5) for T, v in times.items()}


def cost_at(costs: dict[int, float], T: float) -> float:
    """Pass cost at T tokens, linear between the sizes measured (and past the last two)."""
    sizes = sorted(costs)
    for lo, hi in zip(sizes, sizes[1:]):
        if T <= hi or hi == sizes[-1]:
            return costs[lo] + (costs[hi] - costs[lo]) * (T - lo) / (hi - lo)
    return costs[sizes[0]]


def _cost_table(rows: dict[str, dict[str, list]], costs: dict[int, float], cached: int) -> list[str]:
    one = costs[min(costs)]
    out = [f"Cost of one forward pass by the tokens in it, {cached} tokens cached (median of 30 "
           "interleaved rounds; one token runs as a plain step):", "",
           "| tokens in the pass | " + " | ".join(str(T) for T in costs) + " |",
           "| --- |" + " --- |" * len(costs),
           "| ms | " + " | ".join(f"{ms:.2f}" for ms in costs.values()) + " |",
           "| x one token | " + " | ".join(f"{ms / one:.2f}" for ms in costs.values()) + " |",
           "", "What those costs allow: tokens per pass (accepted + 1) x cost(1) / cost(nodes per "
           "pass), against the speed-up measured (the rest goes to drafting, building trees, the "
           "stop rule and each request's set-up):", "",
           "| holes | tokens per pass | nodes per pass | ceiling from pass costs | measured |",
           "| --- | --- | --- | --- | --- |"]
    for kind, r in rows.items():
        passes = max(sum(r["forwards"]), 1)
        tokens = 1 + sum(r["accepted"]) / passes
        nodes = 1 + sum(r["drafted"]) / passes
        measured = sum(r["plain_decode_s"]) / max(sum(r["spec_decode_s"]), 1e-9)
        out.append(f"| {kind} | {tokens:.2f} | {nodes:.1f} | "
                   f"{tokens * one / cost_at(costs, nodes):.2f}x | {measured:.2f}x |")
    return out


def _transformers(model: Path):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=resolve_dtype("fp32")).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    hf.register_forward_pre_hook(same_threads, with_kwargs=True)  # tokenfill's threads per pass
    return hf


def _hf_generate(hf, prompt: list[int], n: int, extra: dict) -> float:
    """ms for `transformers` to generate exactly n greedy tokens after `prompt`."""
    start = time.perf_counter()
    with torch.inference_mode():
        hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra)
    return (time.perf_counter() - start) * 1000


def _plot(rows: dict[str, dict[str, list]], by_drafter: dict[str, dict[str, int]],
          costs: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(rows)
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(16, 4))
    width = 0.8 / len(DRAFTERS)
    for k, name in enumerate(DRAFTERS):
        values = [by_drafter[kind][name] / max(sum(rows[kind]["forwards"]), 1) for kind in kinds]
        left.bar([i + k * width for i in range(len(kinds))], values, width, label=name)
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds)
    left.set_ylabel("accepted draft tokens per pass")
    left.set_title("Where accepted tokens come from")
    left.legend()
    for kind in kinds:
        r = rows[kind]
        speedups = [p / s for p, s in zip(r["plain_decode_s"], r["spec_decode_s"]) if s > 0]
        right.scatter(r["tokens"][:len(speedups)], speedups, label=kind, s=14)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xlabel("tokens generated")
    right.set_ylabel("decoding speed-up (plain / speculative time)")
    right.set_title("Speed-up per hole")
    right.legend()
    third.plot(list(costs), list(costs.values()), marker="o", color="black")
    for kind in kinds:
        r = rows[kind]
        nodes = 1 + sum(r["drafted"]) / max(sum(r["forwards"]), 1)
        third.scatter([nodes], [cost_at(costs, nodes)], s=40, zorder=3, label=f"{kind} (mean tree)")
    third.set_xscale("log", base=2)
    third.set_xlabel("tokens in the pass")
    third.set_ylabel("ms per forward pass")
    third.set_title("What a pass costs")
    third.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
