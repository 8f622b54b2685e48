"""The model that ships in the repo: present, small, documented, FIM-capable, and consistent."""

from __future__ import annotations

import json

import torch

from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.paths import BUNDLED_MODEL, REPO_ROOT
from tokenfill.runtime.checkpoint import load_model
from tokenfill.runtime.model import reference_logits


def test_bundled_model_is_complete_and_small():
    files = {p.name for p in BUNDLED_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert sum(p.stat().st_size for p in BUNDLED_MODEL.iterdir()) < 60 * 2**20
    card = (BUNDLED_MODEL / "README.md").read_text()
    for fact in ("tokens seen", "wall time", "hardware", "held-out loss", "next-token accuracy"):
        assert fact in card
    assert json.loads((BUNDLED_MODEL / "config.json").read_text())["model_type"] == "llama"


def test_bundled_model_completes_with_starcoder_fim():
    engine = Engine.load(BUNDLED_MODEL, dtype="fp32")
    assert engine.fim.format.name == "starcoder"
    result = engine.complete(CompletionRequest(prefix="import os\n\n\ndef main():\n    path = os.path.",
                                               suffix="\n", max_tokens=8))
    assert result.tokens >= 1 and "\n" not in result.text


def test_bundled_model_ships_a_calibrated_gate():
    engine = Engine.load(BUNDLED_MODEL, dtype="fp32")
    gate = engine.gate
    assert gate is not None and 0 < gate.exit_threshold <= gate.threshold < 1
    assert gate.fitted["precision_at_threshold"] > 2 * gate.fitted["ungated_precision"]
    sure = engine.complete(CompletionRequest(prefix="import os\nimport sys\n\n\ndef main():\n",
                                             suffix="", max_tokens=16, invoked=True))
    assert sure.confidence is not None and 0 <= sure.confidence <= 1


def test_bundled_model_cached_logits_equal_reference():
    model = load_model(BUNDLED_MODEL, torch.float32)
    tokens = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, 64)
    with torch.no_grad():
        cached = torch.cat([model(tokens[:, :40], 0, cache)] +
                           [model(tokens[:, i:i + 1], i, cache) for i in range(40, 64)], dim=1)
        assert torch.allclose(cached, reference_logits(model, tokens), atol=1e-3)


def test_bundled_model_speculative_greedy_equals_plain():
    """Greedy identity on the real model, on code from this repository (lookups find plenty)."""
    engine = Engine.load(BUNDLED_MODEL, dtype="fp32")
    source = (REPO_ROOT / "tokenfill" / "runtime" / "generate.py").read_text()
    accepted = 0
    for cut in (1500, 3000, 4500):
        cut = source.index("\n", cut) + 1
        plain = engine.complete(CompletionRequest(prefix=source[:cut], suffix=source[cut:],
                                                  max_tokens=48, cursor_mode="none",
                                                  speculative=False, min_confidence=0.0))
        fast = engine.complete(CompletionRequest(prefix=source[:cut], suffix=source[cut:],
                                                 max_tokens=48, cursor_mode="none",
                                                 min_confidence=0.0))
        assert fast.text == plain.text
        accepted += fast.accepted
    assert accepted > 0
