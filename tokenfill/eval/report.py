"""`tokenfill eval all`: the default suite, one results file, one section of BENCHMARKS.md, plots.

The suite's limits are sized to finish within 30 minutes on 2 CPU cores with the bundled model.
The section of BENCHMARKS.md between the `eval` markers is rewritten; the rest is left alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from tokenfill.completion.engine import Engine
from tokenfill.eval import tasks as evaluation
from tokenfill.paths import BENCHMARKS_MD, BUNDLED_MODEL, PLOTS, REPO_ROOT
from tokenfill.runtime.hardware import describe_machine

BENCHMARKS = BENCHMARKS_MD

# task -> rows / holes per kind / files / cursors per kind for the default suite
SUITE = {"humaneval-single": 300, "humaneval-multi": 200, "humaneval-span-light": 164,
         "realcode": 40, "tokens": 20, "latency": 20}

PUBLISHED = """\
Published numbers, for reference only (none is on our data or, for HumanEval, with our metric):

| model | benchmark | metric | figure | source | same data as ours? |
| --- | --- | --- | --- | --- | --- |
| PyCoder (125M) | CodeXGLUE PY150 token-level | token accuracy | 77.12% | Takerngsaksiri et al., "Syntax-Aware On-the-Fly Code Completion" (2024) | no (PY150; ours: held-out PyPI packages) |
| PyCoder (125M) | CodeXGLUE PY150 line-level | exact match / edit similarity | 43.37% / 73.20 | same | no |
| CodeGPT (124M) | CodeXGLUE PY150 token-level | token accuracy | 75.69% | same | no |
| CodeGPT (124M) | CodeXGLUE PY150 line-level | exact match / edit similarity | 40.03% / 70.61 | same | no |
| SantaCoder-1.1B | single-line infilling (HumanEval-derived, Python; Allal et al. 2023) | line exact match | 44.0% | DeepSeek-Coder report (arXiv:2401.14196), Table 6 | related: HumanEval-derived, other version; not pass@1 |
| DeepSeek-Coder-Base-1.3B | same | line exact match | 57.4% | same | related: HumanEval-derived, other version; not pass@1 |
"""


def run_all(model: Path, *, seed: int = 0, out: Path | None = None, write_benchmarks: bool = True,
            dtype: str = "auto", progress: bool = True, cursor_mode: str = "exact") -> dict:
    engine = Engine.load(model, dtype=dtype)
    config = evaluation.EvalConfig(seed=seed, progress=progress, cursor_mode=cursor_mode)
    results = {"model": engine.name, "parameters": engine.model.config.num_parameters(),
               "date": date.today().isoformat(), "machine": describe_machine(), "seed": seed,
               "cursor_mode": cursor_mode,
               "command": "tokenfill eval all" + (
                   "" if Path(model).resolve() == BUNDLED_MODEL.resolve() else f" --model {model}")
               + ("" if cursor_mode == "exact" else f" --cursor-mode {cursor_mode}"),
               "tasks": {}}
    start = time.perf_counter()
    for name, limit in SUITE.items():
        try:
            results["tasks"][name] = evaluation.TASKS[name].run(engine, replace(config, limit=limit))
        except evaluation.TaskSkipped as e:
            results["tasks"][name] = {"task": name, "skipped": str(e)}
    results["minutes"] = (time.perf_counter() - start) / 60
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if write_benchmarks:
        plots = write_plots(results)
        update_benchmarks(render(results, plots))
    return results


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def render(results: dict, plots: list[Path]) -> str:
    tasks = results["tasks"]
    lines = [
        f"Model `{results['model']}` ({results['parameters'] / 1e6:.1f}M parameters), "
        f"{results['date']}, {results['machine']}; `{results['command']}` "
        f"(seed {results['seed']}, {results['minutes']:.1f} min).",
        "",
        "| HumanEval infilling | rows | pass@1 (rows) | pass@1 (problems) | ms p50 | ms p95 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("humaneval-single", "humaneval-multi", "humaneval-span-light"):
        t = tasks.get(name, {})
        if "skipped" in t or not t:
            lines.append(f"| {name} | skipped: {t.get('skipped', 'not run')} | | | | |")
        else:
            lines.append(f"| {name} | {t['rows']} | {pct(t['pass@1_rows'])} | "
                         f"{pct(t['pass@1_problems'])} | {t['ms_p50']:.0f} | {t['ms_p95']:.0f} |")
    real = tasks.get("realcode", {}).get("kinds", {})
    lines += ["", "| real-code hole kind | holes | first line EM | first line ES | middle EM | "
              "middle ES | parses after insertion |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, s in real.items():
        lines.append(f"| {kind} | {s['holes']} | {pct(s['em_first_line'])} | "
                     f"{s['es_first_line'] * 100:.1f} | {pct(s['em_middle'])} | "
                     f"{s['es_middle'] * 100:.1f} | {pct(s['parses'])} |")
    tok, lat = tasks.get("tokens", {}), tasks.get("latency", {})
    if "accuracy" in tok:
        lines += ["", f"Token-level accuracy (PyCoder-style, {tok['tokens_scored']} lexical tokens "
                      f"of held-out files, {pct(tok['coverage'])} of them scorable): "
                      f"**{pct(tok['accuracy'])}**."]
    if "ms_p50" in lat:
        lines += ["", f"Latency over {lat['cursors']} cursors: p50 {lat['ms_p50']:.0f} ms, "
                      f"p95 {lat['ms_p95']:.0f} ms, p99 {lat['ms_p99']:.0f} ms "
                      f"({lat['tokens_mean']:.1f} tokens per completion)."]
    lines += ["", *[f"![{p.stem}]({p.relative_to(REPO_ROOT).as_posix()})" for p in plots],
              "", PUBLISHED]
    return "\n".join(lines)


def write_plots(results: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    paths = []
    real = results["tasks"].get("realcode", {}).get("kinds", {})
    if real:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        kinds = list(real)
        ax.bar([k.replace("-", "\n") for k in kinds], [real[k]["em_first_line"] * 100 for k in kinds])
        ax.set_ylabel("first-line exact match (%)")
        ax.set_title(f"Exact match by hole kind: {results['model']}")
        fig.tight_layout()
        paths.append(PLOTS / "eval-exact-match-by-kind.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    lat = results["tasks"].get("latency", {})
    if lat.get("ms"):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(lat["ms"], bins=30)
        ax.set_xlabel("ms per completion")
        ax.set_ylabel("cursors")
        ax.set_title(f"Latency distribution: {results['model']}")
        fig.tight_layout()
        paths.append(PLOTS / "eval-latency.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def update_benchmarks(section: str, path: Path = BENCHMARKS) -> None:
    update_section("eval", section, path, title="Evaluation suite (`tokenfill eval all`)")


def update_section(name: str, section: str, path: Path = BENCHMARKS, title: str = "") -> None:
    """Rewrite the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`; where the
    markers are absent, append them under a heading (`title`, else the section's name)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {title or name}\n\n" + block + "\n"
    path.write_text(text)
