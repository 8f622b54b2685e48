"""A compact Llama-family decoder (Llama, Qwen2 / Qwen2.5-Coder, the bundled model) and its KV cache.

The network takes token ids and returns logits; it knows nothing of text. Parameter names follow the
Hugging Face layout (minus the leading `model.`), so checkpoints load without renaming tables.
`forward` is the fast path (preallocated KV cache, scaled-dot-product attention, grouped-query
attention without copying heads, the last block run for the kept positions only, the output
layer of several rows on packed weights); `reference_logits` is the slow, obviously correct path
(full recompute, explicit softmax attention, heads repeated) that tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v projections (Qwen2 always has it)
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        assert self.num_attention_heads % self.num_key_value_heads == 0

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelConfig:
        """Build from a Hugging Face config.json dict; refuse what this runtime does not implement."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is not supported; "
                             f"supported: {', '.join(sorted(ARCHITECTURES))}")
        scaling = cfg.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"rope_scaling {scaling!r} is not supported by this runtime")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
        if cfg.get("mlp_bias"):
            raise ValueError("mlp_bias is not supported")
        known = {f.name for f in fields(cls)}
        args = {k: v for k, v in cfg.items() if k in known and v is not None}
        args.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        args["model_type"] = model_type
        ARCHITECTURES[model_type](args)
        return cls(**args)

    def to_hf(self) -> dict:
        return {
            "architectures": [HF_CLASS[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "bfloat16",
        }

    def num_parameters(self) -> int:
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        layer = attn + 3 * d * self.intermediate_size + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + embed + d


def _llama(args: dict) -> None:
    args.setdefault("attention_bias", False)


def _qwen2(args: dict) -> None:
    args["attention_bias"] = True  # Qwen2 has biases on q, k and v (not on o)


# model_type -> adjustments of the config; the network is the same for all.
ARCHITECTURES = {"llama": _llama, "qwen2": _qwen2}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class KVCache(nn.Module):
    """Preallocated keys and values for every layer: (layers, batch, kv_heads, max_seq, head_dim)."""

    def __init__(self, config: ModelConfig, batch: int, max_seq: int, dtype: torch.dtype):
        super().__init__()
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_seq, config.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    @property
    def max_seq(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (batch, kv_heads, T, head_dim) at [start, start+T); return all keys so far."""
        end = start + k.shape[2]
        assert end <= self.max_seq, f"KV cache overflow: {end} > {self.max_seq}"
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def move(self, src: Tensor, dst_start: int) -> None:
        """Copy the entries at positions `src` (1-D index tensor) to [dst_start, dst_start+len(src))."""
        n = src.numel()
        self.k[:, :, :, dst_start:dst_start + n] = self.k.index_select(3, src)
        self.v[:, :, :, dst_start:dst_start + n] = self.v.index_select(3, src)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(config: ModelConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (T, head_dim) for the given positions (half-rotation layout)."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32,
                                                    device=positions.device) / hd))
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, heads, T, hd); cos, sin: (T, hd)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype))


LONG_QUERIES = 64  # query blocks this long use the fused attention kernel, faster on prompts;
                   # shorter ones, decoding and draft trees, two matmuls (less set-up)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_head, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, hd
        bias = config.attention_bias
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=False)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor, queries: int | None = None,
            ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, H, Q, hd) for the last `queries` positions (all: None), keys and values
        (B, KV, T, hd) for all of them."""
        B, T, _ = x.shape
        Q = T if queries is None else queries
        q = self.q_proj(x[:, T - Q:]).view(B, Q, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        return apply_rope(q, cos[T - Q:], sin[T - Q:]), apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None, layer: int, start: int, queries: int | None = None,
                ) -> Tensor:
        """The attention output (B, Q, hidden) of the last Q = `queries` positions (all: None);
        keys and values of all of them go into the cache."""
        B, T, _ = x.shape
        if cache is None:  # training: one causal pass, fused kernel
            q, k, v = self.qkv(x, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=self.n_kv != self.n_head)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        Q = T if queries is None else queries
        q, k, v = self.qkv(x, cos, sin, Q)
        k, v = cache.update(layer, start, k, v)
        if Q < T and mask is not None:
            mask = mask[T - Q:]  # the rows of the queries kept
        if T >= LONG_QUERIES:  # a prompt: the fused kernel is faster, and faster still with its
            # own causal mask (so a prompt from the start comes without one); the last queries
            # of one see the keys up to their own
            if mask is None and Q < T:
                mask = causal_mask(start + T - Q, Q) if Q > 1 else None
                causal = False
            else:
                causal = mask is None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               enable_gqa=self.n_kv != self.n_head)
        else:  # `mask` here is the additive bias `attention_mask` makes of it
            y = grouped_attention(q, k, v, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, Q, -1))


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Attention with each kv head serving its group of query heads, without copying kv heads.

    q (B, H, T, hd); k, v (B, KV, S, hd); bias (T, K) float, 0 or -inf, added to the scores of
    the last K keys (the keys before them are seen by every query), or None -> (B, H, T, hd). Two
    matmuls and a softmax: for the short queries of decoding this beats the fused CPU kernel's
    set-up cost. A draft tree's pattern only concerns its own T keys: it is added there rather
    than masking all S keys, which costs a pass over the whole cache.
    """
    B, H, T, hd = q.shape
    KV, S = k.shape[1], k.shape[2]
    rep = H // KV
    scores = q.reshape(B, KV, rep * T, hd) @ k.transpose(-1, -2) * (hd ** -0.5)  # (B, KV, rep*T, S)
    if bias is not None:
        scores.view(B, KV, rep, T, S)[..., S - bias.shape[1]:] += bias
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return (probs @ v).view(B, H, T, hd)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None, layer: int, start: int, queries: int | None = None,
                ) -> Tensor:
        """The block's output for the last `queries` positions (all: None)."""
        y = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, start, queries)
        x = (x if queries is None else x[:, x.shape[1] - queries:]) + y
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.packed_output: Tensor | None = None  # `pack_output_layer`

    def forward(self, tokens: Tensor, start: int = 0, cache: KVCache | None = None, *,
                positions: Tensor | None = None, mask: Tensor | None = None,
                keep: int | None = None, hidden: bool = False) -> Tensor:
        """Logits (B, T, vocab) in float32 for `tokens` (B, T) placed at cache positions [start, start+T).

        Without a cache: a plain causal pass (training). With a cache: keys and values are written
        at [start, start+T) and each query attends to everything before it. `positions` (T,)
        overrides the RoPE positions and `mask` the attention pattern: both are for draft trees,
        whose nodes sit in cache slots but at positions given by their depth. `mask` (T, K) bool,
        K <= start+T, says which of the last K keys each query sees; every query sees the keys
        before those (a tree passes its own T x T pattern: its nodes all see the whole cache).
        `keep` returns the logits of the last `keep` positions only (B, keep, vocab): a prompt
        needs its last one's, and the output layer is a quarter of a prompt's work. `hidden`
        returns the final normalised hidden states (B, T, hidden) instead of logits, for the
        caller to pass through `output` and through the multi-token heads (heads.py).
        """
        B, T = tokens.shape
        if cache is not None:
            mask = attention_mask(mask, start, T)
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        cos, sin = rope_tables(self.config, positions)
        x = self.embed_tokens(tokens)
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            # with a cache, the last block runs attention and its MLP for the kept positions
            # only (it still writes every position's keys and values): a quarter of a prompt's
            # work is in that block, and all of it but those keys and values goes unused
            queries = keep if i == last and cache is not None and keep is not None else None
            x = block(x, cos, sin, mask, cache, i, start, queries)
        if keep is not None:
            x = x[:, x.shape[1] - keep:]
        if hidden:
            return self.norm(x)
        return self.output(self.norm(x), cache is not None).float()

    def output(self, x: Tensor, inference: bool = False) -> Tensor:
        """The output layer: logits (B, T, vocab) for hidden states x (B, T, hidden). Several rows
        of an inference pass use the packed copy of its weights where there is one
        (`pack_output_layer`); one row, or training, the layer itself."""
        B, T, D = x.shape
        packed = self.packed_output
        if (packed is None or not inference or B * T < 2 or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dtype != torch.float32):
            return self.lm_head(x)
        return packed_linear(x.reshape(B * T, D), packed, self.lm_head.bias).view(B, T, -1)

    def pack_output_layer(self) -> bool:
        """Keep a copy of the fp32 output layer's weights in oneDNN's own blocked layout, for the
        products of several rows (draft trees), which run faster on it; one row is no faster
        that way, so it keeps the layer. A copy: call it once
        the weights are final (`load_model` does). False, and the layer used as it is, where
        this build of torch has no such product or its result differs from the layer's."""
        weight = self.lm_head.weight
        self.packed_output = None
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or \
                not torch.backends.mkldnn.is_available():
            return False
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            with torch.inference_mode():  # tried once on a few rows against the layer itself
                rows = torch.linspace(-1, 1, 3 * weight.shape[1]).view(3, -1)
                same = torch.allclose(packed_linear(rows, packed, self.lm_head.bias),
                                      self.lm_head(rows), atol=1e-4, rtol=1e-4)
        except (RuntimeError, AttributeError):
            return False
        if same:
            self.packed_output = packed
        return same

    def transpose_projections(self) -> None:
        """Keep each fp32 projection's weight (out, in) in memory as the transpose of an (in, out)
        array: the same values and names, but MKL's products with few rows (decoding steps,
        draft trees) run faster that way: a forward pass of 1 to 32 tokens 3-9% (BENCHMARKS.md). A weight tied to the
        embedding stays as it is: looking rows up in the transposed layout is slower."""
        tied = self.lm_head.weight is self.embed_tokens.weight
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32 and not (
                    tied and module is self.lm_head):
                weight = module.weight
                module.weight = nn.Parameter(weight.detach().t().contiguous().t(),
                                             requires_grad=weight.requires_grad)

    def new_cache(self, batch: int = 1, max_seq: int | None = None) -> KVCache:
        max_seq = max_seq or self.config.max_position_embeddings
        return KVCache(self.config, batch, max_seq, self.embed_tokens.weight.dtype)

    @classmethod
    def init_random(cls, config: ModelConfig, seed: int = 0) -> Transformer:
        """A freshly initialised network (GPT-2 style scaled init) for training and tests."""
        torch.manual_seed(seed)
        model = cls(config)
        std = 0.02
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                nn.init.ones_(p)
            elif p.dim() == 1:
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * config.num_hidden_layers))
            else:
                nn.init.normal_(p, std=std)
        return model


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) times weights packed by `torch.ops.mkldnn._reorder_linear_weight` (out, in),
    plus bias: (N, out)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def attention_mask(mask: Tensor | None, start: int, T: int) -> Tensor | None:
    """The pattern of a cached pass of T tokens at `start`, in the form its attention takes: for a
    long query block (the fused kernel) a bool (T, start+T) mask, or None for a prompt from the
    start (the kernel's own causal mask); for a short one an additive (T, K) bias on the last K
    keys (`grouped_attention`), or None for a single token. `mask` (T, K) bool as `forward` takes
    it, or None: causal."""
    if T >= LONG_QUERIES:
        if mask is None:
            return None if start == 0 else causal_mask(start, T)
        if mask.shape[1] < start + T:  # the keys before the mask's are seen by all
            seen = torch.ones(T, start + T - mask.shape[1], dtype=torch.bool, device=mask.device)
            return torch.cat([seen, mask], dim=1)
        return mask
    if mask is None:
        if T == 1:
            return None
        mask = causal_mask(0, T)
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


def causal_mask(start: int, T: int) -> Tensor:
    """(T, start+T) bool: query i (at position start+i) sees keys 0..start+i."""
    return torch.arange(start + T)[None, :] <= torch.arange(start, start + T)[:, None]


def tree_mask(parents: Sequence[int]) -> Tensor:
    """(T, T) bool for T nodes of a token tree: each node sees itself and its ancestors.
    `parents[i]` < i is node i's parent, -1 for a node under the root (what came before)."""
    T = len(parents)
    rows: list[list[bool]] = []
    for i, parent in enumerate(parents):  # parents come first: copy the parent's row
        row = rows[parent][:] if parent >= 0 else [False] * T
        row[i] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(T, T)


@torch.no_grad()
def reference_logits(model: Transformer, tokens: Tensor) -> Tensor:
    """Slow reference: full recompute with explicit attention, no cache, no SDPA, no GQA tricks."""
    cfg = model.config
    B, T = tokens.shape
    cos, sin = rope_tables(cfg, torch.arange(T))
    x = model.embed_tokens(tokens)
    for block in model.layers:
        attn = block.self_attn
        q, k, v = attn.qkv(block.input_layernorm(x), cos, sin)
        rep = attn.n_head // attn.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.hd)
        scores = scores.masked_fill(~causal_mask(0, T), float("-inf"))
        y = (scores.softmax(-1) @ v.float()).to(x.dtype)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x)).float()
