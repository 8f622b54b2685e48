"""Names after a dot, weighted by how the file already uses the receiver.

A small model often knows that `retry_state.` wants an attribute but not which one; the file
usually says: `retry_state.outcome` appears five lines up, or in the code after the cursor, which
may lie beyond the part of the file that fits the prompt. `uses(receiver, text)` counts the
attributes a receiver is seen with, and `MemberPrior` turns the counts into a bias on the next
tokens while the name is being spelled: the product of the model's distribution and a prior over
names in which a name seen `n` times gets `1 + n / escape` times the weight of a name never seen,
so the model still decides among unseen names and keeps its say between seen ones. Measured on
held-out code, counting the workspace's other files as well gained nothing over the file alone.

The bias is added to the logits in `generate.choose`, so greedy decoding and sampling both draw
from the biased distribution and speculative decoding verifies against it: drafts stay lossless
with respect to what plain decoding with the prior writes. Engines elsewhere (runtime/remote.py)
pick their own tokens: the prior cannot weigh them there.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

import torch
from torch import Tensor

from tokenfill.completion.monitor import NameSpelling, name_breaks
from tokenfill.runtime.tokenizer import Tokenizer

DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")
ESCAPE = 0.5    # uses that count as much as every name never seen together (tuned on held-out code)


def uses(receiver: str, text: str) -> Counter[str]:
    """How often each attribute follows `receiver.` in `text`; nothing for a receiver that is not
    a dotted name (a call's result, an index: its text says little about its type)."""
    if not DOTTED.match(receiver):
        return Counter()
    pattern = re.compile(r"(?<![\w.])" + re.escape(receiver) + r"\.([A-Za-z_]\w*)")
    return Counter(pattern.findall(text))


class MemberPrior(NameSpelling):
    """Decoding prior (generate.choose): tokens that spell on towards a name seen after this
    receiver get log(1 + mass / escape) more, where mass is the weighted uses of the names they
    lead to. No mask: every token stays possible."""

    def __init__(self, tokenizer: Tokenizer, counts: Mapping[str, float], before: bytes,
                 escape: float = ESCAPE):
        super().__init__(tokenizer, before)
        self.counts = {name.encode(): n for name, n in counts.items() if n > 0}
        self.escape = escape
        self.done = not self.counts

    def allowed(self) -> Tensor | None:
        return None

    def bias(self) -> Tensor | None:
        """(vocab,) float to add to the logits, or None once the name can be no seen one."""
        if self.done:
            return None
        mass = self.masses()
        if mass is None:
            self.done = True
            return None
        return torch.log1p(mass / self.escape)

    def masses(self) -> Tensor | None:
        """(vocab,) weighted uses of the seen names each token leads towards; None if none can."""
        candidates = {name: n for name, n in self.counts.items() if name.startswith(self.typed)}
        if not candidates:
            return None
        mass = torch.zeros(len(self.table))
        for name, n in candidates.items():
            rest = name[len(self.typed):]
            if not rest:  # the name is whole: a token that ends it completes it
                mass += n * name_breaks(self.tokenizer)
                continue
            mass[self.toward(rest)] += n
        return mass
