"""Drafters: cheap guesses of the tokens that come next, for speculative decoding to verify.

None of them is trained. Each reads the tokens so far (the prompt, which holds the prefix, the
suffix and any extra context, then what was generated; the last one is the token the next
forward pass starts from) and proposes draft nodes: a path of tokens after that last token, and
the drafter's guess of the chance that the path's last token is accepted once the ones before it
were. A node also names its source (drafter and kind), so that the observed acceptance of each
source can replace the guess (`AcceptanceRates`).

- `PromptLookup`: the longest recent n-gram match in the context, and the tokens after it.
- `NGramDrafter`: next-token counts of the context (`per_request`) or of every request so far,
  followed while they clear a minimum count and a minimum share.
- `TokenRecycling`: the model's own top next tokens after each token, from every verification
  pass (rejected branches too), kept across requests.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Draft:
    path: tuple[int, ...]   # tokens after the last one of the context
    guess: float            # the drafter's estimate of P(path[-1] accepted | path[:-1] accepted)
    source: str             # "drafter:kind": whose acceptance is counted for it


class Drafter(Protocol):
    name: str

    def begin(self, context: Sequence[int]) -> None:
        """A new request starts from `context` (its prompt)."""

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        """At most `budget` nodes, none deeper than `depth`; every node's parent path is there."""

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        """A forward pass scored `tokens` (T,): `logits` (T, vocab) are what follows each one."""

    def extend(self, context: Sequence[int], new: int) -> None:
        """The context grew by its last `new` tokens (accepted output)."""

    def finish(self, context: Sequence[int]) -> None:
        """The request is over; `context` is its prompt and output."""

    def nbytes(self) -> int:
        """Memory it keeps across requests, roughly."""


class PromptLookup:
    """The last `n` tokens (n from `max_n` down to `min_n`) matched earlier in the context; the
    tokens that followed the `width` most recent matches with distinct continuations are
    proposed, up to `depth` long. An index of every n-gram's end positions, built once per
    request and extended as tokens are accepted, keeps a lookup to a few dictionary reads."""

    name = "prompt"

    def __init__(self, max_n: int = 4, min_n: int = 1, width: int = 3):
        self.max_n, self.min_n, self.width = max_n, min_n, width
        self.index: dict[tuple[int, ...], list[int]] = defaultdict(list)
        self.indexed = 0

    def begin(self, context: Sequence[int]) -> None:
        self.index, self.indexed = defaultdict(list), 0  # built at the first proposal: a
        # completion that ends after one token never pays for it

    def _index(self, context: Sequence[int]) -> None:
        for end in range(self.indexed + 1, len(context) + 1):
            for n in range(self.min_n, self.max_n + 1):
                if end - n >= 0:
                    self.index[tuple(context[end - n:end])].append(end)
        self.indexed = max(self.indexed, len(context))

    def extend(self, context: Sequence[int], new: int) -> None:
        self._index(context)

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        self._index(context)
        here = len(context)
        out: dict[tuple[int, ...], Draft] = {}
        for n in range(min(self.max_n, here), self.min_n - 1, -1):
            ends = [e for e in self.index.get(tuple(context[here - n:]), ()) if e < here]
            firsts: set[int] = set()
            for end in reversed(ends):
                run = tuple(context[end:end + depth])
                if not run or run[0] in firsts:
                    continue
                firsts.add(run[0])
                for k in range(1, len(run) + 1):
                    path = run[:k]
                    if path not in out:
                        out[path] = Draft(path, 0.9 if n >= 3 else 0.6 if n == 2 else 0.3,
                                          f"prompt:n{n}:d{min(k, 4)}")
                if len(firsts) >= self.width or len(out) >= budget:
                    break
            if out:
                break  # the longest match only: shorter ones mostly repeat it, worse
        return list(out.values())[:budget]

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        pass

    def finish(self, context: Sequence[int]) -> None:
        self.index, self.indexed = defaultdict(list), 0

    def nbytes(self) -> int:
        return 0  # nothing outlives a request


class NGramDrafter:
    """Counts of the token after each n-gram (n from `max_n` down to 1). A draft follows the
    most frequent next token of the longest n-gram whose count is at least `min_count` and whose
    top share is at least `min_share`, token after token. `per_request` counts the context
    (reset with each request); otherwise the counts are fed each finished request's prompt and
    output and kept, up to `max_keys` n-grams (when full, the oldest go, down to half)."""

    def __init__(self, name: str, per_request: bool, max_n: int = 3, min_count: int = 2,
                 min_share: float = 0.5, max_keys: int = 100_000):
        self.name, self.per_request = name, per_request
        self.max_n, self.min_count, self.min_share, self.max_keys = max_n, min_count, min_share, max_keys
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}
        self.counted = 0

    def _count(self, context: Sequence[int], start: int) -> None:
        counts = self.counts
        for i in range(max(start, 1), len(context)):
            nxt = context[i]
            for n in range(1, min(self.max_n, i) + 1):
                key = tuple(context[i - n:i])
                row = counts.get(key)
                if row is None:
                    row = counts[key] = {}
                row[nxt] = row.get(nxt, 0) + 1
        if len(counts) > self.max_keys:  # the oldest go, down to half the limit
            for key in list(counts)[:len(counts) - self.max_keys // 2]:
                del counts[key]

    def begin(self, context: Sequence[int]) -> None:
        if self.per_request:
            self.counts, self.counted = {}, 0  # counted at the first proposal, as PromptLookup

    def extend(self, context: Sequence[int], new: int) -> None:
        pass  # `propose` counts what it has not seen

    def finish(self, context: Sequence[int]) -> None:
        if not self.per_request:
            self._count(context, 0)

    def _next(self, context: Sequence[int]) -> tuple[int, float, int] | None:
        for n in range(min(self.max_n, len(context)), 0, -1):
            row = self.counts.get(tuple(context[len(context) - n:]))
            if not row:
                continue
            total = sum(row.values())
            token, count = max(row.items(), key=lambda kv: kv[1])
            if total >= self.min_count and count / total >= self.min_share:
                return token, count / total, n
        return None

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        if self.per_request and self.counted < len(context):
            self._count(context, self.counted)
            self.counted = len(context)
        tail = list(context[-self.max_n:])
        path: tuple[int, ...] = ()
        out = []
        for _ in range(min(depth, budget)):
            found = self._next(tail)
            if found is None:
                break
            token, share, n = found
            path += (token,)
            tail = (tail + [token])[-self.max_n:]
            out.append(Draft(path, share, f"{self.name}:n{n}:s{int(share * 4)}"))
        return out

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        pass

    def nbytes(self) -> int:
        if self.per_request:
            return 0
        # a dict entry and a small dict per n-gram, a tuple key, an int entry per next token
        return sum(200 + 60 * len(key) + 70 * len(row) for key, row in self.counts.items())


class TokenRecycling:
    """A table of the model's `k` most likely next tokens after each token, rewritten from every
    verification pass (each node's logits, accepted or not) and kept across requests. A draft
    grows best-first from the last token through the table, each rank with its own guess."""

    name = "recycle"

    def __init__(self, vocab: int, k: int = 6):
        self.k = k
        self.table = torch.full((vocab, k), -1, dtype=torch.int32)
        self.rows: list[list[int]] = [[] for _ in range(vocab)]  # the table, as Python lists
        self.guess = [0.5 / (r + 1) for r in range(k)]

    def begin(self, context: Sequence[int]) -> None:
        pass

    def extend(self, context: Sequence[int], new: int) -> None:
        pass

    def finish(self, context: Sequence[int]) -> None:
        pass

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        vocab = self.table.shape[0]
        top = logits[:, :vocab].topk(self.k, dim=-1).indices.to(torch.int32)
        self.table[tokens.long()] = top
        for token, row in zip(tokens.tolist(), top.tolist()):
            self.rows[token] = row

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        if not context or not self.rows[context[-1]]:
            return []
        out: list[Draft] = []
        heap = [(-self.guess[r], r, (t,)) for r, t in enumerate(self.rows[context[-1]])]
        heapq.heapify(heap)
        while heap and len(out) < budget:
            neg, r, path = heapq.heappop(heap)
            out.append(Draft(path, self.guess[r], f"recycle:r{r}"))
            if len(path) < depth:
                for r2, t in enumerate(self.rows[path[-1]]):
                    heapq.heappush(heap, (neg * self.guess[r2], r2, path + (t,)))
        return out

    def nbytes(self) -> int:
        return self.table.numel() * 4 + sum(28 * len(row) + 56 for row in self.rows)


def registry(vocab: int) -> dict[str, Drafter]:
    """Every drafter by name, fresh."""
    return {"prompt": PromptLookup(),
            "ngram": NGramDrafter("ngram", per_request=True),
            "history": NGramDrafter("history", per_request=False, min_count=3, min_share=0.6),
            "recycle": TokenRecycling(vocab)}


DRAFTERS = ("prompt", "ngram", "history", "recycle")
