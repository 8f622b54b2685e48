"""GGUF files both ways: a checkpoint directory out to one `.gguf` file (what llama.cpp and Ollama
serve), and a Llama- or Qwen2-family `.gguf` file in as a network and a tokenizer.

GGUF keeps llama.cpp's conventions, which differ from the Hugging Face layout in two places:
- names: `blk.N.attn_q.weight` for `layers.N.self_attn.q_proj.weight` (`NAMES`);
- the `llama` architecture rotates adjacent pairs of each head's dimensions where HF rotates the
  first half against the second, so its q and k rows are reordered on the way out and back on the
  way in (`permute_rope`); `qwen2` rotates halves, as HF does, and is written unchanged.

The tokenizer travels twice: the byte-level BPE vocabulary and merges llama.cpp reads
(`tokenizer.ggml.*`), and the whole `tokenizer.json` (`tokenizer.huggingface.json`), which import
prefers, since llama.cpp's named pre-tokenizers do not include ours. A file without it is rebuilt
from tokens and merges with the pre-tokenizer its `tokenizer.ggml.pre` names (`PRETOKENIZERS`).

Weights are read as F32, F16, BF16, Q8_0 or Q4_K and dequantized at load into the runtime's dtype.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tokenfill.runtime.checkpoint import CheckpointError, check_sizes, from_state, weight_files
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.runtime.tokenizer import Tokenizer

# HF name (without `model.`) -> GGUF name; {i} is the layer
NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
ARCHS = ("llama", "qwen2")  # model_type and GGUF architecture are spelled alike for these two
# the tensor types import dequantizes (GGUF files in other types are refused by name)
READABLE = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
            gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.Q8_0,
            gguf.GGMLQuantizationType.Q4_K}
WRITABLE = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
# llama.cpp's pre-tokenizer names -> the split each stands for, for files without tokenizer.json
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRETOKENIZERS = {"default": GPT2_SPLIT, "gpt-2": GPT2_SPLIT, "qwen2": QWEN2_SPLIT,
                 "starcoder": GPT2_SPLIT}
FIM_KEYS = {"<fim_prefix>": gguf.Keys.Tokenizer.FIM_PRE_ID,
            "<fim_suffix>": gguf.Keys.Tokenizer.FIM_SUF_ID,
            "<fim_middle>": gguf.Keys.Tokenizer.FIM_MID_ID,
            "<fim_pad>": gguf.Keys.Tokenizer.FIM_PAD_ID,
            "<|fim_prefix|>": gguf.Keys.Tokenizer.FIM_PRE_ID,
            "<|fim_suffix|>": gguf.Keys.Tokenizer.FIM_SUF_ID,
            "<|fim_middle|>": gguf.Keys.Tokenizer.FIM_MID_ID,
            "<|fim_pad|>": gguf.Keys.Tokenizer.FIM_PAD_ID,
            "<file_sep>": gguf.Keys.Tokenizer.FIM_SEP_ID,
            "<repo_name>": gguf.Keys.Tokenizer.FIM_REP_ID}
FIM_LAYOUT_KEY = "tokenfill.fim_layout"


def gguf_names(layers: int) -> dict[str, str]:
    """Every HF name of a network with `layers` layers -> its GGUF name."""
    names = {}
    for hf, gg in NAMES.items():
        if "{i}" in hf:
            names.update({hf.format(i=i): gg.format(i=i) for i in range(layers)})
        else:
            names[hf] = gg
    return names


def permute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """q or k rows (heads * head_dim, ...) from HF's halves order to llama.cpp's pairs order:
    within each head, rows [0, d/2) and [d/2, d) are interleaved."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """`permute_rope` undone."""
    return (w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def rope_heads(name: str, config: ModelConfig) -> int | None:
    """The head count to reorder a tensor by in the `llama` layout; None for other tensors."""
    if config.model_type != "llama":
        return None
    if ".q_proj." in name:
        return config.num_attention_heads
    if ".k_proj." in name:
        return config.num_key_value_heads
    return None


# ----- out ------------------------------------------------------------------------------------

def export(directory: str | Path, out: str | Path, dtype: str = "f16") -> Path:
    """Write the checkpoint directory as one GGUF file of `dtype` (f32, f16, bf16 or q8_0; norms
    and biases stay f32, as llama.cpp expects). Returns the file's path."""
    from safetensors import safe_open

    from tokenfill.runtime.checkpoint import fim_layout, load_config

    if dtype not in WRITABLE:
        raise ValueError(f"dtype must be one of {', '.join(WRITABLE)}, not {dtype!r}")
    directory, out = Path(directory), Path(out)
    config = load_config(directory)
    if config.model_type not in ARCHS:
        raise CheckpointError(f"GGUF export covers {', '.join(ARCHS)}, not {config.model_type}")
    tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
    names = gguf_names(config.num_hidden_layers)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written aside and moved in whole: an engine may be reading the previous file
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(partial), config.model_type)
    write_config(writer, config, directory.name, FILE_TYPES[dtype])
    writer.add_string(FIM_LAYOUT_KEY, fim_layout(directory))
    write_tokenizer(writer, tokenizer, config.vocab_size)
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name.endswith("rotary_emb.inv_freq") or (
                        name == "lm_head.weight" and config.tie_word_embeddings):
                    continue
                if name not in names:
                    raise CheckpointError(f"{path}: no GGUF name for tensor {key}")
                w = f.get_tensor(key).float().numpy()
                heads = rope_heads(name, config)
                if heads is not None:
                    w = permute_rope(w, heads)
                add_tensor(writer, names[name], w, WRITABLE[dtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out)
    return out


def write_config(writer: gguf.GGUFWriter, config: ModelConfig, name: str,
                 file_type: gguf.LlamaFileType) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def add_tensor(writer: gguf.GGUFWriter, name: str, w: np.ndarray,
               qtype: gguf.GGMLQuantizationType) -> None:
    """One tensor in `qtype`; vectors (norms, biases) and rows that do not fit a quantized block
    stay f32."""
    if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, w.astype(np.float32))
        return
    if qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, w.astype(np.float16))
        return
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        writer.add_tensor(name, w.astype(np.float32))
        return
    data = gguf.quants.quantize(w.astype(np.float32), qtype)
    writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    """llama.cpp's view of the tokenizer (byte-level BPE tokens, types, merges, special ids),
    padded with unused tokens to the embedding's rows, and tokenizer.json whole."""
    spec = json.loads(tokenizer._tok.to_str())
    if spec["model"]["type"] != "BPE":
        raise CheckpointError(f"GGUF export covers byte-level BPE tokenizers, not "
                              f"{spec['model']['type']}")
    vocab = tokenizer._tok.get_vocab(with_added_tokens=True)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in vocab.items():
        if i < vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i in tokenizer.special_ids:
        if i < vocab_size:
            types[i] = gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")  # token ids are sent to llama.cpp, never text
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    end = tokenizer.token_id("<|endoftext|>")
    if end is not None:
        writer.add_eos_token_id(end)
        writer.add_bos_token_id(end)
        writer.add_eot_token_id(end)
    for text, key in FIM_KEYS.items():
        i = tokenizer.token_id(text)
        if i is not None and i in tokenizer.special_ids:
            writer.add_uint32(key, i)
    writer.add_string(gguf.Keys.Tokenizer.HF_JSON, tokenizer._tok.to_str())


# ----- in -------------------------------------------------------------------------------------

def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() == ".gguf"


def field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    return default if f is None else f.contents()


def read_config(reader: gguf.GGUFReader, path: Path) -> ModelConfig:
    arch = field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported; GGUF files of "
                              f"{', '.join(ARCHS)} load")
    k, a = gguf.Keys.LLM, gguf.Keys.Attention

    def get(key: str, default=None):
        return field(reader, key.format(arch=arch), default)

    embd = reader.get_tensor(tensor_index(reader, "token_embd.weight", path))
    heads = get(a.HEAD_COUNT)
    hidden = get(k.EMBEDDING_LENGTH)
    cfg = {"model_type": arch, "vocab_size": int(embd.shape[1]), "hidden_size": hidden,
           "intermediate_size": get(k.FEED_FORWARD_LENGTH),
           "num_hidden_layers": get(k.BLOCK_COUNT), "num_attention_heads": heads,
           "num_key_value_heads": get(a.HEAD_COUNT_KV, heads),
           "head_dim": get(a.KEY_LENGTH, hidden // heads if heads else None),
           "max_position_embeddings": min(get(k.CONTEXT_LENGTH, 2048), 1 << 20),
           "rms_norm_eps": get(a.LAYERNORM_RMS_EPS, 1e-6),
           "rope_theta": get(gguf.Keys.Rope.FREQ_BASE, 10000.0),
           "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors)}
    if get(gguf.Keys.Rope.SCALING_TYPE, "none") not in ("none", None):
        raise CheckpointError(f"{path}: RoPE scaling {get(gguf.Keys.Rope.SCALING_TYPE)!r} is "
                              f"not supported by this runtime")
    check_sizes({k: v for k, v in cfg.items() if k != "model_type"}, path)
    try:
        return ModelConfig.from_hf(cfg)
    except (ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def tensor_index(reader: gguf.GGUFReader, name: str, path: Path) -> int:
    for i, t in enumerate(reader.tensors):
        if t.name == name:
            return i
    raise CheckpointError(f"{path} has no tensor {name}")


def dequantized(tensor, path: Path) -> np.ndarray:
    """The tensor's values as float32, in torch's (rows, columns) order."""
    qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
    if qtype not in READABLE:
        raise CheckpointError(f"{path}: tensor {tensor.name} is {qtype.name}; this runtime reads "
                              f"{', '.join(sorted(t.name for t in READABLE))}")
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(gguf.quants.dequantize(tensor.data, qtype), dtype=np.float32).reshape(shape)


def load(path: str | Path, dtype: torch.dtype | Callable[[ModelConfig], torch.dtype] = torch.float32
         ) -> tuple[Transformer, Tokenizer, str]:
    """The network, the tokenizer and the FIM layout of a GGUF file; `dtype` may be chosen from
    the file's config (a function of it)."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file: {e}") from e
    config = read_config(reader, path)
    if callable(dtype):
        dtype = dtype(config)
    names = {g: h for h, g in gguf_names(config.num_hidden_layers).items()}
    state = {}
    for tensor in reader.tensors:
        name = names.get(tensor.name)
        if name is None:
            raise CheckpointError(f"{path}: tensor {tensor.name} has no place in a "
                                  f"{config.model_type} network")
        w = dequantized(tensor, path)
        heads = rope_heads(name, config)
        if heads is not None:
            w = unpermute_rope(w, heads)
        state[name] = torch.from_numpy(w.copy()).to(dtype)
    model = from_state(config, state, path)
    layout = field(reader, FIM_LAYOUT_KEY, "psm")
    return model, read_tokenizer(reader, path), layout if layout in ("psm", "spm") else "psm"


def read_tokenizer(reader: gguf.GGUFReader, path: Path) -> Tokenizer:
    """tokenizer.json when the file carries it, else byte-level BPE from tokens and merges."""
    whole = field(reader, gguf.Keys.Tokenizer.HF_JSON)
    if whole:
        return Tokenizer(HFTokenizer.from_str(whole))
    kind = field(reader, gguf.Keys.Tokenizer.MODEL)
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {kind!r} is not supported (byte-level "
                              f"BPE, 'gpt2', is)")
    pre = field(reader, gguf.Keys.Tokenizer.PRE, "default")
    split = PRETOKENIZERS.get(pre)
    if split is None:
        raise CheckpointError(f"{path}: pre-tokenizer {pre!r} is not known here; known: "
                              f"{', '.join(PRETOKENIZERS)}")
    tokens = field(reader, gguf.Keys.Tokenizer.LIST)
    types = field(reader, gguf.Keys.Tokenizer.TOKEN_TYPE, [gguf.TokenType.NORMAL] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, gguf.Keys.Tokenizer.MERGES, [])]
    # specials stay in the vocabulary, so that adding them below keeps their ids
    vocab = {t: i for i, t in enumerate(tokens) if types[i] != gguf.TokenType.UNUSED}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = [(i, t) for i, t in enumerate(tokens)
                if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)]
    for i, text in specials:
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if tok.token_to_id(text) != i:
            raise CheckpointError(f"{path}: special token {text!r} does not keep id {i}")
    return Tokenizer(tok)
