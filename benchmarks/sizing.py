"""`python -m benchmarks sizing`: how large a model this CPU can run within the typing budget.

A model's speed does not depend on what it learnt, so each candidate shape is timed with random
weights, saved and loaded as a checkpoint is (the dtype tokenfill picks on this machine, the
same packed layers). Two figures per shape, the budget of the model issue:
- cold prompt: a 1,000-token prompt run into an empty cache (a file opened, nothing reusable);
- word end: what a keystroke at a word end costs with KV reuse, as the typing bench sees it: the
  prompt's last 45 tokens run on top of 600 cached ones (the typing bench's mean evaluated per
  request), then 16 tokens decoded one at a time (its n_predict), without drafts.
Medians over rounds, the shapes taking turns.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header
from tokenfill.runtime.checkpoint import load_model, save_model
from tokenfill.runtime.generate import decode_one, prefill
from tokenfill.runtime.hardware import resolve_dtype
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.train.recipe import PRESETS

COLD_TOKENS, CACHED, TYPED, DECODED = 1000, 600, 45, 16


def shapes(vocab: int) -> dict[str, ModelConfig]:
    return {name: ModelConfig(vocab_size=vocab, max_position_embeddings=2048,
                              tie_word_embeddings=True, **PRESETS[name])
            for name in PRESETS if name != "tiny"}


def time_shape(model: Transformer, rounds: int) -> tuple[float, float]:
    """Median ms of a cold prompt and of a word end."""
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (COLD_TOKENS,), generator=torch.Generator().manual_seed(0))
    cold, warm = [], []
    with torch.inference_mode():
        for _ in range(rounds):
            cache = model.new_cache(1, 2048)
            start = time.perf_counter()
            prefill(model, cache, ids.tolist())
            cold.append(time.perf_counter() - start)
            cache = model.new_cache(1, 2048)
            prefill(model, cache, ids[:CACHED].tolist())
            start = time.perf_counter()
            logits = prefill(model, cache, ids[CACHED:CACHED + TYPED].tolist(), CACHED)
            pos = CACHED + TYPED
            for _ in range(DECODED):
                logits = decode_one(model, cache, int(logits.argmax()), pos)
                pos += 1
            warm.append(time.perf_counter() - start)
    return sorted(cold)[len(cold) // 2] * 1000, sorted(warm)[len(warm) // 2] * 1000


def run(vocab: int = 16384, rounds: int = 7) -> str:
    dtype = resolve_dtype("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in shapes(vocab).items():
            path = Path(tmp) / name
            save_model(Transformer.init_random(config, seed=0), path, dtype=dtype)
            model = load_model(path, dtype)
            time_shape(model, 1)  # warm up: oneDNN builds its kernels on first use
            cold, warm = time_shape(model, rounds)
            rows.append((name, config, cold, warm))
    lines = [header(f"python -m benchmarks sizing --vocab {vocab}"),
             f"random weights in {str(dtype).removeprefix('torch.')}, vocabulary {vocab:,}, "
             f"context 2,048; cold prompt: {COLD_TOKENS:,} tokens into an empty cache; word end: "
             f"{TYPED} tokens on {CACHED} cached, then {DECODED} decoded; median of {rounds}.", "",
             "| preset | layers x hidden (MLP) | parameters (embedding) | cold prompt ms "
             "(budget 400) | word end ms (budget 150) |",
             "| --- | --- | --- | --- | --- |"]
    for name, c, cold, warm in rows:
        embed = c.vocab_size * c.hidden_size
        lines.append(f"| {name} | {c.num_hidden_layers} x {c.hidden_size} ({c.intermediate_size}) "
                     f"| {c.num_parameters() / 1e6:.1f}M ({embed / 1e6:.1f}M) | {cold:.0f} | "
                     f"{warm:.0f} |")
    return "\n".join(lines)
