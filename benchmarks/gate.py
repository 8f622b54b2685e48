"""`python -m benchmarks gate`: the confidence gate on code the model never saw.

Two sets: holes of every kind cut from the held-out packages (realcode.py), and HumanEval
single-line infilling. Each hole is completed twice by the same engine with the defaults,
automatically (as an editor asks while a person types), in turn first: with the gate off
(`min_confidence` 0: everything shown) and with the gate on at its default threshold (early
exit, cuts and all). Reported:
- the curve: for thresholds on the ungated run's scores, the share shown, the precision of what
  is shown (exact match, and edit similarity >= 0.8) and the share of the exactly right
  completions still shown;
- at the default, as the gated run actually did: precision against the ungated precision, the
  exactly right ones still shown, tokens generated and ms per request against no gate.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import header, model_option
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes, realcode
from tokenfill.eval.gate import KINDS
from tokenfill.eval.score import parses, score_middle
from tokenfill.eval.stats import percentile
from tokenfill.eval.tasks import TaskSkipped, humaneval_rows

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def cases(per_kind: int, humaneval: int, seed: int = 0) -> dict[str, list[holes.Hole]]:
    files = [(p, t) for p, t in realcode.files() if parses(t)]
    out = {"real code": [h for kind in KINDS for h in holes.cut(files, kind, per_kind, seed)]}
    try:
        rows = humaneval_rows("HumanEval-SingleLineInfilling.jsonl.gz", humaneval, seed)
        out["humaneval single-line"] = [holes.Hole(r["task_id"], "humaneval", r["prompt"],
                                                   r["canonical_solution"], r["suffix"])
                                        for r in rows]
    except TaskSkipped:
        pass
    return out


def run(model: Path, per_kind: int = 100, humaneval: int = 300, progress: bool = True) -> str:
    engine = Engine.load(model)
    if engine.gate is None:
        raise SystemExit(f"{model} has no gate.json: fit one with `tokenfill gate --corpus ...`")
    engine.complete(CompletionRequest(prefix="import os\n", max_tokens=4))  # warm up
    results: dict[str, list[dict]] = defaultdict(list)
    for name, todo in cases(per_kind, humaneval).items():
        for k, hole in enumerate(tqdm(todo, desc=name, unit="hole", disable=not progress)):
            row = {}
            for arm in (("off", "on") if k % 2 == 0 else ("on", "off")):
                result = engine.complete(CompletionRequest(
                    prefix=hole.prefix, suffix=hole.suffix,
                    min_confidence=0.0 if arm == "off" else None))
                score = score_middle(result.text, hole.middle, hole.prefix, hole.suffix)
                row[arm] = {"shown": bool(result.text.strip()), "declined": result.skipped,
                            "confidence": result.confidence,
                            "exact": bool(score["em_middle"]) and bool(result.text),
                            "close": score["es_middle"] >= 0.8 and bool(result.text),
                            "tokens": result.tokens, "ms": result.total_ms}
            if row["off"]["declined"] and row["off"]["declined"] != "low confidence":
                continue  # declined by syntax either way: the gate never saw it
            results[name].append(row)
    return report(results, engine.gate, per_kind, humaneval, model)


def report(results: dict[str, list[dict]], gate, per_kind: int, humaneval: int,
           model: Path) -> str:
    lines = [header(f"python -m benchmarks gate --per-kind {per_kind} --limit {humaneval}"
                    f"{model_option(model)}"),
             f"automatic requests, greedy, defaults otherwise; the gate beside the model: "
             f"threshold {gate.threshold:.3f}, early exit under {gate.exit_threshold:.3f}, "
             f"fitted on {gate.fitted.get('on', '?')}. Precision: of the completions shown, the "
             "share exactly right (EM) or within edit similarity 0.8 (ES); right kept: the "
             "share of the exactly right (ungated) completions still shown. Shown: a completion "
             "with text (an empty one shows nothing, gate or not).", ""]
    for name, rows in results.items():
        off = [r["off"] for r in rows]
        right = sum(o["exact"] for o in off)
        lines += [f"**{name}** ({len(rows)} completions, {right} exactly right ungated)", "",
                  "| threshold | shown | precision EM | precision ES | right kept |",
                  "| --- | --- | --- | --- | --- |"]
        for t in THRESHOLDS:
            shown = [o for o in off if o["shown"] and (o["confidence"] is None
                                                       or o["confidence"] >= t)]
            lines.append(f"| {t:.2f} | {len(shown) / max(len(off), 1):.1%} | "
                         f"{precision(shown, 'exact'):.1%} | {precision(shown, 'close'):.1%} | "
                         f"{sum(o['exact'] for o in shown) / max(right, 1):.1%} |")
        on = [r["on"] for r in rows]
        shown_off = [o for o in off if o["shown"]]
        shown_on = [o for o in on if o["shown"]]
        kept = sum(r["on"]["exact"] for r in rows if r["off"]["exact"])
        tokens_off, tokens_on = sum(o["tokens"] for o in off), sum(o["tokens"] for o in on)
        lines += ["", "| at the default | shown | precision EM | precision ES | right kept | "
                      "tokens generated | ms p50 / mean |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| no gate | {len(shown_off) / max(len(off), 1):.1%} | "
                  f"{precision(shown_off, 'exact'):.1%} | "
                  f"{precision(shown_off, 'close'):.1%} | 100% | {tokens_off} | "
                  f"{percentile([o['ms'] for o in off], 0.5):.0f} / {mean_ms(off):.0f} |",
                  f"| gate | {len(shown_on) / max(len(on), 1):.1%} | "
                  f"{precision(shown_on, 'exact'):.1%} | {precision(shown_on, 'close'):.1%} | "
                  f"{kept / max(right, 1):.1%} | {tokens_on} "
                  f"({1 - tokens_on / max(tokens_off, 1):.0%} fewer) | "
                  f"{percentile([o['ms'] for o in on], 0.5):.0f} / {mean_ms(on):.0f} |", ""]
    return "\n".join(lines).rstrip()


def precision(shown: list[dict], key: str) -> float:
    return sum(o[key] for o in shown) / max(len(shown), 1)


def mean_ms(rows: list[dict]) -> float:
    return sum(o["ms"] for o in rows) / max(len(rows), 1)
