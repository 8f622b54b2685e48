"""What the machine offers: whether bf16 matrix work is fast here, how many threads a pass
should use, and a one-line description.

bf16 is only fast on CPUs with AMX or AVX-512 BF16; on a plain AVX2 CPU PyTorch's bf16 matmul is
several times slower than fp32 (measured in BENCHMARKS.md), so `auto` picks by the CPU's flags.

Threads: OpenMP threads sleep between parallel regions (tokenfill/process.py), and waking them
costs more than a small pass gains from them: a decoding step or a draft tree of a few dozen
tokens runs faster on one thread, a long prompt faster on all of them. `use_threads_for` switches
per pass (`generate.forward` calls it).
"""

from __future__ import annotations

import contextlib
import os
import platform
from functools import cache

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


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


def resolve_dtype(name: str = "auto") -> torch.dtype:
    """`bf16`, `fp32`, or `auto`: bf16 where the CPU has AMX / AVX-512 BF16, else fp32."""
    if name == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


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
