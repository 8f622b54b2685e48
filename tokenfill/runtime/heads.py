"""Multi-token prediction heads (Medusa; "Your LLM Knows the Future"; Future Token Prediction):
small layers that read the model's final hidden state at position t and guess the tokens at
t+2, t+3, ... through the model's own output layer, for speculative decoding to verify.

Head k is one residual block, `h + silu(W_k h)`, with W_k zero at the start of training so that
each head begins as the model's next-token guess. They are trained beside the model (recipe.py)
and saved beside the checkpoint as `heads.safetensors` (tensors `heads.K.weight`), so the
checkpoint itself stays a plain Hugging Face Llama that other runtimes load.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

HEADS_FILE = "heads.safetensors"
MAX_HEADS = 8


class FutureHeads(nn.Module):
    def __init__(self, hidden_size: int, count: int):
        super().__init__()
        if not 1 <= count <= MAX_HEADS:
            raise ValueError(f"heads: 1 to {MAX_HEADS}, not {count}")
        self.proj = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False)
                                  for _ in range(count))
        for p in self.proj:
            nn.init.zeros_(p.weight)

    def __len__(self) -> int:
        return len(self.proj)

    def forward(self, hidden: Tensor) -> list[Tensor]:
        """Each head's hidden state (same shape as `hidden`); the model's `output` turns one into
        logits: head k's for the token k + 1 places after the next one."""
        return [hidden + F.silu(p(hidden)) for p in self.proj]


def save_heads(heads: FutureHeads, directory: str | Path, dtype: torch.dtype = torch.bfloat16
               ) -> None:
    tensors = {f"heads.{k}.weight": p.weight.detach().to(dtype).contiguous().cpu()
               for k, p in enumerate(heads.proj)}
    save_file(tensors, str(Path(directory) / HEADS_FILE), metadata={"format": "pt"})


def load_heads(directory: str | Path, hidden_size: int, dtype: torch.dtype = torch.float32
               ) -> FutureHeads | None:
    """The heads saved beside a checkpoint, or None where there are none. Heads of another
    width than the model's are refused."""
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    count = len(tensors)
    names = {f"heads.{k}.weight" for k in range(count)}
    if not count or set(tensors) != names or any(
            tuple(t.shape) != (hidden_size, hidden_size) for t in tensors.values()):
        raise ValueError(f"{path}: expected heads.0.weight ... heads.{count - 1}.weight, each "
                         f"{hidden_size} x {hidden_size} (the model's width)")
    heads = FutureHeads(hidden_size, count)
    with torch.no_grad():
        for k, p in enumerate(heads.proj):
            p.weight.copy_(tensors[f"heads.{k}.weight"].float())
    return heads.to(dtype).eval()
