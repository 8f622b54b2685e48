"""`python -m benchmarks endings`: where completions end and what the name after a dot is, each
rule off and on, side by side in one run.

Arms, each hole completed greedily by the same engine once per arm (defaults otherwise: exact
cursor, syntax on, speculative decoding):
- `guard off, blocks`: no end guard, and a block wherever a line starts (the rules before both);
- `guard on, blocks`: the end guard (stops.EndGuard) keeps the end-of-middle token back until the
  line or block the syntax layer chose can be complete;
- `defaults`: also one line where a line is inserted between statements (syntax.between_statements);
- `no member prior` (dot-identifier holes only): the defaults less the prior that weighs the names
  the file uses with the receiver (usage.py).
Holes: held-out packages (realcode.py), whole-line, mid-line, block-body and dot-identifier; and
HumanEval single-line and multi-line infilling rows, whose completions are also run against the
problem's tests (pass@1).

Reported: exact match of the first line, the name after the dot right (dot-identifier), edit
similarity of the middle, the share of files that parse with the completion in place, the share
of completions that end too early (fewer than half of the gold's characters) and that run on
(more non-blank lines than the gold), pass@1, ms p50.
"""

from __future__ import annotations

import re
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
HUMANEVAL = {"humaneval single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
             "humaneval multi-line": "HumanEval-MultiLineInfilling.jsonl.gz"}
LIMITS = sandbox.Limits(wall_s=10, cpu_s=10, memory_bytes=1 << 30)
# arm: (end guard, one line between statements, member prior)
ARMS = {"guard off, blocks": (False, False, True), "guard on, blocks": (True, False, True),
        "defaults": (True, True, True), "no member prior": (True, True, False)}
NAME = re.compile(r"\w*")


def arms_for(kind: str) -> list[str]:
    return [arm for arm in ARMS if arm != "no member prior" or kind == "dot-identifier"]


def run(model: Path, per_kind: int = 50, humaneval: int = 200, max_tokens: int = 64,
        seed: int = 0, progress: bool = True) -> str:
    engine = Engine.load(model)
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
    files = [(path, text) for path, text in realcode.files() if parses(text)]
    cases = [(h.kind, h.prefix, h.middle, h.suffix, None)
             for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]
    for kind, filename in HUMANEVAL.items():
        try:
            cases += [(kind, r["prompt"], r["canonical_solution"], r["suffix"], r)
                      for r in humaneval_rows(filename, humaneval, seed)]
        except TaskSkipped:
            pass
    engine.complete(CompletionRequest(prefix="import os\n", suffix="", max_tokens=4))  # warm up
    rows: dict[str, dict[str, dict[str, list]]] = defaultdict(
        lambda: {arm: defaultdict(list) for arm in ARMS})
    try:
        for kind, prefix, middle, suffix, row in tqdm(cases, desc="rules off vs on", unit="hole",
                                                      disable=not progress):
            for arm in arms_for(kind):
                engine.hold_end, engine.lines_between, engine.member_prior = ARMS[arm]
                start = time.perf_counter()
                got = engine.complete(CompletionRequest(prefix=prefix, suffix=suffix,
                                                        max_tokens=max_tokens)).text
                figures = rows[kind][arm]
                figures["ms"].append((time.perf_counter() - start) * 1000)
                for key, value in score_middle(got, middle, prefix, suffix).items():
                    figures[key].append(value)
                if kind == "dot-identifier":
                    figures["name"].append(NAME.match(got).group(0) == NAME.match(middle).group(0))
                if row is not None:
                    figures["pass"].append(sandbox.run(humaneval_program(row, got),
                                                       LIMITS).passed)
    finally:
        engine.hold_end, engine.lines_between, engine.member_prior = ARMS["defaults"]
    return report(rows, per_kind, humaneval, max_tokens, model)


def report(rows, per_kind: int, humaneval: int, max_tokens: int, model: Path) -> str:
    command = (f"python -m benchmarks endings --per-kind {per_kind} --limit {humaneval}"
               f"{model_option(model)}")
    lines = [header(command),
             f"greedy, at most {max_tokens} tokens, defaults otherwise; arms: `guard off, blocks` "
             "(no end guard, a block wherever a line starts), `guard on, blocks` (the end guard), "
             "`defaults` (also one line between statements), `no member prior` (the defaults "
             "less the member prior); too early: fewer than half of the gold's characters; runs "
             "on: more non-blank lines than the gold; name: the name after the dot right.", "",
             "| holes | arm | n | EM first line | name | ES middle | parses | too early | runs on "
             "| pass@1 | ms p50 |",
             "| --- " * 11 + "|"]
    for kind, by_arm in rows.items():
        for arm in arms_for(kind):
            r = by_arm[arm]

            def mean(key: str) -> str:
                return f"{sum(r[key]) / len(r[key]):.1%}" if r[key] else "—"

            lines.append(
                f"| {kind} | {arm} | {len(r['ms'])} | {mean('em_first_line')} | {mean('name')} | "
                f"{sum(r['es_middle']) / max(len(r['es_middle']), 1):.3f} | {mean('parses')} | "
                f"{mean('too_short')} | {mean('runs_on')} | {mean('pass')} | "
                f"{percentile(r['ms'], 0.5):.0f} |")
    return "\n".join(lines)
