"""GGUF out and in: tiny checkpoints written as GGUF load back with the same logits and tokenizer,
for both families and every written type; Q4_K blocks built here by the format's definition
dequantize to the values it defines; what cannot load is named."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tokenfill.completion.engine import Engine
from tokenfill.runtime import gguf_io
from tokenfill.runtime.checkpoint import CheckpointError, load_model, save_model
from tokenfill.runtime.model import Transformer

TEXT = "def area(width, height):\n    return width * height  # <fim_middle> stays text\n"


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def family_dir(request, tmp_path_factory, tokenizer):
    config = tiny_config(tokenizer.vocab_size, model_type=request.param,
                         attention_bias=request.param == "qwen2")
    model = Transformer.init_random(config, seed=3)
    with torch.no_grad():  # biases away from zero, so that their place is checked too
        for layer in model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if proj.bias is not None:
                    proj.bias.normal_()
    path = tmp_path_factory.mktemp(request.param)
    save_model(model, path, dtype=torch.float32, fim_layout="spm")
    tokenizer.save(path / "tokenizer.json")
    return path


@pytest.mark.parametrize("dtype,tolerance", [("f32", 1e-5), ("f16", 2e-3), ("bf16", 1e-2),
                                             ("q8_0", 2e-2)])
def test_round_trip_keeps_logits(family_dir, tmp_path, tokenizer, dtype, tolerance):
    reference = load_model(family_dir)
    out = gguf_io.export(family_dir, tmp_path / "m.gguf", dtype)
    model, loaded_tokenizer, layout = gguf_io.load(out)
    tokens = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        expected, got = reference(tokens), model(tokens)
    assert (got - expected).abs().max().item() < tolerance * expected.abs().max().item()
    assert loaded_tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    assert loaded_tokenizer.special_ids == tokenizer.special_ids
    assert layout == "spm"
    assert model.config.model_type == reference.config.model_type


def test_llama_rope_rows_are_reordered_for_llama_cpp(family_dir, tmp_path):
    """llama.cpp rotates adjacent pairs: the file's q rows are HF's halves interleaved."""
    out = gguf_io.export(family_dir, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(str(out))
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    stored = np.asarray(q.data).reshape(tuple(int(n) for n in reversed(q.shape)))
    original = load_model(family_dir).layers[0].self_attn.q_proj.weight.detach().numpy()
    head_dim = original.shape[0] // 4
    if reader.get_field("general.architecture").contents() == "llama":
        half = head_dim // 2
        np.testing.assert_array_equal(stored[0], original[0])
        np.testing.assert_array_equal(stored[1], original[half])
        np.testing.assert_array_equal(stored[2], original[1])
    else:
        np.testing.assert_array_equal(stored, original)
    assert gguf_io.unpermute_rope(gguf_io.permute_rope(original, 4), 4).tolist() == original.tolist()


def test_export_writes_what_llama_cpp_reads(family_dir, tmp_path, tokenizer):
    reader = gguf.GGUFReader(str(gguf_io.export(family_dir, tmp_path / "m.gguf")))
    fields = {name: f.contents() for name, f in reader.fields.items()
              if not name.startswith("GGUF.")}
    arch = fields["general.architecture"]
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"]) == tokenizer.vocab_size
    assert fields["tokenizer.ggml.fim_mid_token_id"] == tokenizer.token_id("<fim_middle>")
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.token_id("<|endoftext|>")
    types = fields["tokenizer.ggml.token_type"]
    assert types[tokenizer.token_id("<fim_prefix>")] == gguf.TokenType.CONTROL
    tied = load_model(family_dir).config.tie_word_embeddings
    assert ("output.weight" in {t.name for t in reader.tensors}) == (not tied)


def test_tokenizer_from_tokens_and_merges_alone(family_dir, tmp_path, tokenizer):
    """A GGUF file made elsewhere carries no tokenizer.json: the BPE is rebuilt from its lists."""
    out = gguf_io.export(family_dir, tmp_path / "m.gguf", "f32")
    stripped = rewrite(out, tmp_path / "bare.gguf", drop={gguf.Keys.Tokenizer.HF_JSON})
    _, rebuilt, _ = gguf_io.load(stripped)
    code = "x = 1\nfor item in items:\n    print(item)\n"
    assert rebuilt.decode(rebuilt.encode(code)) == code
    assert rebuilt.token_id("<fim_middle>") == tokenizer.token_id("<fim_middle>")
    assert rebuilt.special_ids == tokenizer.special_ids


def test_q4_k_blocks_dequantize_by_the_format(family_dir, tmp_path):
    """Q4_K by its definition: a super-block of 256 values holds f16 d and dmin, six-bit scales and
    mins for eight groups of 32, and four-bit codes; value = d * scale * code - dmin * min."""
    rng = np.random.default_rng(0)
    rows, cols = 3, 512
    codes = rng.integers(0, 16, (rows, cols // 256, 256))
    scales = rng.integers(1, 16, (rows, cols // 256, 8))   # < 16: the packing's simple case
    mins = rng.integers(0, 16, (rows, cols // 256, 8))
    d, dmin = np.float16(0.01), np.float16(0.003)
    blocks = []
    for r in range(rows):
        for b in range(cols // 256):
            sc, mn, q = scales[r, b], mins[r, b], codes[r, b]
            packed = np.zeros(12, np.uint8)
            packed[0:4], packed[4:8] = sc[:4], mn[:4]
            packed[8:12] = (sc[4:] & 0xF) | ((mn[4:] & 0xF) << 4)
            qs = np.zeros(128, np.uint8)
            for chunk in range(4):  # 64 values: group 2c in the low nibbles, 2c+1 in the high
                low, high = q[64 * chunk:64 * chunk + 32], q[64 * chunk + 32:64 * chunk + 64]
                qs[32 * chunk:32 * chunk + 32] = low | (high << 4)
            blocks.append(np.concatenate([np.array([d, dmin], np.float16).view(np.uint8),
                                          packed, qs]))
    raw = np.stack(blocks).reshape(rows, -1)
    expected = (float(d) * np.repeat(scales, 32, -1) * codes
                - float(dmin) * np.repeat(mins, 32, -1)).reshape(rows, cols)
    writer = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    writer.add_tensor("t", raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors[0]
    np.testing.assert_allclose(gguf_io.dequantized(tensor, tmp_path), expected, rtol=1e-3,
                               atol=1e-4)


def test_engine_completes_from_a_gguf_file(family_dir, tmp_path, tokenizer):
    from tokenfill.completion.request import CompletionRequest

    out = gguf_io.export(family_dir, tmp_path / "tiny.gguf", "f32")
    from_dir = Engine.load(family_dir, dtype="fp32")
    from_file = Engine.load(out, dtype="fp32")
    assert from_file.name == "tiny" and from_file.fim is not None
    request = CompletionRequest(prefix="def area(width, height):\n    return ", suffix="\n",
                                max_tokens=12, syntax=False)
    assert from_file.complete(request).text == from_dir.complete(request).text


def test_refusals_name_the_problem(family_dir, tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        gguf_io.load(tmp_path / "junk.gguf")
    out = gguf_io.export(family_dir, tmp_path / "m.gguf", "f32")
    other = rewrite(out, tmp_path / "other.gguf", arch="falcon")
    with pytest.raises(CheckpointError, match="architecture 'falcon' is not supported"):
        gguf_io.load(other)
    with pytest.raises(ValueError, match="dtype must be one of"):
        gguf_io.export(family_dir, tmp_path / "x.gguf", "q2_k")


def rewrite(src, dst, *, drop=frozenset(), arch=None):
    """A copy of a GGUF file without the fields in `drop`, under another architecture name."""
    reader = gguf.GGUFReader(str(src))
    old_arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(str(dst), arch or old_arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name in drop or name == "general.architecture":
            continue
        value_type = f.types[0]
        value = f.contents()
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_array(name.replace(old_arch, arch or old_arch, 1), value)
        else:
            writer.add_key_value(name.replace(old_arch, arch or old_arch, 1), value, value_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape,
                          raw_dtype=gguf.GGMLQuantizationType(t.tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
