from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tokenfill.runtime import hardware


def test_resolve_dtype(monkeypatch):
    assert hardware.resolve_dtype("fp32") is torch.float32
    assert hardware.resolve_dtype("bf16") is torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hardware.resolve_dtype("auto") is torch.float32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert hardware.resolve_dtype("auto") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        hardware.resolve_dtype("fp8")


def test_auto_measures_which_dtype_decodes_faster_once(monkeypatch, tmp_path):
    """With fast-bf16 flags, `auto` asks the trial (a one-layer network of the model's shape),
    whose answer is kept in the cache folder: the next start reads it instead of measuring."""
    from tests.conftest import tiny_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    config = tiny_config(300)
    trials = []

    def trial(*shape):
        trials.append(shape)
        return torch.float32

    monkeypatch.setattr(hardware, "_faster_dtype", trial)
    assert hardware.resolve_dtype("auto", config) is torch.float32
    assert hardware.resolve_dtype("auto", config) is torch.float32
    assert len(trials) == 1 and trials[0][0] == config.hidden_size
    kept = (tmp_path / "tokenfill" / "dtype.json")
    kept.write_text(kept.read_text().replace('"fp32"', '"bf16"'))
    assert hardware.resolve_dtype("auto", config) is torch.bfloat16  # what the file says
    assert len(trials) == 1


def test_the_trial_runs_both_dtypes_and_answers_one():
    assert hardware._faster_dtype(32, 64, 4, 2, 8, 100, steps=2) in (torch.float32,
                                                                    torch.bfloat16)


def test_describe_machine_names_cores():
    assert "cores" in hardware.describe_machine() or torch.cuda.is_available()


def test_kernel_caches_are_bounded_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    hardware.bound_kernel_caches(32)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "32"
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"


def test_importing_the_runtime_bounds_the_caches_in_a_new_process():
    code = ("import os, tokenfill.runtime; "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(hardware.KERNEL_CACHE_ENTRIES)] * 2
