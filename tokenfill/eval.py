"""`tokenfill eval TASK`: benchmarks others use, run the same way every time.

Tasks live in TASKS, each an object with `name` and `run(engine, config) -> dict`. The HumanEval
infilling tasks complete each row's hole (prompt | suffix) and run the problem's unit tests on
prefix + completion + suffix in the sandbox (sandbox.py); pass@1 is reported over rows and over
the 164 problems (each problem's pass rate averaged), as the data's README asks.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import sandbox
from .completion import Engine

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
HUMANEVAL_DIR = SHARED_DATA / "humaneval-infilling"


class TaskSkipped(Exception):
    """The task cannot run here (its data is absent); the message says why."""


@dataclass
class EvalConfig:
    limit: int = 0          # 0: every row
    seed: int = 0
    max_tokens: int = 128
    progress: bool = True


def humaneval_problem(task_id: str) -> str:
    """'SingleLineInfilling/HumanEval/0/L3' -> 'HumanEval/0'."""
    parts = task_id.split("/")
    return "/".join(parts[1:3])


def humaneval_program(row: dict, completion: str) -> str:
    return (row["prompt"] + completion + row["suffix"] + "\n\n" + row["test"] +
            f"\n\ncheck({row['entry_point']})\n")


@dataclass
class HumanEvalInfilling:
    name: str
    filename: str
    limits: sandbox.Limits = sandbox.Limits(wall_s=10, cpu_s=10, memory_bytes=1 << 30)

    def rows(self, config: EvalConfig) -> list[dict]:
        path = HUMANEVAL_DIR / self.filename
        if not path.is_file():
            raise TaskSkipped(f"{path} is absent: the HumanEval data lives in ../shared/data")
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
        if config.limit and config.limit < len(rows):
            rows = random.Random(config.seed).sample(rows, config.limit)
        return rows

    def run(self, engine: Engine, config: EvalConfig) -> dict:
        rows = self.rows(config)
        per_problem: dict[str, list[bool]] = defaultdict(list)
        ms = []
        for row in tqdm(rows, desc=self.name, unit="row", disable=not config.progress):
            start = time.perf_counter()
            completion = engine.complete(row["prompt"], row["suffix"],
                                         max_tokens=config.max_tokens).text
            ms.append((time.perf_counter() - start) * 1000)
            outcome = sandbox.run(humaneval_program(row, completion), self.limits)
            per_problem[humaneval_problem(row["task_id"])].append(outcome.passed)
        passed = [p for results in per_problem.values() for p in results]
        by_problem = [sum(r) / len(r) for r in per_problem.values()]
        ms.sort()
        return {
            "task": self.name, "rows": len(passed), "problems": len(per_problem),
            "pass@1_rows": sum(passed) / len(passed),
            "pass@1_problems": sum(by_problem) / len(by_problem),
            "ms_p50": ms[len(ms) // 2], "ms_p95": ms[min(len(ms) - 1, int(len(ms) * 0.95))],
        }


TASKS = {t.name: t for t in [
    HumanEvalInfilling("humaneval-single", "HumanEval-SingleLineInfilling.jsonl.gz"),
    HumanEvalInfilling("humaneval-multi", "HumanEval-MultiLineInfilling.jsonl.gz"),
    HumanEvalInfilling("humaneval-span-light", "HumanEval-RandomSpanInfillingLight.jsonl.gz"),
]}
