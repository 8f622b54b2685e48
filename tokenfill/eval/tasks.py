"""`tokenfill eval TASK`: benchmarks others use, run the same way every time.

Tasks live in TASKS, each an object with `name` and `run(engine, config) -> dict`:
- `humaneval-single`, `humaneval-multi`, `humaneval-span-light`: each row's hole (prompt | suffix)
  is completed and the problem's unit tests run on prefix + completion + suffix in the sandbox
  (sandbox.py); pass@1 over rows and over the 164 problems (each problem's pass rate averaged).
- `realcode`: holes of five kinds (holes.py) cut from held-out packages (realcode.py): exact
  match and edit similarity of the first line and of the whole middle, parse rate after insertion.
- `tokens`: PyCoder-style token-level accuracy on held-out files.
- `latency`: ms per completion (p50, p95, p99) over a fixed set of cursors.
"""

from __future__ import annotations

import gzip
import json
import random
import time
import tokenize
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm import tqdm

from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval import holes, realcode, sandbox
from tokenfill.eval.score import same_first_line, score_middle
from tokenfill.eval.stats import percentile
from tokenfill.paths import HUMANEVAL_DIR


class TaskSkipped(Exception):
    """The task cannot run here (its data is absent); the message says why."""


@dataclass
class EvalConfig:
    limit: int = 0          # 0: every row
    seed: int = 0
    max_tokens: int = 128
    progress: bool = True
    cursor_mode: str = "exact"  # how a cursor inside a token is handled (cursor_modes.py)

    def request(self, prefix: str, suffix: str) -> CompletionRequest:
        return CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=self.max_tokens,
                                 cursor_mode=self.cursor_mode)


def humaneval_problem(task_id: str) -> str:
    """'SingleLineInfilling/HumanEval/0/L3' -> 'HumanEval/0'."""
    parts = task_id.split("/")
    return "/".join(parts[1:3])


def humaneval_rows(filename: str, limit: int = 0, seed: int = 0) -> list[dict]:
    """The rows of one HumanEval infilling file; `limit` of them drawn with `seed` (0: all)."""
    path = HUMANEVAL_DIR / filename
    if not path.is_file():
        raise TaskSkipped(f"{path} is absent: the HumanEval data lives in ../shared/data")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def humaneval_program(row: dict, completion: str) -> str:
    return (row["prompt"] + completion + row["suffix"] + "\n\n" + row["test"] +
            f"\n\ncheck({row['entry_point']})\n")


@dataclass
class HumanEvalInfilling:
    name: str
    filename: str
    limits: sandbox.Limits = sandbox.Limits(wall_s=10, cpu_s=10, memory_bytes=1 << 30)

    def run(self, engine: Engine, config: EvalConfig) -> dict:
        rows = humaneval_rows(self.filename, config.limit, config.seed)
        per_problem: dict[str, list[bool]] = defaultdict(list)
        ms, first_lines = [], []
        for row in tqdm(rows, desc=self.name, unit="row", disable=not config.progress):
            start = time.perf_counter()
            completion = engine.complete(config.request(row["prompt"], row["suffix"])).text
            ms.append((time.perf_counter() - start) * 1000)
            first_lines.append(same_first_line(completion, row["canonical_solution"]))
            outcome = sandbox.run(humaneval_program(row, completion), self.limits)
            per_problem[humaneval_problem(row["task_id"])].append(outcome.passed)
        passed = [p for results in per_problem.values() for p in results]
        by_problem = [sum(r) / len(r) for r in per_problem.values()]
        return {
            "task": self.name, "cursor_mode": config.cursor_mode, "rows": len(passed),
            "problems": len(per_problem),
            "pass@1_rows": sum(passed) / len(passed),
            "pass@1_problems": sum(by_problem) / len(by_problem),
            "em_first_line": sum(first_lines) / len(first_lines),
            "ms_p50": percentile(ms, 0.5), "ms_p95": percentile(ms, 0.95),
        }


@dataclass
class RealCode:
    """Holes cut from held-out packages (realcode.py), scored against the text that was there."""
    name: str = "realcode"
    per_kind: int = 40

    def run(self, engine: Engine, config: EvalConfig) -> dict:
        files = realcode.files()
        n = config.limit or self.per_kind
        results = {}
        for kind in holes.KINDS:
            scores = defaultdict(list)
            for hole in tqdm(holes.cut(files, kind, n, config.seed), desc=f"realcode {kind}",
                             unit="hole", disable=not config.progress):
                got = engine.complete(config.request(hole.prefix, hole.suffix)).text
                for key, value in score_middle(got, hole.middle, hole.prefix, hole.suffix).items():
                    scores[key].append(value)
            results[kind] = {"holes": len(scores["parses"]),
                             **{k: sum(v) / len(v) for k, v in scores.items() if v}}
        return {"task": self.name, "kinds": results}


@dataclass
class Latency:
    """Milliseconds per completion over a fixed set of cursors (held-out holes of every kind)."""
    name: str = "latency"
    per_kind: int = 20

    def run(self, engine: Engine, config: EvalConfig) -> dict:
        files = realcode.files()
        cursors = [h for kind in holes.KINDS
                   for h in holes.cut(files, kind, config.limit or self.per_kind, config.seed)]
        engine.complete(CompletionRequest(prefix="import os\n", max_tokens=4))  # warm up
        ms, tokens = [], []
        for hole in tqdm(cursors, desc="latency", unit="cursor", disable=not config.progress):
            result = engine.complete(config.request(hole.prefix, hole.suffix))
            ms.append(result.total_ms)
            tokens.append(result.tokens)
        return {"task": self.name, "cursors": len(ms), "ms_p50": percentile(ms, 0.5),
                "ms_p95": percentile(ms, 0.95), "ms_p99": percentile(ms, 0.99),
                "tokens_mean": sum(tokens) / len(tokens), "ms": [round(x, 2) for x in ms]}


LEXICAL = {tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP}


@dataclass
class TokenAccuracy:
    """PyCoder-style: at each lexical token of held-out code, does greedy decoding produce it?

    One teacher-forced pass per window: greedy decoding continues with a lexical token exactly
    when the argmax at every model token covering it is the true token. Lexical tokens that do
    not start at a model-token boundary (after optional whitespace) are not scored; `coverage`
    says what share was.
    """
    name: str = "tokens"
    files: int = 20

    def run(self, engine: Engine, config: EvalConfig) -> dict:
        files = realcode.files()
        random.Random(config.seed).shuffle(files)
        correct = scored = total = 0
        for _, text in tqdm(files[:config.limit or self.files], desc="tokens", unit="file",
                            disable=not config.progress):
            spans, lexical = self.score_file(engine, text)
            correct += sum(ok for _, _, ok in spans)
            scored += len(spans)
            total += lexical
        return {"task": self.name, "accuracy": correct / max(scored, 1),
                "coverage": scored / max(total, 1), "tokens_scored": scored}

    @staticmethod
    @torch.inference_mode()
    def score_file(engine: Engine, text: str) -> tuple[list[tuple[int, int, bool]], int]:
        """(first, last, right) model-token spans of the scored lexical tokens, and how many
        lexical tokens the file has. `right`: greedy decoding after ids[:first] yields
        ids[first:last + 1], which cover the lexical token."""
        ids = engine.tokenizer.encode(text)
        window = engine.context
        right = [False] * len(ids)  # right[j]: greedy predicts ids[j] from what precedes it
        done = 1
        for start in range(0, max(len(ids) - 1, 1), window // 2):
            chunk = ids[start:start + window]
            if len(chunk) < 2:
                break
            preds = engine.model(torch.tensor([chunk]))[0].argmax(-1).tolist()
            for j in range(max(done, start + 1), start + len(chunk)):
                right[j] = preds[j - start - 1] == ids[j]
            done = start + len(chunk)
        data = text.encode()
        ends, pos = [], 0  # byte offset where each model token ends
        for i in ids:
            pos += len(engine.tokenizer.token_bytes[i])
            ends.append(pos)
        starts = [0] + ends[:-1]
        boundary = {b: k for k, b in enumerate(starts)}
        char_to_byte = [0]
        for ch in text:
            char_to_byte.append(char_to_byte[-1] + len(ch.encode()))
        line_offsets = [0]
        for line in text.splitlines(keepends=True):
            line_offsets.append(line_offsets[-1] + len(line))
        spans, total = [], 0
        for tok in holes._tokens(text):
            if tok.type not in LEXICAL or tok.start[0] != tok.end[0]:
                continue
            total += 1
            a = char_to_byte[line_offsets[tok.start[0] - 1] + tok.start[1]]
            b = char_to_byte[line_offsets[tok.end[0] - 1] + tok.end[1]]
            k = a
            while k > 0 and k not in boundary and data[k - 1:k].isspace():
                k -= 1
            if k not in boundary or boundary[k] == 0:
                continue
            first = boundary[k]
            last = first
            while last < len(ids) - 1 and ends[last] < b:
                last += 1
            spans.append((first, last, all(right[first:last + 1])))
        return spans, total


TASKS = {t.name: t for t in [
    HumanEvalInfilling("humaneval-single", "HumanEval-SingleLineInfilling.jsonl.gz"),
    HumanEvalInfilling("humaneval-multi", "HumanEval-MultiLineInfilling.jsonl.gz"),
    HumanEvalInfilling("humaneval-span-light", "HumanEval-RandomSpanInfillingLight.jsonl.gz"),
    RealCode(), TokenAccuracy(), Latency(),
]}
