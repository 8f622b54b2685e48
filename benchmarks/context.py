"""`python -m benchmarks context`: completions with the workspace's context against without it,
side by side in one run, on packages the model never saw.

Each held-out package (realcode.py) is laid out as a workspace folder and indexed. Holes of four
kinds are cut from its files; each is completed four times by the same engine with the defaults,
the arms taking turns in first place: from the file alone; with what the index retrieves for it
(the hole's own file left out) in the default layout (`# path` headers for a family without a
file separator); the same pieces bare, without headers (what the layout adds); and the default
with the workspace drafter's table (retrieval as drafts), whose completions must equal the
second's. Scored against the text that was there. Reported per kind: exact match of the first
line, edit similarity of the middle, ms p50 / p95 per completion (retrieval included), draft
tokens accepted per decoding pass, and the context's mean chunks, tokens and retrieval ms.

Indexing is measured twice: the held-out packages (files/s, the database's size), and a large
workspace, the installed `torch` package's Python files, as a server or language server meets
it: indexed by its background thread while completions are asked for from the first moment
(time to the first completion, ms p50 while indexing and after, files/s, index size, and the
growth of the process's peak memory).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import header, model_option
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.context.drafts import workspace_table
from tokenfill.context.index import WorkspaceIndex
from tokenfill.context.retrieve import Retriever
from tokenfill.context.workspace import Workspace
from tokenfill.eval import holes, realcode
from tokenfill.eval.score import parses, score_middle
from tokenfill.eval.stats import percentile

KINDS = ("whole-line", "dot-identifier", "mid-line", "block-body")
ARMS = ("without", "with", "with, bare", "with + drafts")


def run(model: Path, per_kind: int = 50, budget: int | None = None, seed: int = 0,
        progress: bool = True, large_workspace: bool = True) -> str:
    engine = Engine.load(model)
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
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
                                 index.size_bytes()))
            return retrievers[package]

        rows: dict[str, dict[str, dict[str, list]]] = defaultdict(
            lambda: {arm: defaultdict(list) for arm in ARMS})
        cases = [h for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]
        differ = 0
        for k, hole in enumerate(tqdm(cases, desc="without vs with context", unit="hole",
                                      disable=not progress)):
            path = hole.id.split(":", 2)[1]
            package = path.split("/", 1)[0]
            retriever = retriever_for(package, hole)
            texts = {}
            turn = k % len(ARMS)
            for arm in ARMS[turn:] + ARMS[:turn]:  # each arm first in turn: warm caches
                engine.workspace_tables = {package: tables[package]} if arm == ARMS[3] else {}
                engine.context_layout = "bare" if arm == ARMS[2] else "auto"
                start = time.perf_counter()
                retriever.last.clear()  # each arm retrieves afresh: cold completions, all timed
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
            # greedy drafts keep the model's own choices; in bf16 a pass over another tree's
            # shape rounds differently, which can flip a near tie: counted, not hidden
            differ += texts[ARMS[1]] != texts[ARMS[3]]
        engine.workspace_tables = {}
        engine.context_layout = "auto"
        large = cold_workspace(engine, budget, root / ".cache-large") if large_workspace else None
    return report(rows, indexing, first_completion, per_kind, budget, model, large,
                  (differ, len(cases)))


LARGE = Path(torch.__file__).parent   # thousands of Python files, on every machine that runs us
LARGE_PROMPTS = 8                       # cursors completed in turn while the index builds


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cold_workspace(engine: Engine, budget: int, cache: Path) -> dict:
    """A large workspace indexed by its background thread while completions go on."""
    sources = sorted(p for p in (LARGE / "nn").glob("*.py") if p.stat().st_size > 4000)
    cursors = []
    for path in sources[:LARGE_PROMPTS]:
        text = path.read_text()
        cut = text.index("\n", len(text) // 2) + 1
        cursors.append((str(path), text[:cut], text[cut:]))
    peak_before = peak_rss_bytes()
    start = time.perf_counter()
    ws = Workspace(LARGE, budget=budget, count_tokens=lambda t: len(engine.tokenizer.encode(t)),
                   tokenizer=engine.tokenizer, on_table=engine.workspace_tables.__setitem__,
                   cache=cache).start()
    during, after, chunks = [], [], []
    first = None
    k = 0
    try:
        while not ws.ready.is_set() or len(after) < 2 * LARGE_PROMPTS:
            indexing = not ws.ready.is_set()
            path, prefix, suffix = cursors[k % len(cursors)]
            k += 1
            t = time.perf_counter()
            got = ws.retrieve(prefix, suffix, path)
            engine.complete(CompletionRequest(prefix=prefix, suffix=suffix, extra=got.pieces,
                                              path=path, project=str(ws.root)))
            now = time.perf_counter()
            first = first if first is not None else now - start
            (during if indexing else after).append((now - t) * 1000)
            if not indexing:
                chunks.append(got.chunks)
        stats = ws.stats
        return {"files": stats.seen, "indexed": stats.indexed, "seconds": stats.seconds,
                "mib": ws.index.size_bytes() / 2**20, "first_ms": first * 1000,
                "during": during, "after": after, "chunks": sum(chunks) / max(len(chunks), 1),
                "peak_mib": (peak_rss_bytes() - peak_before) / 2**20}
    finally:
        ws.close()
        engine.workspace_tables = {}


def report(rows, indexing, first_completion, per_kind: int, budget: int, model: Path,
           large: dict | None = None, differ: tuple[int, int] = (0, 0)) -> str:
    lines = [header(f"python -m benchmarks context --per-kind {per_kind}{model_option(model)}"),
             f"held-out packages as workspaces, the hole's file left out of retrieval; context "
             f"budget {budget} tokens (a quarter of the model's window, the default); greedy, "
             "defaults otherwise; with: `# path` headers (the default layout for this family); "
             "bare: the same pieces without headers; with + drafts: the workspace drafter too "
             f"(completions differing from `with`: {differ[0]} of {differ[1]}, near ties rounded "
             "otherwise by another tree's shape).",
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
    if large is not None:
        lines += ["", f"A large cold workspace (the installed torch package, {large['files']:,} "
                  f"Python files) indexed in the background: {large['seconds']:.1f} s "
                  f"({large['files'] / max(large['seconds'], 1e-9):.0f} files/s), "
                  f"{large['mib']:.0f} MiB of SQLite, peak memory +{large['peak_mib']:.0f} MiB; "
                  f"first completion {large['first_ms']:.0f} ms after the start (the index "
                  f"still building); ms per completion p50 {percentile(large['during'], 0.5):.0f} "
                  f"while indexing ({len(large['during'])} completions) and "
                  f"{percentile(large['after'], 0.5):.0f} after ({len(large['after'])}, "
                  f"{large['chunks']:.1f} chunks each)."]
    return "\n".join(lines)
