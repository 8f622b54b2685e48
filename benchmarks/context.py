"""`python -m benchmarks context`: completions with the workspace's context against without it,
side by side in one run, on packages the model never saw.

Each held-out package (realcode.py) is laid out as a workspace folder and indexed (files/s, the
database's size, the time from a cold workspace to its first completion are reported). Holes of
four kinds are cut from its files; each is completed three times by the same engine with the
defaults, the arms taking turns in first place: from the file alone; with what the index
retrieves for it (the hole's own file left out); and the same with the workspace drafter's table
(retrieval as drafts), whose completions must equal the second's. Scored against the text that
was there. Reported per kind: exact match of the first line, edit similarity of the middle, ms
p50 / p95 per completion (retrieval included), draft tokens accepted per decoding pass, and the
context's mean chunks, tokens and retrieval ms.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import header, model_option
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.context.drafts import workspace_table
from tokenfill.context.index import WorkspaceIndex
from tokenfill.context.retrieve import Retriever
from tokenfill.eval import holes, realcode
from tokenfill.eval.score import parses, score_middle
from tokenfill.eval.stats import percentile

KINDS = ("whole-line", "dot-identifier", "mid-line", "block-body")
ARMS = ("without", "with", "with + drafts")


def run(model: Path, per_kind: int = 50, budget: int | None = None, seed: int = 0,
        progress: bool = True) -> str:
    engine = Engine.load(model)
    budget = budget if budget is not None else engine.context // 4
    files = [(path, text) for path, text in realcode.files() if parses(text)]
    engine.complete(CompletionRequest(prefix="import os\n", suffix="", max_tokens=4))  # warm up
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path, text in files:   # "pkg-1.0/pkg/module.py": the package is the workspace
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        retrievers: dict[str, Retriever] = {}
        tables: dict = {}   # package -> the workspace drafter's n-gram table
        indexing: list[tuple[str, int, float, int]] = []
        first_completion: list[float] = []

        def retriever_for(package: str, hole: holes.Hole) -> Retriever:
            if package not in retrievers:
                start = time.perf_counter()
                index = WorkspaceIndex(root / package, cache=root / ".cache")
                stats = index.update()
                retrievers[package] = Retriever(index, lambda t: len(engine.tokenizer.encode(t)),
                                                budget)
                tables[package], _ = workspace_table(index, engine.tokenizer)
                got = retrievers[package].retrieve(hole.prefix, hole.suffix)
                engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                  extra=got.pieces))
                first_completion.append(time.perf_counter() - start)
                indexing.append((package, stats.seen, stats.seconds,
                                 index.db_path.stat().st_size))
            return retrievers[package]

        rows: dict[str, dict[str, dict[str, list]]] = defaultdict(
            lambda: {arm: defaultdict(list) for arm in ARMS})
        cases = [h for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]
        for k, hole in enumerate(tqdm(cases, desc="without vs with context", unit="hole",
                                      disable=not progress)):
            path = hole.id.split(":", 2)[1]
            package = path.split("/", 1)[0]
            retriever = retriever_for(package, hole)
            texts = {}
            for arm in ARMS[k % 3:] + ARMS[:k % 3]:  # each arm first in turn: warm caches
                engine.workspace_tables = {package: tables[package]} if arm == ARMS[2] else {}
                start = time.perf_counter()
                got = retriever.retrieve(hole.prefix, hole.suffix, str(root / path)) \
                    if arm != ARMS[0] else None
                result = engine.complete(CompletionRequest(
                    prefix=hole.prefix, suffix=hole.suffix, extra=got.pieces if got else (),
                    path=str(root / path), project=package))
                r = rows[hole.kind][arm]
                r["ms"].append((time.perf_counter() - start) * 1000)
                r["per_pass"].append(result.accepted / max(result.forwards, 1))
                texts[arm] = result.text
                for key, value in score_middle(result.text, hole.middle, hole.prefix,
                                               hole.suffix).items():
                    r[key].append(value)
                if got is not None:
                    r["chunks"].append(got.chunks)
                    r["tokens"].append(got.tokens)
                    r["retrieval_ms"].append(got.ms)
            assert texts[ARMS[1]] == texts[ARMS[2]], "drafts changed a completion"
        engine.workspace_tables = {}
    return report(rows, indexing, first_completion, per_kind, budget, model)


def report(rows, indexing, first_completion, per_kind: int, budget: int, model: Path) -> str:
    lines = [header(f"python -m benchmarks context --per-kind {per_kind}{model_option(model)}"),
             f"held-out packages as workspaces, the hole's file left out of retrieval; context "
             f"budget {budget} tokens (a quarter of the model's window, the default); greedy, "
             "defaults otherwise; with + drafts: the workspace drafter too (same completions).",
             "",
             "| holes | context | n | EM first line | ES middle | ms p50 / p95 | accepted per pass "
             "| chunks | context tokens | retrieval ms |",
             "| --- " * 10 + "|"]

    def mean(values: list) -> float:
        return sum(values) / max(len(values), 1)

    for kind, by in rows.items():
        for arm in ARMS:
            r = by[arm]
            extra = (f"{mean(r['chunks']):.1f} | {mean(r['tokens']):.0f} | "
                     f"{mean(r['retrieval_ms']):.1f}") if r["chunks"] else "— | — | —"
            lines.append(f"| {kind} | {arm} | {len(r['ms'])} | {mean(r['em_first_line']):.1%} | "
                         f"{mean(r['es_middle']):.3f} | {percentile(r['ms'], 0.5):.0f} / "
                         f"{percentile(r['ms'], 0.95):.0f} | {mean(r['per_pass']):.2f} | "
                         f"{extra} |")
    files = sum(n for _, n, _, _ in indexing)
    seconds = sum(s for _, _, s, _ in indexing)
    size = sum(b for _, _, _, b in indexing)
    lines += ["", f"Indexing {len(indexing)} workspaces: {files} files in {seconds:.1f} s "
              f"({files / max(seconds, 1e-9):.0f} files/s), {size / 2**20:.1f} MiB of SQLite; "
              f"cold workspace to first completion (index, n-gram table, retrieval, "
              f"completion): median {percentile([s * 1000 for s in first_completion], 0.5):.0f} "
              "ms."]
    return "\n".join(lines)
