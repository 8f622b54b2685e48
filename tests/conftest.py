"""Tiny fakes built on the fly: a BPE tokenizer trained on a few snippets, a 2-layer model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from tokenfill.runtime.checkpoint import save_model
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.runtime.tokenizer import Tokenizer, train_bpe

# Property tests draw the same examples on every run, so a run's result does not depend on luck;
# HYPOTHESIS_PROFILE=explore draws fresh ones (and finds the cases worth adding as @example).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# Workspace indexes that tests (and the servers they start) make go to a folder of this run's,
# not the user's cache;
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tokenfill-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
# and the language server's telemetry and refitted gates, likewise
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="tokenfill-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'))\n",
    "result = [x * 2 for x in values if x > 0]\n",
    "with open(path) as f:\n    data = f.read()\n",
    "if self.result is None:\n    self.result = compute()\n",
    "# comment with unicode: héllo wörld ✓ 日本語\n",
    "x = {'key': 'value', \"other\": 123456}\n",
]


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    args = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    args.update(overrides)
    return ModelConfig(**args)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A tokenizer trained on the snippets; TOKENFILL_TEST_TOKENIZER=path/tokenizer.json runs the
    suite with another (the next model's, corpus/tokenizer.json, must pass it too)."""
    other = os.environ.get("TOKENFILL_TEST_TOKENIZER")
    if other:
        return Tokenizer.from_file(Path(other))
    return train_bpe(SNIPPETS * 20, vocab_size=400, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> Transformer:
    return Transformer.init_random(tiny_config(tokenizer.vocab_size), seed=0).eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer, tiny_model) -> Path:
    """A checkpoint directory in Hugging Face layout holding the tiny model (fp32)."""
    path = tmp_path_factory.mktemp("tiny-model")
    save_model(tiny_model, path, dtype=torch.float32)
    tokenizer.save(path / "tokenizer.json")
    return path


@pytest.fixture(scope="session")
def chatty_model_dir(tmp_path_factory, tokenizer, tiny_model) -> Path:
    """A model that only ever says 'a' or 'b': no newline, no end token, so it runs to its limit.

    It is wider and deeper than the tiny model so that a long completion takes seconds, leaving
    time to disconnect, cancel or supersede it mid-way.
    """
    config = tiny_config(tokenizer.vocab_size, hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=6, max_position_embeddings=4096)
    model = Transformer.init_random(config, seed=1)
    a, b = tokenizer.encode("a")[0], tokenizer.encode("b")[0]
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.weight[0] = 1.0                # the final hidden state is one signed number
        model.lm_head.weight.zero_()
        model.lm_head.weight[a, 0] = 50.0         # positive: 'a', negative: 'b'
        model.lm_head.weight[b, 0] = -50.0
    path = tmp_path_factory.mktemp("chatty-model")
    save_model(model, path, dtype=torch.float32)
    tokenizer.save(path / "tokenizer.json")
    return path
