"""`tokenfill bench`: the figures in BENCHMARKS.md, measured side by side in one run.

- `runtime`: prefill and decode tokens/s of tokenfill's runtime and of Hugging Face `transformers`
  (greedy `generate`) on the same checkpoint, same prompt, same thread count; checks that both
  greedy outputs are the same tokens.
- `humaneval`: `tokenfill batch` (the real command, as a subprocess) on HumanEval single-line
  infilling from ../shared/data; exact match of the completion's first line against the canonical
  solution's first line (whitespace at both ends ignored), ms per completion, completions/s.
"""

from __future__ import annotations

import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from .checkpoint import BUNDLED_MODEL, load_model
from .generate import generate, prefill
from .hardware import MAX_THREADS, SMALL_PASS, describe_machine, resolve_dtype, use_threads_for
from .tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
HUMANEVAL_SINGLE = (REPO_ROOT.parent / "shared" / "data" / "humaneval-infilling" /
                    "HumanEval-SingleLineInfilling.jsonl.gz")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by nearest rank; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def header(command: str) -> str:
    return f"`{command}` on {describe_machine()}, {date.today().isoformat()}"


def model_option(model: Path) -> str:
    """The `--model` a bench's command line needs to run again: none for the bundled model
    (the default), else the directory as it was given."""
    return "" if Path(model).resolve() == BUNDLED_MODEL.resolve() else f" --model {model}"


def same_threads(module, args, kwargs) -> None:
    """A forward pre-hook giving a `transformers` model tokenfill's threads per pass."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is not None:
        use_threads_for(ids.numel())


def _interleaved_medians(fns: list, rounds: int) -> list[float]:
    """Median seconds of each function, run in turn round after round (every other round in
    reverse order, so that none always follows the same one), so that the machine's load falls
    on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for k in range(rounds):
        order = list(range(len(fns)))
        for i in (order if k % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def bench_runtime(model_dir: Path, dtypes: tuple[str, ...] = ("fp32", "bf16"), prompt_len: int = 256,
                  new_tokens: int = 128, repeats: int = 8) -> str:
    """A markdown table: prefill and decode tokens/s, ours vs transformers."""
    import transformers

    tokenizer = Tokenizer.from_file(model_dir)
    source = (REPO_ROOT / "tokenfill" / "model.py").read_text()
    ids = tokenizer.encode(source)
    prompt = ids[:prompt_len]
    short = ids[:32]
    rows = []
    for name in dtypes:
        torch_dtype = resolve_dtype(name)
        ours = load_model(model_dir, torch_dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0
        hf.register_forward_pre_hook(same_threads, with_kwargs=True)
        x = torch.tensor([prompt])

        def ours_prefill():
            with torch.inference_mode():  # as the engine runs it (and transformers below)
                prefill(ours, ours.new_cache(1, prompt_len), prompt)

        def hf_prefill():
            with torch.inference_mode():  # the last position's logits, as ours (and generate)
                hf(x, use_cache=True, logits_to_keep=1)

        def ours_decode():
            return generate(ours, short, new_tokens).tokens

        def hf_decode():
            with torch.inference_mode():
                out = hf.generate(torch.tensor([short]), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False)
            return out[0, len(short):].tolist()

        same = ours_decode() == hf_decode()  # also warms both up
        ours_prefill(), hf_prefill()
        times = _interleaved_medians([ours_prefill, hf_prefill, ours_decode, hf_decode], repeats)
        for k, impl in enumerate(("tokenfill", "transformers")):
            t_pre, t_dec = times[k], times[2 + k]
            rows.append(f"| {impl} | {name} | {prompt_len / t_pre:,.0f} | "
                        f"{new_tokens / t_dec:,.0f} | {'yes' if same else 'NO'} |")
    return "\n".join([
        header(f"tokenfill bench runtime{model_option(model_dir)}"),
        f"prefill: one {prompt_len}-token prompt; decode: {new_tokens} greedy tokens after a "
        f"32-token prompt; median of {repeats} rounds, the runtimes taking turns; both with "
        f"tokenfill's threads per pass "
        f"({MAX_THREADS} for {SMALL_PASS} tokens or more, 1 below: hardware.py).",
        "",
        "| runtime | dtype | prefill tokens/s | decode tokens/s | same greedy tokens |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ])


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def bench_humaneval(model_dir: Path, limit: int = 0, dtype: str = "auto") -> str:
    """A markdown table: exact match of the first line, latency, throughput of `tokenfill batch`."""
    if not HUMANEVAL_SINGLE.is_file():
        return f"skipped: {HUMANEVAL_SINGLE} is absent (the benchmark data lives in ../shared)"
    with gzip.open(HUMANEVAL_SINGLE, "rt") as f:
        rows = [json.loads(line) for line in f]
    if limit:
        rows = rows[:limit]
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
    exact = sum(first_line(r["completion"]) == first_line(row["canonical_solution"])
                for r, row in zip(results, rows))
    ms = [r["ms"] for r in results]
    p50, p95 = percentile(ms, 0.5), percentile(ms, 0.95)
    tokens = statistics.mean(r["tokens"] for r in results)
    return "\n".join([
        header(f"tokenfill bench humaneval{model_option(model_dir)}" +
               (f" --limit {limit}" if limit else "")),
        "",
        "| tasks | first-line exact match | ms p50 | ms p95 | completions/s (incl. load) | "
        "tokens/completion |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {len(rows)} | {exact / len(rows) * 100:.1f}% ({exact}) | {p50:.0f} | {p95:.0f} | "
        f"{len(rows) / wall:.1f} | {tokens:.1f} |",
    ])
