"""`python -m benchmarks sizing`: how large a model this CPU can run within the typing budget.

A model's speed does not depend on what it learnt, so each candidate shape is timed with random
weights, saved and loaded as a checkpoint is (the dtype tokenfill picks on this machine, the
same packed layers). Per shape, the budget of the model issue and its parts:
- cold prompt: a 1,000-token prompt run into an empty cache (a file opened, nothing reusable);
- keystroke prompt: the prompt's last 45 tokens run on top of 600 cached ones (the typing
  bench's mean evaluated per request with KV reuse);
- one pass: a decoding step of one token, and of a 12-node draft tree;
- word end, plain: the keystroke prompt, then 16 tokens decoded one at a time (the typing
  bench's n_predict), no drafts: an upper bound;
- word end, drafted: the keystroke prompt and the tree passes 16 tokens take at the tokens per
  pass the bundled model's drafts reach on held-out code (TOKENS_PER_PASS, BENCHMARKS.md:
  speculative): an estimate until a trained model of the shape is measured by the typing bench.
Medians over rounds.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header
from tokenfill.runtime.checkpoint import load_model, save_model
from tokenfill.runtime.generate import decode_one, forward, prefill
from tokenfill.runtime.hardware import resolve_dtype
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.speculative.draft_tree import AcceptanceRates, DraftTree
from tokenfill.speculative.drafters import Draft
from tokenfill.train.recipe import PRESETS

COLD_TOKENS, CACHED, TYPED, DECODED, TREE = 1000, 600, 45, 16, 12
TOKENS_PER_PASS = 4.9  # accepted per pass (3.89) plus the pass's own token


def shapes(vocab: int) -> dict[str, ModelConfig]:
    return {name: ModelConfig(vocab_size=vocab, max_position_embeddings=2048,
                              tie_word_embeddings=True, **PRESETS[name])
            for name in PRESETS if name != "tiny"}


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def time_shape(model: Transformer, rounds: int) -> dict[str, float]:
    """Median ms of each part (see the module's doc)."""
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (COLD_TOKENS,), generator=torch.Generator().manual_seed(0))
    ids = ids.tolist()
    cache = model.new_cache(1, 2048)

    def cold():
        prefill(model, model.new_cache(1, 2048), ids)

    prefill(model, cache, ids[:CACHED])

    def keystroke():
        prefill(model, cache, ids[CACHED:CACHED + TYPED], CACHED)

    def one():
        decode_one(model, cache, ids[0], CACHED + TYPED)

    chain = [Draft(tuple(ids[1:1 + d]), 0.9, "x") for d in range(1, 7)]  # a path 6 deep
    siblings = [Draft((ids[20 + j],), 0.5, "x") for j in range(TREE - 7)]  # and first tokens
    tree = DraftTree.build(ids[0], chain + siblings, AcceptanceRates(), TREE, None)
    assert len(tree) == TREE

    def tree_pass():
        forward(model, torch.tensor([tree.tokens]), CACHED + TYPED, cache,
                positions=tree.positions(CACHED + TYPED), mask=tree.mask())

    def plain():
        logits = prefill(model, cache, ids[CACHED:CACHED + TYPED], CACHED)
        for i in range(DECODED):
            logits = decode_one(model, cache, int(logits.argmax()), CACHED + TYPED + i)

    with torch.inference_mode():
        got = {name: median_ms(fn, rounds) for name, fn in
               [("cold", cold), ("keystroke", keystroke), ("one", one), ("tree", tree_pass),
                ("plain", plain)]}
    got["drafted"] = got["keystroke"] + math.ceil(DECODED / TOKENS_PER_PASS) * got["tree"]
    return got


def run(vocab: int = 16384, rounds: int = 7) -> str:
    dtype = resolve_dtype("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in shapes(vocab).items():
            path = Path(tmp) / name
            save_model(Transformer.init_random(config, seed=0), path, dtype=dtype)
            model = load_model(path, dtype)
            time_shape(model, 1)  # warm up: oneDNN builds its kernels on first use
            rows.append((name, config, time_shape(model, rounds)))
    lines = [header(f"python -m benchmarks sizing --vocab {vocab}"),
             f"random weights in {str(dtype).removeprefix('torch.')}, vocabulary {vocab:,}, "
             f"context 2,048; cold prompt: {COLD_TOKENS:,} tokens into an empty cache; keystroke: "
             f"{TYPED} tokens on {CACHED} cached; word end: the keystroke then {DECODED} tokens, "
             f"plain (one pass each) or drafted (a {TREE}-node tree pass per {TOKENS_PER_PASS} "
             f"tokens, the bundled model's rate); median of {rounds}.", "",
             "| preset | layers x hidden (MLP) | parameters (embedding) | cold prompt ms "
             "(budget 400) | keystroke ms | pass ms: 1 token / tree | word end ms, plain / "
             "drafted (budget 150) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c, t in rows:
        embed = c.vocab_size * c.hidden_size
        lines.append(f"| {name} | {c.num_hidden_layers} x {c.hidden_size} ({c.intermediate_size}) "
                     f"| {c.num_parameters() / 1e6:.1f}M ({embed / 1e6:.1f}M) | {t['cold']:.0f} | "
                     f"{t['keystroke']:.0f} | {t['one']:.1f} / {t['tree']:.1f} | "
                     f"{t['plain']:.0f} / {t['drafted']:.0f} |")
    return "\n".join(lines)
