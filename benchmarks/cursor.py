"""`python -m benchmarks cursor`: cursors inside tokens, completed in each cursor mode.

Holes come from held-out files (realcode.py): the cursor at a random character strictly inside
an identifier, a number, a multi-character operator or a line's indentation, the middle the rest
of that line. Each hole has a control: the same hole with the cursor moved back to the start of
that token (its middle then holds the moved characters too). The score is exact match of the
completed line (the cursor's line up to the cursor, then the completion's first line), so both
holes of a pair are judged on the same line. The partial word is extra information: a mode
handles cursors inside tokens when it scores at least as well on them as on the controls.

The suffix side is measured the same way: the cursor at a token's start and the hole ending
strictly inside it (the text after the cursor starts mid-token), against the hole ending at the
token's end; the score is exact match of the middle.

Every mode runs in one process over the same holes, so the costs (ms per completion, forward
passes of the exact cursor) are measured side by side.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import header, model_option
from tokenfill.completion.cursor_modes import CURSOR_MODES
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes, realcode
from tokenfill.eval.score import similarity
from tokenfill.eval.stats import percentile


def completed_line(hole: holes.Hole, completion: str) -> str:
    return (hole.prefix.rsplit("\n", 1)[-1] + completion).split("\n", 1)[0].rstrip()


def gold_line(hole: holes.Hole) -> str:
    return completed_line(hole, hole.middle)


def word_done(kind: str, token: str, written: str) -> bool:
    """Does `written` (the text from the token's start) spell the token, and end it there?"""
    if not written.startswith(token):
        return False
    after = written[len(token):len(token) + 1]
    if kind == "indentation":
        return after not in (" ", "\t")
    if kind == "operator":
        return after == "" or after not in "=<>!+-*/%&|^.:@~"
    return after == "" or not (after.isalnum() or after == "_")


def run(model: Path, per_kind: int = 50, suffix_holes: int = 100, seed: int = 0,
        max_tokens: int = 48, out: Path | None = None, progress: bool = True) -> str:
    files = realcode.files()
    pairs = [p for kind in holes.TOKEN_KINDS for p in holes.cursor_pairs(files, kind, per_kind,
                                                                          seed)]
    suffix = holes.suffix_pairs(files, suffix_holes, seed)
    engine = Engine.load(model)
    engine.gate = None  # every completion is measured here; the gate has a bench of its own
    engine.complete(CompletionRequest(prefix="import os\n", suffix="", max_tokens=4))  # warm up
    hits: dict[tuple[str, str, str], list[bool]] = defaultdict(list)  # (mode, kind, side)
    similar: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # edit similarity
    words: dict[tuple[str, str, str], list[bool]] = defaultdict(list)  # the token completed
    ms: dict[str, list[float]] = defaultdict(list)
    passes: dict[str, list[int]] = defaultdict(list)
    ready: dict[str, list[float]] = defaultdict(list)  # ms until token-by-token decoding starts
    work = [(mode, pair) for pair in pairs for mode in CURSOR_MODES]
    for mode, pair in tqdm(work, desc="cursor holes", unit="hole", disable=not progress):
        for side, hole in (("inside", pair.inside), ("control", pair.control)):
            result = engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                       max_tokens=max_tokens, cursor_mode=mode))
            got, want = completed_line(hole, result.text), gold_line(hole)
            hits[mode, pair.kind, side].append(got == want)
            written = hole.prefix[len(pair.control.prefix):] + result.text
            words[mode, pair.kind, side].append(word_done(pair.kind, pair.token, written))
            similar[mode, pair.kind, side].append(similarity(got, want))
            if side == "inside":
                ms[mode].append(result.total_ms)
                passes[mode].append(max(result.cursor_passes - 1, 0))  # the first runs the prompt
                ready[mode].append(result.cursor_ms or result.prefill_ms)
    for mode, pair in tqdm([(m, p) for p in suffix for m in CURSOR_MODES], desc="suffix holes",
                           unit="hole", disable=not progress):
        for side, hole in (("inside", pair.inside), ("control", pair.control)):
            result = engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                       max_tokens=max_tokens, cursor_mode=mode))
            hits[mode, "suffix", side].append(result.text == hole.middle)
            words[mode, "suffix", side].append(result.text.startswith(hole.middle))
            similar[mode, "suffix", side].append(
                similarity(result.text, hole.middle))

    def rate(mode: str, kind: str, side: str, of: dict = hits) -> float:
        values = [v for (m, k, s), vs in of.items() if m == mode and s == side and
                  (k == kind or (kind == "all" and k != "suffix")) for v in vs]
        return sum(values) / max(len(values), 1)

    kinds = [*holes.TOKEN_KINDS, "all"]

    def by_kind(of: dict, unit: str) -> list[str]:
        """A table: a row per mode, a column per token kind, inside / control in each cell."""
        return ["| mode | " + " | ".join(f"{k} inside / control" for k in kinds) + " |",
                "| --- |" + " --- |" * len(kinds),
                *(f"| `{mode}` | " + " | ".join(
                    f"{rate(mode, k, 'inside', of) * 100:.1f}{unit} / "
                    f"{rate(mode, k, 'control', of) * 100:.1f}{unit}" for k in kinds) + " |"
                  for mode in CURSOR_MODES)]

    counts = {k: sum(1 for p in pairs if p.kind == k) for k in holes.TOKEN_KINDS}
    counts["all"] = len(pairs)
    per_kind = ", ".join(f"{counts[k]} {k}" for k in holes.TOKEN_KINDS)
    lines = [header(f"python -m benchmarks cursor{model_option(model)}"), "",
             f"{len(pairs)} held-out cursors strictly inside tokens ({per_kind}), "
             f"each with its control (cursor at the token's start); exact match of the completed "
             f"line, greedy, max {max_tokens} tokens.", "",
             *by_kind(hits, "%")]
    lines += ["", "The token completed: the text from the token's start spells the whole token and "
              "ends it there (the first thing a cursor inside a word needs), same holes:", "",
              *by_kind(words, "%")]
    lines += ["", "Edit similarity (0-100) of the completed line to the original, same holes:", "",
              *by_kind(similar, "")]
    lines += ["", "Cost on the cursors inside tokens, same run. Completions differ between modes, "
              "so whole-completion times mix the method's cost with what was generated; the "
              "time until token-by-token decoding starts (the prompt, plus for `exact` the bytes "
              "of the partial word) isolates it.", "",
              "| mode | ms per completion p50 / p95 | until token decoding p50 | added to that vs "
              "`none`, p50 of per-hole differences | extra forward passes (mean) |",
              "| --- | --- | --- | --- | --- |"]
    for mode in CURSOR_MODES:
        added = statistics.median(a - b for a, b in zip(ready[mode], ready["none"]))
        lines.append(f"| `{mode}` | {percentile(ms[mode], 0.5):.0f} / "
                     f"{percentile(ms[mode], 0.95):.0f} | {percentile(ready[mode], 0.5):.0f} | "
                     f"{added:+.1f} ms | {sum(passes[mode]) / max(len(passes[mode]), 1):.2f} |")
    lines += ["", f"Suffix side: {len(suffix)} holes from a token's start to a point strictly "
              "inside it (the suffix starts mid-token) against the same holes ending at the "
              "token's end; exact match of the middle.", "",
              "| mode | middle EM: suffix starts mid-token / control | completion starts with the "
              "middle: mid-token / control | middle edit similarity: mid-token / control |",
              "| --- | --- | --- | --- |"]
    for mode in CURSOR_MODES:
        lines.append(f"| `{mode}` | {rate(mode, 'suffix', 'inside') * 100:.1f}% / "
                     f"{rate(mode, 'suffix', 'control') * 100:.1f}% | "
                     f"{rate(mode, 'suffix', 'inside', words) * 100:.1f}% / "
                     f"{rate(mode, 'suffix', 'control', words) * 100:.1f}% | "
                     f"{rate(mode, 'suffix', 'inside', similar) * 100:.1f} / "
                     f"{rate(mode, 'suffix', 'control', similar) * 100:.1f} |")
    if out is not None:
        out.write_text(json.dumps({f"{m}/{k}/{s}": sum(v) / len(v) for (m, k, s), v in hits.items()}
                                  | {f"es/{m}/{k}/{s}": sum(v) / len(v)
                                     for (m, k, s), v in similar.items()}
                                  | {f"word/{m}/{k}/{s}": sum(v) / len(v)
                                     for (m, k, s), v in words.items()}
                                  | {f"ms_p50/{m}": percentile(v, 0.5) for m, v in ms.items()},
                                  indent=1))
    return "\n".join(lines)
