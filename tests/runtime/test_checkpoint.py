"""Loading and saving the Hugging Face layout; pickle refused; shards; mismatches named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_config
from tokenfill.runtime.checkpoint import CheckpointError, fim_layout, load_model, save_model
from tokenfill.runtime.model import Transformer


def test_round_trip_keeps_logits(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path, dtype=torch.float32)
    loaded = load_model(tmp_path)
    tokens = torch.randint(0, tiny_model.config.vocab_size, (1, 10))
    with torch.no_grad():  # the same weights; the products may sum in another order
        torch.testing.assert_close(loaded(tokens), tiny_model(tokens), atol=1e-5, rtol=0)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny_model.state_dict().items())
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert loaded.layers[0].self_attn.q_proj.weight.stride()[0] == 1  # transposed for decoding


def test_fim_layout_is_read_from_the_config(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    assert fim_layout(tmp_path) == "psm"   # what published checkpoints expect
    save_model(tiny_model, tmp_path, fim_layout="spm")
    assert fim_layout(tmp_path) == "spm"
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"fim_layout": "sideways"}))
    with pytest.raises(CheckpointError, match="fim_layout must be"):
        fim_layout(tmp_path)


def test_tied_embeddings_are_shared_after_load(tmp_path):
    model = Transformer.init_random(tiny_config(50, tie_word_embeddings=True))
    save_model(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_sharded_checkpoint_loads(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path, dtype=torch.float32)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_model(tmp_path)
    tokens = torch.randint(0, tiny_model.config.vocab_size, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), tiny_model(tokens), atol=1e-5, rtol=0)


def test_pickle_checkpoint_is_refused(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(tmp_path)


def test_missing_pieces_are_named(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    save_model(tiny_model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_hidden_layers = 3, the weights hold 2"):
        load_model(tmp_path)


@pytest.mark.parametrize("name,value", [
    ("num_hidden_layers", 1_000_000_000), ("max_position_embeddings", 1e9),
    ("hidden_size", -4), ("vocab_size", "many"), ("num_attention_heads", 0),
])
def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, tiny_model, name, value):
    save_model(tiny_model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[name] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=name):
        load_model(tmp_path)


def test_a_size_that_disagrees_with_the_weights_is_named(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] += 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mlp"):
        load_model(tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd",
                                   "sub/../../outside.safetensors"])
def test_a_shard_index_may_not_point_outside_the_checkpoint(tmp_path, tiny_model, shard):
    checkpoint = tmp_path / "checkpoint"
    save_model(tiny_model, checkpoint, dtype=torch.float32)
    tensors = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    save_file(tensors, tmp_path / "outside.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for k in tensors}}))
    with pytest.raises(CheckpointError, match="outside"):
        load_model(checkpoint)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_loaded_model_saves_again(tmp_path, dtype):
    """A loaded model's projections are views into fused arrays (model.Fused); saved again,
    the weights come back equal."""
    model = Transformer.init_random(tiny_config(60))
    save_model(model, tmp_path / "a", dtype=dtype)
    loaded = load_model(tmp_path / "a", dtype)
    save_model(loaded, tmp_path / "b", dtype=dtype)
    again = load_model(tmp_path / "b", dtype)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, atol=0, rtol=0)
