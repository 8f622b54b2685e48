"""`python -m benchmarks syntax`: raw decoding vs syntax-aware completion, side by side in one run.

Holes of four kinds are cut from held-out files (realcode.py): whole-line, mid-line, block-body
and dot-identifier (the cursor right after `name.`). Each is completed greedily twice by the same
engine: raw (`syntax=False`: the model runs to its end token or the token limit) and syntax-aware
(the default, as an editor's automatic request: it may decline, e.g. in a comment). For the
monitor, jedi's answer for each dot-identifier hole is fetched (and timed) before the completion,
so both runs see the same answer whatever the machine's load; the timings say how often a lookup
fits the server's budget.

Reported per kind: exact match and edit similarity of the first line and of the whole middle;
the share of completions after which the file still parses (`ast.parse`), as a fraction of the
gold's (the original file, which parses); the share that duplicate text the suffix begins with
(the completion's first line ends with the rest of the cursor's line, or a later line of it is the
suffix's first or next non-blank line, where the gold's does not); mean tokens generated and ms per completion.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import header
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.completion.syntax import analyze
from tokenfill.eval import holes, realcode
from tokenfill.eval.score import parses, score_middle
from tokenfill.eval.stats import percentile

KINDS = ("whole-line", "mid-line", "block-body", "dot-identifier")
METRICS = ("em_first_line", "es_first_line", "em_middle", "es_middle", "parses", "duplicates",
           "tokens", "ms")


def duplicates(completion: str, gold: str, suffix: str) -> bool:
    """Does the completion write again what the suffix begins with, where the gold does not?"""
    lines = suffix.split("\n")
    rest = lines[0].strip()
    following = next((line.strip() for line in lines[1:] if line.strip()), "")

    def dup(text: str) -> bool:  # the line the cursor is on, and the lines after it
        ends = bool(rest) and text.split("\n", 1)[0].rstrip().endswith(rest)
        later = {line.strip() for line in text.split("\n")[1:]}
        repeats = bool(later & ({rest, following} - {""}))
        return ends or repeats

    return dup(completion) and not dup(gold)


def score(completion: str, tokens: int, ms: float, hole: holes.Hole) -> dict[str, float]:
    return {**score_middle(completion, hole.middle, hole.prefix, hole.suffix),
            "duplicates": duplicates(completion, hole.middle, hole.suffix),
            "tokens": tokens, "ms": ms}


def run(model: Path, per_kind: int = 40, max_tokens: int = 64, seed: int = 0,
        progress: bool = True) -> str:
    engine = Engine.load(model)
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
    engine.monitor.timeout_s = 30.0  # fetched ahead below; timed separately
    files = [(path, text) for path, text in realcode.files() if parses(text)]
    rows: dict[str, dict[str, dict[str, list]]] = defaultdict(
        lambda: {"raw": defaultdict(list), "syntax": defaultdict(list)})
    skipped: dict[str, list[str]] = defaultdict(list)
    lookups, found = [], []
    engine.monitor.members("import os\nos.", "", analyze("import os\nos.", ""))  # load jedi
    engine.complete(CompletionRequest(prefix="import os\n", suffix="", max_tokens=4)
                    )                          # warm up
    cases = [h for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]
    for hole in tqdm(cases, desc="raw vs syntax-aware", unit="hole", disable=not progress):
        context = analyze(hole.prefix, hole.suffix)
        if hole.kind == "dot-identifier":
            start = time.perf_counter()
            members = engine.monitor.members(hole.prefix, hole.suffix, context)
            lookups.append((time.perf_counter() - start) * 1000)
            found.append(bool(members))
        for label, syntax in (("raw", False), ("syntax", True)):
            result = engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                       max_tokens=max_tokens, cursor_mode="exact",
                                                       syntax=syntax))
            if result.skipped:
                skipped[hole.kind].append(result.skipped)
            for key, value in score(result.text, result.tokens, result.total_ms, hole).items():
                rows[hole.kind][label][key].append(value)
    return report(rows, skipped, lookups, found, per_kind, max_tokens)


def report(rows, skipped, lookups: list[float], found: list[bool], per_kind: int,
           max_tokens: int) -> str:
    lines = [header(f"python -m benchmarks syntax --per-kind {per_kind}"),
             f"greedy, at most {max_tokens} tokens, exact cursor; holes from held-out files; "
             "`parses` is relative to the gold's (the original files all parse).", "",
             "| holes | run | n | EM first line | ES first line | EM middle | ES middle | "
             "parses | duplicates suffix | mean tokens | ms p50 / p95 |",
             "| --- " * 11 + "|"]
    total: dict[str, dict[str, list]] = {"raw": defaultdict(list), "syntax": defaultdict(list)}
    for kind in [*rows, "all"]:
        for label in ("raw", "syntax"):
            r = rows[kind][label] if kind != "all" else total[label]
            if kind != "all":
                for key, values in r.items():
                    total[label][key].extend(values)
            n = len(r["ms"])
            mean = {k: sum(r[k]) / max(n, 1) for k in METRICS}
            lines.append(
                f"| {kind} | {label} | {n} | {mean['em_first_line']:.1%} | "
                f"{mean['es_first_line']:.3f} | {mean['em_middle']:.1%} | {mean['es_middle']:.3f} | "
                f"{mean['parses']:.1%} | {mean['duplicates']:.1%} | {mean['tokens']:.1f} | "
                f"{percentile(r['ms'], 0.5):.0f} / {percentile(r['ms'], 0.95):.0f} |")
    declined = sum(len(v) for v in skipped.values())
    reasons = sorted({reason for v in skipped.values() for reason in v})
    lines += ["", f"Syntax-aware declined {declined} of {len(total['syntax']['ms'])} holes"
              + (f" ({'; '.join(reasons)})." if reasons else ".")]
    if lookups:
        in_budget = sum(ms <= 200 for ms in lookups) / len(lookups)
        lines.append(
            f"Monitor (jedi) on {len(lookups)} dot-identifier holes: members found for "
            f"{sum(found) / len(found):.0%}; lookup ms p50 {percentile(lookups, 0.5):.0f}, p95 "
            f"{percentile(lookups, 0.95):.0f}; {in_budget:.0%} within the 200 ms budget a "
            "request waits (the rest apply from the next keystroke, cached per document).")
    return "\n".join(lines)
