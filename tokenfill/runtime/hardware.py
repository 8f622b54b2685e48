"""What the machine offers: whether bf16 matrix work is fast here, how many threads a pass
should use, and a one-line description.

bf16 is only fast on CPUs with AMX or AVX-512 BF16; on a plain AVX2 CPU PyTorch's bf16 matmul is
several times slower than fp32 (measured in BENCHMARKS.md), so `auto` picks fp32 there. Where the
flags are present it depends still (with AMX bf16 wins; with AVX-512 BF16 alone fp32 decoded the
bundled model faster), so a short trial decides, once per CPU and model shape.

Threads: OpenMP threads sleep between parallel regions (tokenfill/process.py), and waking them
costs more than a small pass gains from them: a decoding step or a draft tree of a few dozen
tokens runs faster on one thread, a long prompt faster on all of them. `use_threads_for` switches
per pass (`generate.forward` calls it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from functools import cache

import torch

from tokenfill.paths import user_cache

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# oneDNN (bf16 products, the packed output layer) builds a kernel per shape and keeps it in two
# caches, its own and that of PyTorch's wrapper, 1,024 entries each by default and about 0.65 MB
# an entry between them (measured): a server that met many shapes grew by hundreds of MB. The
# model pads its products to a few row counts (model.bucket_rows), so few shapes are met; 32
# holds a typing session's (decoding, a few tree and prompt sizes, five weight shapes each) and
# bounds the caches near 20 MB. A shape rebuilt after eviction costs about a millisecond.
KERNEL_CACHE_ENTRIES = 32


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Bound both caches, unless the environment sets them. They are read when oneDNN first
    builds a kernel, so this runs as the runtime is imported, before any model runs."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(entries))  # PyTorch's ideep wrapper


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_dtype(name: str = "auto", config=None) -> torch.dtype:
    """`bf16`, `fp32`, or `auto`: fp32 where the CPU has no AMX / AVX-512 BF16; where it has,
    the faster of the two for a model of `config` (a ModelConfig) by `faster_dtype`, or bf16
    when no config is given."""
    if name == "auto":
        if not cpu_has_fast_bf16():
            return torch.float32
        return torch.bfloat16 if config is None else faster_dtype(config)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


BF16_MARGIN = 0.9  # bf16 halves the weights' memory: it is kept unless fp32 is 10% faster


def faster_dtype(config) -> torch.dtype:
    """bf16 or fp32, whichever decodes faster here: a one-layer network of the model's shape
    (its vocabulary and MLP cut to 4,096 rows, so that a large model's trial stays small) runs
    a prompt, then single-token steps on one thread, as decoding runs them; the best of three
    rounds counts. Flags do not settle it: on an AVX-512 BF16 CPU without AMX, bf16 took 10-15%
    longer per completion of the bundled model than fp32, while with AMX it is the faster.
    The answer is kept per CPU, torch version and shape in the user's cache folder, so the trial
    runs once."""
    shape = (config.hidden_size, min(config.intermediate_size, 4096), config.num_attention_heads,
             config.num_key_value_heads, config.head_dim, min(config.vocab_size, 4096))
    key = f"{describe_machine()}|torch {torch.__version__}|{shape}"
    path = user_cache() / "dtype.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key] in DTYPES:
        return DTYPES[known[key]]
    chosen = _faster_dtype(*shape)
    known[key] = "fp32" if chosen == torch.float32 else "bf16"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1) + "\n")
    except OSError:  # a read-only home: measured again next time
        pass
    return chosen


@cache
def _faster_dtype(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                  vocab: int, steps: int = 16) -> torch.dtype:
    import time

    from tokenfill.runtime.model import ModelConfig, Transformer

    config = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=1, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim,
                         max_position_embeddings=64 + steps)
    times = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            with torch.device("meta"):
                model = Transformer(config)
            model = model.to_empty(device="cpu").to(dtype).eval()
            for p in model.parameters():  # any small values: only the time is read
                p.uniform_(-0.02, 0.02)
            if dtype == torch.float32:  # as load_model keeps fp32 weights
                model.transpose_projections()
                model.pack_output_layer()
            model.fuse_projections()
            prompt = torch.zeros(1, 64, dtype=torch.long)
            best = float("inf")
            for _ in range(3):
                kv = model.new_cache(1, 64 + steps)
                start = time.perf_counter()
                use_threads_for(64)
                model(prompt, 0, kv, keep=1)
                use_threads_for(1)
                for i in range(steps):
                    model(prompt[:, :1], 64 + i, kv)
                best = min(best, time.perf_counter() - start)
            times[dtype] = best
    return torch.float32 if times[torch.float32] < BF16_MARGIN * times[torch.bfloat16] \
        else torch.bfloat16


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU or a CPU with fast bf16; full fp32 otherwise."""
    if device.type == "cuda" or cpu_has_fast_bf16():
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_precision(device: torch.device) -> str:
    """What training_autocast does on `device`, in words (for the model card)."""
    if device.type == "cuda" or cpu_has_fast_bf16():
        return "bf16 autocast"
    return "fp32 (this CPU has no fast bf16: no AMX or AVX-512 BF16)"


SMALL_PASS = 128                    # tokens: passes shorter than this run on one thread
MAX_THREADS = torch.get_num_threads()  # as the user or the machine set it at start
_threads = [MAX_THREADS]


def threads_for(tokens: int) -> int:
    return 1 if tokens < SMALL_PASS else MAX_THREADS


def use_threads_for(tokens: int) -> None:
    """Set torch's thread count for a pass over `tokens` tokens (a no-op when it is already)."""
    n = threads_for(tokens)
    if n != _threads[0]:
        torch.set_num_threads(n)
        _threads[0] = n


def describe_machine() -> str:
    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    simd = "AMX" if "amx_bf16" in cpu_flags() else "AVX-512" if "avx512f" in cpu_flags() else \
        "AVX2" if "avx2" in cpu_flags() else "no AVX2"
    return f"{name}, {os.cpu_count()} cores ({simd}), {MAX_THREADS} torch threads"
