"""Multi-token heads: a head starts as the model's next-token guess, saves and loads beside a
checkpoint, and a file of the wrong shape is refused."""

from __future__ import annotations

import pytest
import torch

from tokenfill.runtime.heads import HEADS_FILE, FutureHeads, load_heads, save_heads


def test_fresh_heads_pass_the_hidden_state_through():
    heads = FutureHeads(16, 3)
    h = torch.randn(2, 5, 16)
    assert len(heads) == 3 and all(torch.equal(out, h) for out in heads(h))


def test_heads_save_and_load_beside_a_checkpoint(tmp_path):
    heads = FutureHeads(16, 2)
    with torch.no_grad():
        for p in heads.proj:
            p.weight.normal_()
    save_heads(heads, tmp_path, dtype=torch.float32)
    loaded = load_heads(tmp_path, 16)
    h = torch.randn(3, 16)
    assert all(torch.allclose(a, b) for a, b in zip(heads(h), loaded(h)))
    assert load_heads(tmp_path / "nowhere", 16) is None
    with pytest.raises(ValueError, match="32 x 32"):
        load_heads(tmp_path, 32)
    assert (tmp_path / HEADS_FILE).is_file()


def test_head_count_is_bounded():
    with pytest.raises(ValueError, match="heads"):
        FutureHeads(16, 0)
