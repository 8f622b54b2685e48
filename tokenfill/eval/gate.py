"""Fitting a model's confidence gate (completion/confidence.py) on completions whose gold is known.

`observe` completes holes of every kind cut from files the model never trained on (the corpus's
held-out split) with the gate off, and keeps each completion's token statistics and whether it
was exactly right. `calibrate` fits the logistic regression on them, then picks:
- the threshold: the highest score at which `KEEP_RIGHT` of the exactly right completions are
  still shown (what is shown is then as precise as this recall allows);
- the exit threshold: a running score that `EXIT_SPARES` of the exactly right completions never
  fall under at any point after the first tokens (decoding stops below it).
`from_telemetry` refits it from what a person accepted and rejected in the language server
(saved locally; never sent anywhere).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenfill.completion.confidence import FEATURES, MIN_EXIT_TOKENS, Gate, TokenStats, fit
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes
from tokenfill.eval.score import score_middle

KINDS = ("whole-line", "mid-line", "block-body", "dot-identifier")
KEEP_RIGHT = 0.5       # share of exactly right completions the threshold keeps showing
EXIT_SPARES = 0.95     # share of exactly right completions the exit threshold never stops
MIN_TELEMETRY = 40     # completions shown before a refit from telemetry is worth it


@dataclass
class Observed:
    kind: str
    stats: TokenStats     # the tokens' statistics and the cursor's shape
    exact: bool           # the completion is the text that was there

    def features(self, upto: int | None = None) -> dict[str, float]:
        return self.stats.features(upto)


def observe(engine: Engine, files: list[tuple[str, str]], per_kind: int, seed: int = 0,
            kinds: Iterable[str] = KINDS, progress: bool = True) -> list[Observed]:
    """Complete `per_kind` holes of each kind with the gate off; those syntax declines are left
    out (the gate never sees them)."""
    from tqdm import tqdm

    cases = [h for kind in kinds for h in holes.cut(files, kind, per_kind, seed)]
    out = []
    for hole in tqdm(cases, desc="completing held-out holes", unit="hole", disable=not progress):
        result = engine.complete(CompletionRequest(prefix=hole.prefix, suffix=hole.suffix,
                                                   min_confidence=0.0))
        if result.skipped or result.stats is None or not len(result.stats):
            continue
        score = score_middle(result.text, hole.middle, hole.prefix, hole.suffix)
        out.append(Observed(hole.kind, result.stats, bool(score["em_middle"])))
    return out


def running_minimum(gate: Gate, seen: Observed) -> float:
    """The lowest running score a completion had after its first tokens (what early exit sees)."""
    n = len(seen.stats)
    if n < MIN_EXIT_TOKENS:
        return 1.0
    return min(gate.score(seen.features(k)) for k in range(MIN_EXIT_TOKENS, n + 1))


def calibrate(observed: list[Observed], described: str) -> Gate:
    """The gate fitted on `observed`, with its thresholds (see the module's doc)."""
    labels = [o.exact for o in observed]
    if sum(labels) < 2 or sum(labels) == len(labels):
        raise ValueError(f"cannot fit a gate on {len(labels)} completions of which "
                         f"{sum(labels)} are exactly right: both kinds are needed")
    weights, bias, mean, scale = fit([o.features() for o in observed], labels)
    gate = Gate(weights, bias, mean, scale)
    scores = [gate.score(o.features()) for o in observed]
    right = sorted((s for s, ok in zip(scores, labels) if ok), reverse=True)
    gate.threshold = right[max(math.ceil(len(right) * KEEP_RIGHT) - 1, 0)]
    minima = sorted(running_minimum(gate, o) for o, ok in zip(observed, labels) if ok)
    gate.exit_threshold = min(minima[int(len(minima) * (1 - EXIT_SPARES))], gate.threshold)
    shown = [ok for s, ok in zip(scores, labels) if s >= gate.threshold]
    gate.fitted = {"on": described, "completions": len(observed), "exactly_right": len(right),
                   "ungated_precision": round(len(right) / len(observed), 4),
                   "precision_at_threshold": round(sum(shown) / max(len(shown), 1), 4),
                   "shown_at_threshold": round(len(shown) / len(observed), 4)}
    return gate


# --- refitting from what a person kept ---------------------------------------------------------

def from_telemetry(path: Path, base: Gate | None) -> Gate:
    """A gate refitted on the language server's saved outcomes (JSON lines: `features`,
    `accepted`), its threshold set to keep KEEP_RIGHT of what was accepted; ValueError when there
    are too few to learn from."""
    rows, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                rows.append({k: float(record["features"][k]) for k in FEATURES})
                labels.append(bool(record["accepted"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: the rest still count
    if len(rows) < MIN_TELEMETRY or not 0 < sum(labels) < len(labels):
        raise ValueError(f"{path}: {len(rows)} completions shown, {sum(labels)} accepted; at "
                         f"least {MIN_TELEMETRY}, with some accepted and some not, are needed")
    weights, bias, mean, scale = fit(rows, labels)
    gate = Gate(weights, bias, mean, scale)
    kept = sorted((gate.score(r) for r, ok in zip(rows, labels) if ok), reverse=True)
    gate.threshold = kept[max(math.ceil(len(kept) * KEEP_RIGHT) - 1, 0)]
    gate.exit_threshold = min(base.exit_threshold, gate.threshold) if base is not None else 0.0
    gate.fitted = {"on": f"{len(rows)} completions shown in the editor ({path})",
                   "accepted": sum(labels), "refitted_from": base.fitted if base else None}
    return gate

