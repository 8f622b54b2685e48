"""`python -m benchmarks humaneval`: `tokenfill batch` (the real command, as a subprocess) on
HumanEval single-line infilling from ../shared/data: exact match of the completion's first line
against the canonical solution's (eval/score.py), ms per completion, completions/s."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import header, model_option
from tokenfill.eval.score import same_first_line
from tokenfill.eval.stats import percentile
from tokenfill.eval.tasks import TaskSkipped, humaneval_rows
from tokenfill.paths import HUMANEVAL_SINGLE


def bench_humaneval(model_dir: Path, limit: int = 0, dtype: str = "auto") -> str:
    """A markdown table: exact match of the first line, latency, throughput of `tokenfill batch`."""
    try:
        rows = humaneval_rows(HUMANEVAL_SINGLE.name, limit)
    except TaskSkipped as e:
        return f"skipped: {e}"
    with tempfile.TemporaryDirectory() as tmp:
        tasks, out = Path(tmp) / "tasks.jsonl", Path(tmp) / "out.jsonl"
        with open(tasks, "w") as f:
            for i, row in enumerate(rows):
                f.write(json.dumps({"id": f"{row['task_id']}#{i}", "prefix": row["prompt"],
                                    "suffix": row["suffix"]}) + "\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tokenfill", "batch", str(tasks), "-o", str(out),
                        "--model", str(model_dir), "--dtype", dtype, "--max-tokens", "64"],
                       check=True)
        wall = time.perf_counter() - start
        results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == len(rows), "tokenfill batch dropped tasks"
    exact = sum(same_first_line(r["completion"], row["canonical_solution"])
                for r, row in zip(results, rows))
    ms = [r["ms"] for r in results]
    p50, p95 = percentile(ms, 0.5), percentile(ms, 0.95)
    tokens = statistics.mean(r["tokens"] for r in results)
    return "\n".join([
        header(f"python -m benchmarks humaneval{model_option(model_dir)}" +
               (f" --limit {limit}" if limit else "")),
        "",
        "| tasks | first-line exact match | ms p50 | ms p95 | completions/s (incl. load) | "
        "tokens/completion |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {len(rows)} | {exact / len(rows) * 100:.1f}% ({exact}) | {p50:.0f} | {p95:.0f} | "
        f"{len(rows) / wall:.1f} | {tokens:.1f} |",
    ])
