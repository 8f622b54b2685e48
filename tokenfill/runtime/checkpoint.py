"""Checkpoint directories in the Hugging Face layout: config.json, safetensors weights, tokenizer.json.

Weights load from `model.safetensors` or from shards listed in `model.safetensors.index.json`.
Pickle-based files (`pytorch_model.bin`, `*.pt`) are refused: loading them can run arbitrary code.
Nothing is allocated before config.json is checked against the weights' headers (sizes within
`LIMITS`, as many layers as the weights hold, every tensor's shape), and a shard index may name
files inside the checkpoint directory only.
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


# config.json sizes past these are no model this runtime can hold (a value of 1e9 once made
# loading spin, growing memory, or try to allocate a terabyte)
LIMITS = {"vocab_size": 1 << 21, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
          "num_hidden_layers": 1024, "num_attention_heads": 1024, "num_key_value_heads": 1024,
          "head_dim": 1024, "max_position_embeddings": 1 << 20}


def check_sizes(cfg: dict, path: Path) -> None:
    for name, most in LIMITS.items():
        value = cfg.get(name)
        if value is None and name in ("head_dim", "num_key_value_heads",
                                      "max_position_embeddings"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise CheckpointError(f"{path}: {name} must be a whole number from 1 to {most}, "
                                  f"not {value!r}")


def weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        root = directory.resolve()
        outside = [s for s in shards if not (root / s).resolve().is_relative_to(root)]
        if outside:
            raise CheckpointError(f"{index} names shards outside {directory}: "
                                  f"{', '.join(outside[:3])}")
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
    cfg = json.loads(path.read_text())
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    check_sizes(cfg, path)
    return ModelConfig.from_hf(cfg)


def weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's name (without the `model.` prefix) and shape, from the files' headers."""
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key.removeprefix("model.")] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_layers(config: ModelConfig, shapes: dict[str, tuple[int, ...]], directory: Path) -> None:
    """config.json's layer count against the weights', before a model of that size is built."""
    layers = {int(name.split(".")[1]) for name in shapes
              if name.startswith("layers.") and name.split(".")[1].isdigit()}
    if layers != set(range(config.num_hidden_layers)):
        raise CheckpointError(f"{directory}/config.json says num_hidden_layers = "
                              f"{config.num_hidden_layers}, the weights hold {len(layers)} layers")


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
    files = weight_files(directory)
    shapes = weight_shapes(files)
    check_layers(config, shapes, directory)
    with torch.device("meta"):
        model = Transformer(config)
    wrong = [f"{name} {shapes[name]} (config.json: {tuple(t.shape)})"
             for name, t in model.state_dict().items() if name in shapes
             and shapes[name] != tuple(t.shape)]
    if wrong:
        raise CheckpointError(f"weights of {directory} do not match its config.json: "
                              f"{'; '.join(wrong[:3])}")
    state = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                state[name] = f.get_tensor(key).to(dtype)
    return from_state(config, state, directory)


def from_state(config: ModelConfig, state: dict[str, torch.Tensor], source: Path | str) -> Transformer:
    """The network holding `state` (HF names without `model.`), in eval mode; `source` names the
    checkpoint in errors."""
    with torch.device("meta"):
        model = Transformer(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise CheckpointError(f"weights of {source} do not match its config: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    wrong = [f"{name} {tuple(state[name].shape)} (config: {tuple(t.shape)})"
             for name, t in model.state_dict().items() if name in state
             and tuple(state[name].shape) != tuple(t.shape)]
    if wrong:
        raise CheckpointError(f"weights of {source} do not match its config: {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.transpose_projections()
    model.fuse_projections()
    model.pack_output_layer()
    return model.eval()


def save_model(model: Transformer, directory: str | Path, dtype: torch.dtype = torch.bfloat16,
               fim_layout: str | None = None, max_shard_bytes: int | None = None) -> None:
    """Write config.json and model.safetensors (HF names: `model.` prefix, lm_head at top level),
    with the FIM layout the checkpoint prefers when given. With `max_shard_bytes`, weights that
    do not fit one file of that size go to shards `model-0000K-of-0000N.safetensors` listed in
    `model.safetensors.index.json` (the Hugging Face layout)."""
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
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in tensors.items()}
    for old in [*directory.glob("model-*-of-*.safetensors"), directory / "model.safetensors",
                directory / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    groups = shard_groups(tensors, max_shard_bytes)
    if len(groups) == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for k, names in enumerate(groups, start=1):
            file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, str(directory / file),
                      metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = model.config.to_hf() | ({"fim_layout": fim_layout} if fim_layout else {})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def shard_groups(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[list[str]]:
    """Tensor names in files of at most `max_bytes`, in order, each file's header counted
    (a JSON entry of about the name and 100 bytes per tensor); a tensor larger than that alone
    gets a file of its own. One group without a limit."""
    if max_bytes is None:
        return [list(tensors)]
    groups: list[list[str]] = [[]]
    size = 8 + 64  # the header's length and its metadata
    for name, t in tensors.items():
        n = t.numel() * t.element_size() + len(name) + 100
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 8 + 64
        groups[-1].append(name)
        size += n
    return groups


def export_hf(directory: str | Path, out: str | Path) -> Path:
    """A copy of the checkpoint that other engines load as they load any Hugging Face model:
    the weights listed in `model.safetensors.index.json` (vLLM otherwise reads every
    `*.safetensors` file, the n-gram table beside the model too), and config.json naming the end
    token (`eos_token_id`), which decides where those engines stop. Returns the folder."""
    import shutil

    from tokenfill.runtime.tokenizer import Tokenizer

    directory, out = Path(directory), Path(out)
    load_config(directory)  # refuses what this runtime would not load either
    files = weight_files(directory)
    out.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for path in files:
        shutil.copyfile(path, out / path.name)
        with safe_open(str(path), framework="pt") as f:
            weight_map.update(dict.fromkeys(f.keys(), path.name))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.copyfile(directory / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((directory / "config.json").read_text())
    end = Tokenizer.from_file(directory / "tokenizer.json").token_id("<|endoftext|>")
    if end is not None:
        config.setdefault("eos_token_id", end)
        config.setdefault("bos_token_id", end)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
