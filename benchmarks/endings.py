"""`python -m benchmarks endings`: where completions end, with and without the end guard, side by
side in one run.

With syntax on, the end guard (stops.EndGuard) keeps the end-of-middle token back until the line
or block the syntax layer chose can be complete. Each hole is completed greedily twice by the same
engine, the guard off and on; everything else is the default (exact cursor, syntax on, speculative
decoding). Holes: held-out packages (realcode.py), whole-line, mid-line, block-body and
dot-identifier; and HumanEval single-line infilling rows, whose completions are also run against
the problem's tests (pass@1).

Reported: exact match of the first line, edit similarity of the middle, the share of files that
parse with the completion in place, the share of completions that end too early (fewer than half
of the gold's characters) and that run on (more non-blank lines than the gold), mean ms.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import header, model_option
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes, realcode, sandbox
from tokenfill.eval.score import parses, score_middle
from tokenfill.eval.stats import percentile
from tokenfill.eval.tasks import TaskSkipped, humaneval_program, humaneval_rows

KINDS = ("whole-line", "mid-line", "block-body", "dot-identifier")
HUMANEVAL = "humaneval single-line"
LIMITS = sandbox.Limits(wall_s=10, cpu_s=10, memory_bytes=1 << 30)


def run(model: Path, per_kind: int = 50, humaneval: int = 200, max_tokens: int = 64,
        seed: int = 0, progress: bool = True) -> str:
    engine = Engine.load(model)
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
    files = [(path, text) for path, text in realcode.files() if parses(text)]
    cases = [(h.kind, h.prefix, h.middle, h.suffix, None)
             for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]
    try:
        cases += [(HUMANEVAL, r["prompt"], r["canonical_solution"], r["suffix"], r)
                  for r in humaneval_rows("HumanEval-SingleLineInfilling.jsonl.gz", humaneval, seed)]
    except TaskSkipped:
        pass
    engine.complete(CompletionRequest(prefix="import os\n", suffix="", max_tokens=4))  # warm up
    rows: dict[str, dict[bool, dict[str, list]]] = defaultdict(
        lambda: {False: defaultdict(list), True: defaultdict(list)})
    for kind, prefix, middle, suffix, row in tqdm(cases, desc="guard off vs on", unit="hole",
                                                  disable=not progress):
        for guard in (False, True):
            engine.hold_end = guard
            start = time.perf_counter()
            got = engine.complete(CompletionRequest(prefix=prefix, suffix=suffix,
                                                    max_tokens=max_tokens)).text
            figures = rows[kind][guard]
            figures["ms"].append((time.perf_counter() - start) * 1000)
            for key, value in score_middle(got, middle, prefix, suffix).items():
                figures[key].append(value)
            if row is not None:
                figures["pass"].append(sandbox.run(humaneval_program(row, got), LIMITS).passed)
    engine.hold_end = True
    return report(rows, per_kind, humaneval, max_tokens, model)


def report(rows, per_kind: int, humaneval: int, max_tokens: int, model: Path) -> str:
    command = (f"python -m benchmarks endings --per-kind {per_kind} --limit {humaneval}"
               f"{model_option(model)}")
    lines = [header(command),
             f"greedy, at most {max_tokens} tokens, defaults otherwise; too early: fewer than half "
             "of the gold's characters; runs on: more non-blank lines than the gold.", "",
             "| holes | end guard | n | EM first line | ES middle | parses | too early | runs on "
             "| pass@1 | ms p50 |",
             "| --- " * 10 + "|"]
    for kind, by_guard in rows.items():
        for guard in (False, True):
            r = by_guard[guard]
            n = len(r["ms"])

            def mean(key: str) -> float:
                return sum(r[key]) / max(len(r[key]), 1)

            passed = f"{mean('pass'):.1%}" if r["pass"] else "—"
            lines.append(
                f"| {kind} | {'on' if guard else 'off'} | {n} | {mean('em_first_line'):.1%} | "
                f"{mean('es_middle'):.3f} | {mean('parses'):.1%} | {mean('too_short'):.1%} | "
                f"{mean('runs_on'):.1%} | {passed} | {percentile(r['ms'], 0.5):.0f} |")
    return "\n".join(lines)
