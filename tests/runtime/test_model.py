"""The fast path (KV cache, SDPA, GQA) against the slow reference, and against `transformers`."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from tokenfill.runtime.checkpoint import load_model, save_model
from tokenfill.runtime.model import (
    KVCache,
    ModelConfig,
    Transformer,
    bucket_rows,
    bucketed_linear,
    causal_mask,
    reference_logits,
    tree_mask,
)

# fp32 on the CPU: differences come only from summation order.
ATOL = 1e-4


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_cached_decode_equals_full_recompute(kv_heads, bias):
    config = tiny_config(97, num_key_value_heads=kv_heads, attention_bias=bias)
    model = Transformer.init_random(config, seed=1).eval()
    tokens = torch.randint(0, 97, (1, 190), generator=torch.Generator().manual_seed(0))
    expected = reference_logits(model, tokens)[0]

    cache = model.new_cache(1, 200)
    with torch.no_grad():
        got = [model(tokens[:, :17], 0, cache)[0]]                  # prefill
        got.append(model(tokens[:, 17:30], 17, cache)[0])           # a second chunk
        got.append(model(tokens[:, 30:110], 30, cache)[0])          # a long one (fused kernel)
        for pos in range(110, 120):                                  # token by token
            got.append(model(tokens[:, pos:pos + 1], pos, cache)[0])
        got.append(model(tokens[:, 120:190], 120, cache)[0])        # long again, after decoding
    assert torch.allclose(torch.cat(got), expected, atol=ATOL)
    with torch.no_grad():  # a long prompt from the start: the kernel's own causal mask
        long = model(tokens[:, :100], 0, model.new_cache(1, 100))[0]
    assert torch.allclose(long, expected[:100], atol=ATOL)


def test_rope_tables_grow_with_the_positions_asked_for():
    """The model keeps cos/sin tables for the positions met so far (`Transformer.rope`); a pass
    past them grows them, and the logits stay the reference's."""
    model = Transformer.init_random(tiny_config(97, max_position_embeddings=1024), seed=4).eval()
    tokens = torch.randint(0, 97, (1, 600), generator=torch.Generator().manual_seed(5))
    expected = reference_logits(model, tokens)[0]
    cache = model.new_cache(1, 600)
    with torch.no_grad():
        got = [model(tokens[:, :10], 0, cache)[0]]
        kept = model.rope_kept[0].shape[0]
        got.append(model(tokens[:, 10:599], 10, cache)[0])
        got.append(model(tokens[:, 599:], 599, cache, positions=torch.tensor([599]))[0])
    assert kept < 600 <= model.rope_kept[0].shape[0]
    torch.testing.assert_close(torch.cat(got), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("T", [6, 70])  # grouped attention, and the fused kernel (LONG_QUERIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mask_over_the_last_keys_equals_the_whole_mask(T, dtype):
    """`mask` (T, K) covers the last K keys; the keys before them are seen by every query."""
    model = Transformer.init_random(tiny_config(97), seed=2).eval().to(dtype)
    g = torch.Generator().manual_seed(3)
    start = 20
    prompt = torch.randint(0, 97, (1, start), generator=g)
    tokens = torch.randint(0, 97, (1, T), generator=g)
    own = (torch.rand(T, T, generator=g) < 0.5).tril() | torch.eye(T, dtype=torch.bool)
    positions = torch.arange(start, start + T)
    got = []
    for mask in (own, torch.cat([torch.ones(T, start, dtype=torch.bool), own], dim=1),
                 torch.cat([torch.ones(T, 5, dtype=torch.bool), own], dim=1)):
        cache = model.new_cache(1, start + T)
        with torch.no_grad():
            model(prompt, 0, cache)
            got.append(model(tokens, start, cache, positions=positions, mask=mask)[0])
    atol = ATOL if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got[1], got[0], atol=atol, rtol=0)
    torch.testing.assert_close(got[2], got[0], atol=atol, rtol=0)


def test_uncached_forward_equals_reference(tiny_model):
    tokens = torch.randint(0, tiny_model.config.vocab_size, (2, 33))
    with torch.no_grad():
        assert torch.allclose(tiny_model(tokens), reference_logits(tiny_model, tokens), atol=ATOL)


def test_batched_cache_rows_are_independent(tiny_model):
    tokens = torch.randint(0, tiny_model.config.vocab_size, (3, 12))
    cache = tiny_model.new_cache(3, 16)
    with torch.no_grad():
        batched = tiny_model(tokens, 0, cache)
        for row in range(3):
            alone = reference_logits(tiny_model, tokens[row:row + 1])
            assert torch.allclose(batched[row], alone[0], atol=ATOL)


def test_cache_overflow_is_an_error(tiny_model):
    cache = tiny_model.new_cache(1, 8)
    with pytest.raises(AssertionError, match="overflow"):
        tiny_model(torch.zeros(1, 9, dtype=torch.long), 0, cache)


def test_cache_move_relocates_entries():
    config = tiny_config(50)
    cache = KVCache(config, 1, 10, torch.float32)
    cache.k.copy_(torch.arange(10.0).view(1, 1, 1, 10, 1).expand_as(cache.k))
    cache.move(torch.tensor([5, 7]), 3)
    assert cache.k[0, 0, 0, :, 0].tolist() == [0, 1, 2, 5, 7, 5, 6, 7, 8, 9]


def test_causal_mask_shape_and_offset():
    mask = causal_mask(2, 3)
    assert mask.shape == (3, 5)
    assert mask.tolist() == [[True, True, True, False, False],
                             [True, True, True, True, False],
                             [True, True, True, True, True]]


def test_bf16_stays_close_to_fp32(tiny_model):
    tokens = torch.randint(0, tiny_model.config.vocab_size, (1, 20))
    model16 = Transformer(tiny_model.config)
    model16.load_state_dict(tiny_model.state_dict())
    model16 = model16.to(torch.bfloat16).eval()
    with torch.no_grad():
        a, b = tiny_model(tokens), model16(tokens)
    assert b.dtype == torch.float32  # logits always come back in fp32
    assert (a - b).abs().max() < 0.05


def test_bucket_rows_round_up_to_few_sizes():
    sizes = [bucket_rows(n) for n in range(1, 2049)]
    assert all(size >= n for n, size in zip(range(1, 2049), sizes))
    assert bucket_rows(1) == 1 and bucket_rows(2) == 8 and bucket_rows(64) == 64
    assert bucket_rows(65) == 72 and bucket_rows(129) == 144
    assert all((size - n) / n <= 1 / 8 for n, size in zip(range(64, 2049), sizes[63:]))
    assert len(set(sizes)) < 60  # a kernel each, where 2,048 lengths would build 2,048


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 63, 65, 130])
def test_bucketed_linear_equals_the_plain_product(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 24, generator=g).to(torch.bfloat16)
    weight = torch.randn(40, 24, generator=g).to(torch.bfloat16)
    bias = torch.randn(40, generator=g).to(torch.bfloat16)
    got = bucketed_linear(x, weight, bias)
    assert got.shape == (1, rows, 40)
    # each row's product is computed alone: padding rows change nothing in the others
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, bias), atol=0.02,
                               rtol=0.01)


def test_a_bf16_model_keeps_its_cache_in_fp32_and_equals_recompute(tiny_model):
    """Keys and values of a bf16 model are kept in fp32 (KVCache: a bf16 product of each new
    key length built a kernel); a cached pass agrees with the same model's uncached one."""
    model16 = Transformer(tiny_model.config)
    model16.load_state_dict(tiny_model.state_dict())
    model16 = model16.to(torch.bfloat16).eval()
    tokens = torch.randint(0, tiny_model.config.vocab_size, (1, 90))
    cache = model16.new_cache(1, 96)
    assert cache.k.dtype == torch.float32
    with torch.no_grad():
        got = [model16(tokens[:, :70], 0, cache)[0]]
        got += [model16(tokens[:, pos:pos + 1], pos, cache)[0] for pos in range(70, 90)]
        whole = model16(tokens)[0]
        fp32 = tiny_model(tokens)[0]
    torch.testing.assert_close(torch.cat(got), whole, atol=0.05, rtol=0)
    assert (torch.cat(got) - fp32).abs().max() < 0.05


def test_config_refuses_what_it_cannot_run():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2)
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig.from_hf({**base, "model_type": "llama", "rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_hf({**base, "hidden_act": "relu2"})
    assert ModelConfig.from_hf({**base, "model_type": "qwen2"}).attention_bias
    assert ModelConfig.from_hf(base).num_key_value_heads == 2
    # Qwen2 names a window it does not use; Mistral uses the one it names
    assert ModelConfig.from_hf({**base, "model_type": "qwen2", "sliding_window": 8,
                                "use_sliding_window": False}).sliding_window is None
    assert ModelConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 8,
                                "use_sliding_window": None}).sliding_window == 8
    linear = ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "linear",
                                                              "factor": 4.0, "rope_theta": 5e5}})
    assert linear.rope_scaling_factor == 4.0 and linear.rope_theta == 5e5


# --- against Hugging Face transformers' own implementation -----------------------------------

def _hf_tiny(kind: str, tmp_path):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():  # biases start at zero; make them count
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_equal_transformers(kind, tmp_path):
    hf = _hf_tiny(kind, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ours = load_model(tmp_path, torch.float32)
    assert ours.config.model_type == kind
    tokens = torch.randint(0, 120, (2, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(tokens).logits.float()
        got = ours(tokens)
        cache = ours.new_cache(2, 64)
        cached = torch.cat([ours(tokens[:, :30], 0, cache)] +
                           [ours(tokens[:, i:i + 1], i, cache) for i in range(30, 50)], dim=1)
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()
    assert torch.allclose(cached, expected, atol=ATOL), (cached - expected).abs().max()


def _hf_family(kind: str, tmp_path):
    """A tiny random checkpoint of each other family, written by `transformers` itself: a sliding
    window shorter than the sequences, linear RoPE scaling, Gemma's norms and embeddings,
    StarCoder2's biases and plain MLP."""
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=24, head_dim=16)
        cls = transformers.MistralForCausalLM
    elif kind == "gemma":
        config = transformers.GemmaConfig(**common, head_dim=32)
        cls = transformers.GemmaForCausalLM
    elif kind == "starcoder2":
        config = transformers.Starcoder2Config(**common, sliding_window=24, use_bias=True)
        cls = transformers.Starcoder2ForCausalLM
    else:  # deepseek-coder: a Llama with linear RoPE scaling
        config = transformers.LlamaConfig(**common, rope_scaling={"rope_type": "linear",
                                                                  "factor": 4.0})
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():  # biases and norm weights start at 0 or 1; make them count
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf


@pytest.mark.parametrize("kind", ["mistral", "gemma", "starcoder2", "deepseek-linear-rope"])
def test_other_families_equal_transformers(kind, tmp_path):
    """Full passes, a long cached prompt (the fused kernel), short chunks and single steps,
    against transformers, on sequences longer than the window."""
    hf = _hf_family(kind, tmp_path)
    ours = load_model(tmp_path, torch.float32)
    tokens = torch.randint(0, 120, (1, 110), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(tokens).logits.float()
        full = ours(tokens)
        cache = ours.new_cache(1, 128)
        cached = torch.cat([ours(tokens[:, :70], 0, cache), ours(tokens[:, 70:80], 70, cache)] +
                           [ours(tokens[:, i:i + 1], i, cache) for i in range(80, 110)], dim=1)
    assert torch.allclose(full, expected, atol=ATOL), (full - expected).abs().max()
    assert torch.allclose(cached, expected, atol=ATOL), (cached - expected).abs().max()
    assert torch.allclose(reference_logits(ours, tokens), expected, atol=ATOL)


def test_a_window_hides_only_what_lies_behind_it():
    config = tiny_config(50, sliding_window=8)
    model = Transformer.init_random(config, seed=2).eval()
    tokens = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 50
    with torch.no_grad():
        a, b = model(tokens)[0], model(changed)[0]
    # layer by layer the window reaches back 7 positions more: two layers see 14 back
    assert not torch.allclose(a[5:20], b[5:20])
    assert torch.allclose(a[5 + 2 * 7 + 1:], b[5 + 2 * 7 + 1:], atol=1e-6)


def test_transposed_projections_keep_values_names_and_ties():
    for tie in (False, True):
        model = Transformer.init_random(tiny_config(60, tie_word_embeddings=tie))
        tokens = torch.randint(0, 60, (1, 9))
        with torch.no_grad():
            before = model(tokens)
            names = {k: v.clone() for k, v in model.state_dict().items()}
            model.transpose_projections()
            after = model(tokens)
        torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
        state = model.state_dict()
        assert state.keys() == names.keys() and all(torch.equal(state[k], names[k]) for k in names)
        up = model.layers[0].mlp.up_proj.weight
        assert up.stride() == (1, up.shape[0])  # (out, in) seen through a transpose
        assert (model.lm_head.weight is model.embed_tokens.weight) == tie
        assert model.embed_tokens.weight.is_contiguous()


@pytest.mark.parametrize("cached, T", [(0, 70), (20, 70), (20, 9), (0, 9)])
def test_keep_returns_the_last_positions_logits_and_every_positions_cache(tiny_model, cached, T):
    """`keep` runs the last block for the kept positions only: their logits, and the cache of
    every position, are those of a full pass; with the fused kernel (70 tokens) and without,
    after a cached prefix and from the start, causal and with a mask of its own."""
    V = tiny_model.config.vocab_size
    tokens = torch.randint(0, V, (1, cached + T), generator=torch.Generator().manual_seed(T))
    g = torch.Generator().manual_seed(cached)
    tree = torch.rand(T, T, generator=g) < 0.5
    own = (tree | torch.eye(T, dtype=torch.bool)).tril()  # each sees itself and some before it
    for mask in (None, own):
        with torch.no_grad():
            full_cache = tiny_model.new_cache(1, 96)
            if cached:
                tiny_model(tokens[:, :cached], 0, full_cache)
            full = tiny_model(tokens[:, cached:], cached, full_cache, mask=mask)
            for keep in (1, 3, T):
                cache = tiny_model.new_cache(1, 96)
                if cached:
                    tiny_model(tokens[:, :cached], 0, cache)
                got = tiny_model(tokens[:, cached:], cached, cache, mask=mask, keep=keep)
                assert got.shape[1] == keep
                torch.testing.assert_close(got, full[:, T - keep:], atol=1e-5, rtol=0)
                torch.testing.assert_close(cache.k, full_cache.k, atol=1e-6, rtol=0)
                torch.testing.assert_close(cache.v, full_cache.v, atol=1e-6, rtol=0)


def test_packed_output_layer_gives_the_layers_logits():
    """The packed copy of the output layer (several rows of an inference pass) gives the layer's
    own logits, tied or not; one row, and passes without a cache, use the layer itself."""
    for tie in (False, True):
        model = Transformer.init_random(tiny_config(60, tie_word_embeddings=tie))
        tokens = torch.randint(0, 60, (2, 9))
        with torch.inference_mode():
            plain = model(tokens, 0, model.new_cache(2, 16))
            names = set(model.state_dict())
            if not model.pack_output_layer():
                pytest.skip("oneDNN is not available in this build of torch")
            assert set(model.state_dict()) == names  # a copy beside the weights, not a weight
            packed = model(tokens, 0, model.new_cache(2, 16))
            one = model(tokens[:1, :1], 0, model.new_cache(1, 16))
            training = model(tokens)
        torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(one, plain[:1, :1], atol=1e-5, rtol=0)
        torch.testing.assert_close(training, plain, atol=1e-5, rtol=0)


def test_loaded_checkpoints_pack_their_output_layer(tmp_path):
    model = Transformer.init_random(tiny_config(60))
    save_model(model, tmp_path, dtype=torch.float32)
    loaded = load_model(tmp_path, torch.float32)
    assert (loaded.packed_output is not None) == torch.backends.mkldnn.is_available()
    tokens = torch.randint(0, 60, (1, 12))
    with torch.inference_mode():
        got = loaded(tokens, 0, loaded.new_cache(1, 16))
        expected = reference_logits(model, tokens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_fused_projections_equal_the_separate_ones_and_step_aside_after_a_cast(tmp_path):
    model = Transformer.init_random(tiny_config(60, attention_bias=True))
    save_model(model, tmp_path, dtype=torch.float32)
    loaded = load_model(tmp_path, torch.float32)
    with torch.inference_mode():
        assert all(b.self_attn.fused.usable() and b.mlp.fused.usable() for b in loaded.layers)
    assert set(loaded.state_dict()) == set(model.state_dict())  # names as they were
    for name, value in loaded.state_dict().items():  # and values: views into the fused arrays
        torch.testing.assert_close(value, model.state_dict()[name], atol=0, rtol=0)
    tokens = torch.randint(0, 60, (1, 12))
    with torch.inference_mode():
        expected = reference_logits(model, tokens)
        torch.testing.assert_close(loaded(tokens, 0, loaded.new_cache(1, 16)), expected,
                                   atol=ATOL, rtol=0)
        loaded.to(torch.bfloat16)  # each weight its own copy now: the fused product steps aside
        assert not any(b.self_attn.fused.usable() for b in loaded.layers)
        cast = loaded(tokens, 0, loaded.new_cache(1, 16))
    assert (cast - expected).abs().max() < 0.05
    with torch.enable_grad():  # training never takes it
        assert not loaded.layers[0].mlp.fused.usable()


def test_a_packed_product_that_disagrees_is_not_used(monkeypatch):
    """Packing checks the packed product against the layer once; where this build of torch
    gets it wrong (or lacks it), the layer itself is used."""
    import tokenfill.runtime.model as model_module

    model = Transformer.init_random(tiny_config(60))
    monkeypatch.setattr(model_module, "packed_linear", lambda x, packed, bias: torch.zeros(
        x.shape[0], packed.shape[0]))
    assert model.pack_output_layer() is False and model.packed_output is None
    tokens = torch.randint(0, 60, (1, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens, 0, model.new_cache(1, 16)), model(tokens),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("parents", [[], [-1], [-1, 0, 1], [-1, 0, 0, -1, 3, 1]])
def test_tree_mask_is_each_node_and_its_ancestors(parents):
    mask = tree_mask(parents)
    assert mask.shape == (len(parents), len(parents))
    for i in range(len(parents)):
        ancestors, node = set(), i
        while node >= 0:
            ancestors.add(node)
            node = parents[node]
        assert {j for j in range(len(parents)) if mask[i, j]} == ancestors
