"""Checkpoint directories in the Hugging Face layout: config.json, safetensors weights, tokenizer.json.

Weights load from `model.safetensors` or from shards listed in `model.safetensors.index.json`.
Pickle-based files (`pytorch_model.bin`, `*.pt`) are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tokenfill.runtime.model import ModelConfig, Transformer

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded, with the reason."""


def weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    pickled = [p for p in PICKLE_FILES if (directory / p).exists()]
    if pickled:
        raise CheckpointError(
            f"{directory} holds only pickle weights ({', '.join(pickled)}); tokenfill loads "
            "safetensors only, since unpickling can run code. Convert the checkpoint to safetensors.")
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {directory}")
    return ModelConfig.from_hf(json.loads(path.read_text()))


def fim_layout(directory: str | Path) -> str:
    """The FIM prompt layout the checkpoint asks for (`"fim_layout"` in config.json), else psm."""
    path = Path(directory) / "config.json"
    layout = json.loads(path.read_text()).get("fim_layout", "psm") if path.is_file() else "psm"
    if layout not in ("psm", "spm"):
        raise CheckpointError(f"{path}: fim_layout must be \"psm\" or \"spm\", not {layout!r}")
    return layout


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """The network of a checkpoint directory, in eval mode, weights cast to `dtype`."""
    directory = Path(directory)
    config = load_config(directory)
    with torch.device("meta"):
        model = Transformer(config)
    state = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                state[name] = f.get_tensor(key).to(dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise CheckpointError(f"weights of {directory} do not match its config.json: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.transpose_projections()
    model.pack_output_layer()
    return model.eval()


def save_model(model: Transformer, directory: str | Path, dtype: torch.dtype = torch.bfloat16,
               fim_layout: str | None = None) -> None:
    """Write config.json and model.safetensors (HF names: `model.` prefix, lm_head at top level),
    with the FIM layout the checkpoint prefers when given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if model.config.tie_word_embeddings:
                continue
            tensors[name] = tensor
        else:
            tensors[f"model.{name}"] = tensor
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_hf() | ({"fim_layout": fim_layout} if fim_layout else {})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
