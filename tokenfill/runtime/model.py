"""A compact decoder for the Llama family and its relatives (Llama and CodeLlama, DeepSeek-Coder,
Qwen2 / Qwen2.5-Coder, Mistral / Codestral, CodeGemma, StarCoder2, the bundled model) and its KV
cache. The families differ in a few switches (`FAMILIES`): norms, the MLP, biases, a sliding
window, RoPE scaling, scaled embeddings.

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
    # what the families differ in (FAMILIES sets them from model_type)
    rope_scaling_factor: float = 1.0   # linear RoPE scaling: positions divided by it
    sliding_window: int | None = None  # a query sees the last this-many positions (itself too)
    norm: str = "rms"                  # "rms"; "rms_offset": scaled by 1 + weight; "layer"
    mlp: str = "gated"                 # "gated": down(act(gate) * up); "plain": c_proj(act(c_fc))
    activation: str = "silu"           # "silu", "gelu_tanh" or "gelu"
    mlp_bias: bool = False
    o_bias: bool = False               # bias on the attention's output projection
    embed_scale: bool = False          # embeddings times sqrt(hidden_size)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        assert self.num_attention_heads % self.num_key_value_heads == 0

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelConfig:
        """Build from a Hugging Face config.json dict; refuse what this runtime does not implement."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in FAMILIES:
            raise ValueError(f"model_type {model_type!r} is not supported; "
                             f"supported: {', '.join(sorted(FAMILIES))}")
        family = FAMILIES[model_type]
        known = {f.name for f in fields(cls)} - set(family) - {"rope_scaling_factor"}
        args = {k: v for k, v in cfg.items() if k in known and v is not None}
        args.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        args.update(model_type=model_type, **{k: v for k, v in family.items() if k != "use_bias"},
                    **rope_of(cfg))
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
        if model_type == "gemma" and cfg.get("hidden_activation") is None:
            act = "gelu_pytorch_tanh"  # what Gemma runs whatever hidden_act says
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)})")
        args["activation"] = ACTIVATIONS[act]
        if "norm_epsilon" in cfg:
            args["rms_norm_eps"] = cfg["norm_epsilon"]
        if family.get("use_bias"):
            bias = bool(cfg.get("use_bias", True))
            args.update(attention_bias=bias, o_bias=bias, mlp_bias=bias)
        if cfg.get("use_sliding_window") is False:  # Qwen2 names a window it does not use
            args.pop("sliding_window", None)
        return cls(**args)

    def to_hf(self) -> dict:
        rope = ({"rope_scaling": {"rope_type": "linear", "factor": self.rope_scaling_factor}}
                if self.rope_scaling_factor != 1.0 else {})
        window = {"sliding_window": self.sliding_window} if self.sliding_window else {}
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
            "hidden_act": HF_ACTIVATION[self.activation],
            **rope, **window,
            "torch_dtype": "bfloat16",
        }

    def num_parameters(self) -> int:
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        layer = attn + (3 if self.mlp == "gated" else 2) * d * self.intermediate_size + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + embed + d


def rope_of(cfg: dict) -> dict:
    """RoPE's base and linear scaling from `rope_scaling` / `rope_theta` or, as newer configs
    write them, `rope_parameters`; other scalings are refused."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind not in (None, "default", "linear"):
        raise ValueError(f"rope_scaling {scaling!r} is not supported by this runtime (default "
                         f"and linear are)")
    out = {}
    theta = cfg.get("rope_theta") or params.get("rope_theta")
    if theta:
        out["rope_theta"] = float(theta)
    if kind == "linear":
        out["rope_scaling_factor"] = float(scaling["factor"])
    return out


# model_type -> what sets the family apart (the rest comes from config.json); use_bias: one
# switch for every projection's bias (StarCoder2)
FAMILIES: dict[str, dict] = {
    "llama": {},                           # Llama, CodeLlama, DeepSeek-Coder (linear RoPE)
    "qwen2": {"attention_bias": True},     # Qwen2 / Qwen2.5-Coder: biases on q, k, v
    "mistral": {},                         # Mistral, Codestral: a sliding window
    "gemma": {"norm": "rms_offset", "embed_scale": True},  # CodeGemma
    "starcoder2": {"norm": "layer", "mlp": "plain", "use_bias": True},
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
               "gelu": "gelu"}  # config.json's name -> ours
HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "mistral": "MistralForCausalLM", "gemma": "GemmaForCausalLM",
            "starcoder2": "Starcoder2ForCausalLM"}


class KVCache(nn.Module):
    """Preallocated keys and values for every layer: (layers, batch, kv_heads, max_seq, head_dim).

    Kept in fp32 whatever the weights' dtype (`Transformer.new_cache`): a bf16 product of a new
    shape makes oneDNN build and keep a kernel (about 1 ms and 0.65 MB each, measured), and the keys
    grow by one every step, so bf16 attention built a kernel per step and memory grew with every
    new length; fp32 products go to MKL, which builds none, and a decoding step's attention ran
    faster that way (69 us against 1,436 us for one layer at 600 keys on an AVX-512 BF16 CPU)."""

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
    def __init__(self, dim: int, eps: float, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset  # Gemma scales by 1 + weight (its weights start at zero)
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and not self.offset:  # one kernel where there were five
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (x32 * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * x32.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layer":
        return nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)
    return RMSNorm(config.hidden_size, config.rms_norm_eps, offset=config.norm == "rms_offset")


def rope_tables(config: ModelConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (T, head_dim) for the given positions (half-rotation layout)."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32,
                                                    device=positions.device) / hd))
    inv_freq = inv_freq / config.rope_scaling_factor  # linear scaling: positions / factor
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, heads, T, hd); cos, sin: (T, hd)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype))


def bucket_rows(n: int) -> int:
    """The row count a low-precision product of `n` rows is padded to: one row stays one, the
    rest round up to a multiple of 8, coarser with size (eight sizes per doubling, so at most
    1/8 of the rows are padding past 64). oneDNN builds and keeps a kernel per shape (about
    1 ms and 0.65 MB each, measured on bf16); without buckets every new prompt length built
    new ones and a server's memory grew with the variety of lengths it saw."""
    if n <= 1:
        return n
    step = 1 << max(3, n.bit_length() - 4)
    return -(-n // step) * step


class Linear(nn.Linear):
    """nn.Linear whose inference products in a low-precision dtype run on `bucket_rows` sizes
    (the padding rows are zeros, dropped from the result); fp32, which MKL computes without
    per-shape kernels, and training take the plain product."""

    def forward(self, x: Tensor) -> Tensor:
        return product(x, self.weight, self.bias)


def product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`Linear`'s product: bucketed in a low-precision dtype at inference, else plain."""
    if weight.dtype == torch.float32 or torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    return bucketed_linear(x, weight, bias)


def bucketed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(x, weight, bias), the product run on `bucket_rows(rows)` rows."""
    lead, D = x.shape[:-1], x.shape[-1]
    n = x.numel() // D
    padded = bucket_rows(n)
    if padded == n:
        return F.linear(x, weight, bias)
    rows = F.pad(x.reshape(n, D), (0, 0, 0, padded - n))
    return F.linear(rows, weight, bias)[:n].view(*lead, -1)


class Fused:
    """Projections of one input (q, k and v; gate and up) as one product, one call where there
    were several: a decoding step of the bundled model ran about 8% faster in fp32, passes of 8
    and 32 tokens and bf16 the same (measured on an AVX-512 CPU). Their weights and biases
    become views into one array, so names, values and memory stay as they were; the product is
    used while they still are (a later `.to()` gives each its own copy, and each then runs
    alone), and never in training."""

    def __init__(self, linears: list[nn.Linear], transposed: bool):
        weight = torch.cat([linear.weight.detach() for linear in linears])
        # fp32: (out, in) kept as the transpose of an (in, out) array (`transpose_projections`)
        self.weight = weight.t().contiguous().t() if transposed else weight.contiguous()
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
        self.sizes = [linear.out_features for linear in linears]
        self.linears = linears
        start = 0
        for linear, n in zip(linears, self.sizes):
            linear.weight = nn.Parameter(self.weight[start:start + n],
                                         requires_grad=linear.weight.requires_grad)
            if has_bias:
                linear.bias = nn.Parameter(self.bias[start:start + n],
                                           requires_grad=linear.bias.requires_grad)
            start += n
        self.addresses = [linear.weight.data_ptr() for linear in linears]

    def usable(self) -> bool:
        if torch.is_grad_enabled():
            return False
        if torch.compiler.is_compiling():  # traced once: the addresses are not values it sees
            return True
        return all(
            linear.weight.data_ptr() == address
            for linear, address in zip(self.linears, self.addresses))

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.joined(x).split(self.sizes, dim=-1)

    def joined(self, x: Tensor) -> Tensor:
        """The outputs side by side, in the order of the projections."""
        return product(x, self.weight, self.bias)


LONG_QUERIES = 64  # query blocks this long use the fused attention kernel, faster on prompts;
                   # shorter ones, decoding and draft trees, two matmuls (less set-up)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_head, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, hd
        bias = config.attention_bias
        self.q_proj = Linear(d, self.n_head * hd, bias=bias)
        self.k_proj = Linear(d, self.n_kv * hd, bias=bias)
        self.v_proj = Linear(d, self.n_kv * hd, bias=bias)
        self.o_proj = Linear(self.n_head * hd, d, bias=config.o_bias)
        self.fused: Fused | None = None  # `Transformer.fuse_projections`

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor, queries: int | None = None,
            ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, H, Q, hd) for the last `queries` positions (all: None), keys and values
        (B, KV, T, hd) for all of them."""
        B, T, _ = x.shape
        Q = T if queries is None else queries
        if Q == T and self.fused is not None and self.fused.usable():
            qkv = self.fused.joined(x)  # q's and k's heads side by side: one rotation for both
            n = self.n_head + self.n_kv
            qk = apply_rope(qkv[..., :n * self.hd].reshape(B, T, n, self.hd).transpose(1, 2),
                            cos, sin)
            v = qkv[..., n * self.hd:].reshape(B, T, self.n_kv, self.hd).transpose(1, 2)
            return qk[:, :self.n_head], qk[:, self.n_head:], v
        q, k, v = self.q_proj(x[:, T - Q:]), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, Q, self.n_head, self.hd).transpose(1, 2)
        k = k.reshape(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.reshape(B, T, self.n_kv, self.hd).transpose(1, 2)
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
        q = q.to(k.dtype)  # the cache's dtype (fp32) for the products; back to x's for o_proj
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
        return self.o_proj(y.transpose(1, 2).reshape(B, Q, -1).to(x.dtype))


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


def activation(name: str):
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu if name == "gelu" else F.silu


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = Linear(d, m, bias=bias)
        self.up_proj = Linear(d, m, bias=bias)
        self.down_proj = Linear(m, d, bias=bias)
        self.act = activation(config.activation)
        self.fused: Fused | None = None  # `Transformer.fuse_projections`

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None and self.fused.usable():
            gate, up = self.fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class PlainMLP(nn.Module):
    """StarCoder2's: no gate."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.c_fc = Linear(d, m, bias=bias)
        self.c_proj = Linear(m, d, bias=bias)
        self.act = activation(config.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config) if config.mlp == "gated" else PlainMLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None, layer: int, start: int, queries: int | None = None,
                ) -> Tensor:
        """The block's output for the last `queries` positions (all: None)."""
        y = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, start, queries)
        x = (x if queries is None else x[:, x.shape[1] - queries:]) + y
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The network; its weights are set after construction (`init_random`, or a checkpoint's
    through `checkpoint.load_model`, which builds it on the meta device)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # on the meta device (checkpoint loading) there are no values to draw, and nn.Embedding's
        # normal draw there imports torch._dynamo: 1.3-1.7 s of a server's start-up (measured)
        shape = (config.vocab_size, config.hidden_size)
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape)
                                         if torch.empty(0).is_meta else None)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = make_norm(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.packed_output: Tensor | None = None  # `pack_output_layer`
        self.rope_kept: tuple[Tensor, Tensor] | None = None  # `rope`

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
        given = positions
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        window = self.config.sliding_window
        if window is not None and int(positions.max()) >= window:  # some key is out of reach
            mask = windowed(mask, start, positions, window)
        if cache is not None:
            mask = attention_mask(mask, start, T)
        cos, sin = self.rope(positions, start + T if given is None else None)
        x = self.embed(tokens)
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

    def rope(self, positions: Tensor, end: int | None) -> tuple[Tensor, Tensor]:
        """`rope_tables` at `positions`, looked up in tables kept for positions [0, n) (n doubles
        as needed): computed each pass they took eight operator calls, about 40 us, against
        about 8 us for the lookup (measured). `end`: one past the largest position, when the
        caller knows it. Training, and a traced (compiled) pass, compute them: nothing kept
        between steps for autograd or the tracer to follow."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return rope_tables(self.config, positions)
        end = int(positions.max()) + 1 if end is None else end
        kept = self.rope_kept
        if kept is None or kept[0].shape[0] < end or kept[0].device != positions.device:
            n = max(end, 2 * kept[0].shape[0] if kept is not None else 256)
            kept = self.rope_kept = rope_tables(self.config,
                                                torch.arange(n, device=positions.device))
        return kept[0][positions], kept[1][positions]

    def embed(self, tokens: Tensor) -> Tensor:
        x = self.embed_tokens(tokens)
        if self.config.embed_scale:  # Gemma: times sqrt(hidden), rounded to the weights' dtype
            x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)
        return x

    def output(self, x: Tensor, inference: bool = False) -> Tensor:
        """The output layer: logits (B, T, vocab) for hidden states x (B, T, hidden). Several rows
        of an inference pass use the packed copy of its weights where there is one
        (`pack_output_layer`); one row, or training, the layer itself."""
        B, T, D = x.shape
        packed = self.packed_output
        if (packed is None or not inference or B * T < 2 or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dtype != torch.float32):
            return self.lm_head(x)
        rows = bucket_rows(B * T)  # oneDNN's product: a kernel per row count, as bucketed_linear
        padded = F.pad(x.reshape(B * T, D), (0, 0, 0, rows - B * T))
        return packed_linear(padded, packed, self.lm_head.bias)[:B * T].view(B, T, -1)

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

    def fuse_projections(self) -> None:
        """Run q, k and v, and gate and up, as one product each at inference (`Fused`); fp32
        weights keep the transposed layout of `transpose_projections`."""
        for block in self.layers:
            attention, mlp = block.self_attn, block.mlp
            transposed = attention.q_proj.weight.dtype == torch.float32
            attention.fused = Fused([attention.q_proj, attention.k_proj, attention.v_proj],
                                    transposed)
            if isinstance(mlp, MLP):
                mlp.fused = Fused([mlp.gate_proj, mlp.up_proj], transposed)

    def new_cache(self, batch: int = 1, max_seq: int | None = None) -> KVCache:
        max_seq = max_seq or self.config.max_position_embeddings
        return KVCache(self.config, batch, max_seq, torch.float32)

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


def windowed(mask: Tensor | None, start: int, positions: Tensor, window: int) -> Tensor:
    """`mask` (T, K) bool as `forward` takes it (None: causal) widened to all start+T keys,
    with the keys that lie `window` or more positions behind a query hidden. The cache's slots
    before `start` hold positions 0..start-1; the pass's own keys are at `positions`."""
    T = positions.numel()
    full = causal_mask(start, T) if mask is None else torch.cat(
        [torch.ones(T, start + T - mask.shape[1], dtype=torch.bool), mask], dim=1)
    keys = torch.cat([torch.arange(start), positions.cpu()])
    return full & (keys[None, :] > positions.cpu()[:, None] - window)


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
    x = model.embed(tokens)
    visible = causal_mask(0, T)
    if cfg.sliding_window is not None:
        visible &= torch.arange(T)[None, :] > torch.arange(T)[:, None] - cfg.sliding_window
    for block in model.layers:
        attn = block.self_attn
        q, k, v = attn.qkv(block.input_layernorm(x), cos, sin)
        rep = attn.n_head // attn.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.hd)
        scores = scores.masked_fill(~visible, float("-inf"))
        y = (scores.softmax(-1) @ v.float()).to(x.dtype)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x)).float()
