from __future__ import annotations

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


def test_describe_machine_names_cores():
    assert "cores" in hardware.describe_machine() or torch.cuda.is_available()
