"""Drafters: cheap guesses of the tokens that come next, for speculative decoding to verify.

Each reads the tokens so far (the prompt, which holds the prefix, the
suffix and any extra context, then what was generated; the last one is the token the next
forward pass starts from) and proposes draft nodes: a path of tokens after that last token, and
the drafter's guess of the chance that the path's last token is accepted once the ones before it
were. A node also names its source (drafter and kind), so that the observed acceptance of each
source can replace the guess (`AcceptanceRates`).

- `PromptLookup`: the longest recent n-gram match in the context, and the tokens after it.
- `NGramDrafter`: next-token counts of the context (`per_request`) or of every request so far,
  followed while they clear a minimum count and a minimum share.
- `CorpusDrafter`: what a body of code most often has next after the last few tokens (an n-gram
  table built from the model's training corpus and kept beside the model, train/ngrams.py),
  followed token after token. A second one, `workspace`, drafts from the same kind of table
  counted from the user's workspace (context/drafts.py): retrieval as drafts, as in REST.
- `TokenRecycling`: the model's own top next tokens after each token, from every verification
  pass (rejected branches too), kept across requests.
- `HeadsDrafter`: the model's multi-token heads (runtime/heads.py), where the checkpoint has
  them: from the hidden state that chose the tree's root, each head's likeliest tokens at its
  depth. The one drafter that was trained.

The first two find where the last few tokens occurred before in `ContextTokens`, the request's
tokens with the positions after each token, which both share (`registry`).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from tokenfill.runtime.heads import FutureHeads
from tokenfill.speculative.ngram_table import MAX_N, NGramTable


class Draft(NamedTuple):  # a tuple: drafters make dozens per decoding step
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

    def settled(self, hidden: Tensor | None) -> None:
        """The final hidden state (hidden_size,) at the node whose logits chose the next tree's
        root, where the pass computed it (None: not known)."""

    def extend(self, context: Sequence[int], new: int) -> None:
        """The context grew by its last `new` tokens (accepted output)."""

    def finish(self, context: Sequence[int]) -> None:
        """The request is over; `context` is its prompt and output."""

    def nbytes(self) -> int:
        """Memory it keeps across requests, roughly."""


class ContextTokens:
    """A request's tokens, and where each token occurred with another after it, grown as the
    context grows: where the last few tokens occurred before is the last one's positions,
    narrowed one earlier token at a time (`reference_ends` is the plain loop it is tested
    against). Python lists, not arrays: after a forward pass the first numpy call of a step was
    measured at 63-84 us against 5-15 us warm, so a vectorised scan cost more than it saved."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.after: dict[int, list[int]] = {}  # token -> the positions e with tokens[e-1] == token

    def reset(self) -> None:
        self.tokens = []
        self.after = {}

    def sync(self, context: Sequence[int]) -> None:
        """Take the tokens `context` has beyond those held (a context only grows in a request)."""
        held = len(self.tokens)
        if len(context) <= held:
            return
        self.tokens.extend(context[held:])
        tokens, after = self.tokens, self.after
        for e in range(max(held, 1), len(tokens)):
            row = after.get(tokens[e - 1])
            if row is None:
                after[tokens[e - 1]] = [e]
            else:
                row.append(e)

    def ends(self, tail: Sequence[int], max_n: int) -> list[list[int]]:
        """For n = 1, 2, ... up to `max_n` (and the length of `tail`), while any is found: the
        positions e, in increasing order, with tokens[e-n:e] equal to the last n of `tail` and a
        token after them (e < the tokens held). The lists are the index's own: not to be
        changed."""
        out: list[list[int]] = []
        if not tail:
            return out
        found = self.after.get(tail[-1], [])
        tokens = self.tokens
        for n in range(1, min(max_n, len(tail)) + 1):
            if n > 1:
                want = tail[-n]
                found = [e for e in found if e >= n and tokens[e - n] == want]
            if not found:
                break
            out.append(found)
        return out


def reference_ends(context: Sequence[int], tail: Sequence[int], max_n: int) -> list[list[int]]:
    """`ContextTokens.ends`, one position and one n at a time."""
    out = []
    for n in range(1, min(max_n, len(tail)) + 1):
        found = [e for e in range(n, len(context)) if list(context[e - n:e]) == list(tail[-n:])]
        if not found:
            break
        out.append(found)
    return out


class PromptLookup:
    """The last `n` tokens (n from `max_n` down to `min_n`) matched earlier in the context; the
    tokens that followed the `width` most recent matches with distinct continuations are
    proposed, up to `depth` long."""

    name = "prompt"

    def __init__(self, max_n: int = 4, min_n: int = 1, width: int = 3,
                 seen: ContextTokens | None = None):
        self.max_n, self.min_n, self.width = max_n, min_n, width
        self.seen = seen if seen is not None else ContextTokens()
        # sources by match length and depth (4 and deeper alike)
        self.sources = [[f"prompt:n{n}:d{d}" for d in range(5)] for n in range(max_n + 1)]

    def begin(self, context: Sequence[int]) -> None:
        self.seen.reset()

    def extend(self, context: Sequence[int], new: int) -> None:
        pass  # `propose` takes what it has not seen

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        self.seen.sync(context)
        matched = self.seen.ends(context[-self.max_n:], self.max_n)
        if len(matched) < self.min_n:
            return []
        n = len(matched)  # the longest match only: shorter ones mostly repeat it, worse
        guess = 0.9 if n >= 3 else 0.6 if n == 2 else 0.3
        sources = self.sources[n]
        out: dict[tuple[int, ...], Draft] = {}
        firsts: set[int] = set()
        for end in reversed(matched[-1]):  # the most recent first
            if context[end] in firsts:
                continue
            firsts.add(context[end])
            run = tuple(context[end:end + min(depth, budget)])
            for k in range(1, len(run) + 1):
                path = run[:k]
                if path not in out:
                    out[path] = Draft(path, guess, sources[min(k, 4)])
            if len(firsts) >= self.width or len(out) >= budget:
                break
        return list(out.values())[:budget]

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        pass

    def settled(self, hidden: Tensor | None) -> None:
        pass

    def finish(self, context: Sequence[int]) -> None:
        self.seen.reset()

    def nbytes(self) -> int:
        return 0  # nothing outlives a request


class NGramDrafter:
    """Counts of the token after each n-gram of the request's context (n from `max_n` down to
    1), looked up where the n-gram occurs in it (`ContextTokens`). A draft follows the most
    frequent next token of the longest n-gram whose count is at least `min_count` and whose top
    share is at least `min_share`, token after token; ties go to the token seen first."""

    def __init__(self, name: str = "ngram", max_n: int = 3, min_count: int = 2,
                 min_share: float = 0.5, seen: ContextTokens | None = None):
        self.name = name
        self.max_n, self.min_count, self.min_share = max_n, min_count, min_share
        self.seen = seen if seen is not None else ContextTokens()
        # sources by n-gram length and share in quarters
        self.sources = [[f"{name}:n{n}:s{q}" for q in range(5)] for n in range(max_n + 1)]

    def begin(self, context: Sequence[int]) -> None:
        self.seen.reset()

    def extend(self, context: Sequence[int], new: int) -> None:
        pass  # `propose` takes what it has not seen

    def finish(self, context: Sequence[int]) -> None:
        self.seen.reset()

    def _next(self, tail: Sequence[int]) -> tuple[int, float, int] | None:
        found, tokens = self.seen.ends(tail, self.max_n), self.seen.tokens
        for n in range(len(found), 0, -1):
            row = Counter(tokens[e] for e in found[n - 1])
            total = sum(row.values())
            token, count = max(row.items(), key=lambda kv: kv[1])
            if total >= self.min_count and count / total >= self.min_share:
                return token, count / total, n
        return None

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        self.seen.sync(context)
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
            out.append(Draft(path, share, self.sources[n][int(share * 4)]))
        return out

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        pass

    def settled(self, hidden: Tensor | None) -> None:
        pass

    def nbytes(self) -> int:
        return 0  # nothing outlives the request


class NoRequestHooks:
    """Hooks for a drafter that keeps nothing per request: each does nothing."""

    def begin(self, context: Sequence[int]) -> None:
        pass

    def extend(self, context: Sequence[int], new: int) -> None:
        pass

    def finish(self, context: Sequence[int]) -> None:
        pass

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        pass

    def settled(self, hidden: Tensor | None) -> None:
        pass


class CorpusDrafter(NoRequestHooks):
    """The token a body of code most often has next after the last few (`NGramTable`, kept beside
    the model), followed token after token while the product of the shares along the path stays
    at least `floor`. Without a table it proposes nothing."""

    def __init__(self, table: NGramTable | None = None, floor: float = 0.01,
                 name: str = "corpus"):
        self.table, self.floor, self.name = table, floor, name
        self.memo: dict[tuple[int, ...], tuple[int, float, int] | None] = {}  # recent lookups
        # by n and share / 4
        self.sources = [[f"{name}:n{n}:s{q}" for q in range(5)] for n in range(MAX_N + 1)]

    def use(self, table: NGramTable | None) -> None:
        """Draft from `table` from now on (a request in another workspace)."""
        if table is not self.table:
            self.table = table
            self.memo.clear()

    def _lookup(self, tail: tuple[int, ...]) -> tuple[int, float, int] | None:
        """`table.lookup`, remembered: the next step's chain mostly walks the same contexts."""
        if tail not in self.memo:
            if len(self.memo) >= 4096:
                self.memo.clear()
            self.memo[tail] = self.table.lookup(tail)
        return self.memo[tail]

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        if self.table is None:
            return []
        tail = tuple(context[-MAX_N:])
        path: tuple[int, ...] = ()
        out, chance = [], 1.0
        for _ in range(min(depth, budget)):
            found = self._lookup(tail)
            if found is None:
                break
            token, share, n = found
            chance *= share
            if chance < self.floor:
                break
            path += (token,)
            tail = tail[len(tail) + 1 - MAX_N:] + (token,)
            out.append(Draft(path, share, self.sources[n][int(share * 4)]))
        return out

    def nbytes(self) -> int:
        table = self.table.nbytes() if self.table is not None else 0
        return table + 250 * len(self.memo)  # a tuple key and a tuple value per lookup kept


class TokenRecycling(NoRequestHooks):
    """A table of the model's `k` most likely next tokens after each token, rewritten from every
    verification pass (each node's logits, accepted or not) and kept across requests. A draft
    grows best-first from the last token through the table, each rank with its own guess, to at
    most `max_nodes` nodes: a node it drafts alone is seldom accepted, unlike the nodes other
    drafters draft too, so deeper ones never make a tree's cut and drafting them costs more than
    it gains."""

    name = "recycle"
    PASSED_OVER = 4  # rank paths looked at per node asked for, at most

    def __init__(self, vocab: int, k: int = 6, max_nodes: int = 8):
        self.vocab, self.k, self.max_nodes = vocab, k, max_nodes
        self.rows: list[list[int]] = [[] for _ in range(vocab)]  # by token: its top k, best first
        self.guess = [0.5 / (r + 1) for r in range(k)]
        self.sources = [f"recycle:r{r}" for r in range(k)]
        # by depth: rank paths in order (`order`), and whether they are all there are
        self.orders: dict[int, tuple[list[tuple[int, ...]], bool]] = {}

    def verified(self, tokens: Tensor, logits: Tensor) -> None:
        if logits.shape[-1] > self.vocab:
            logits = logits[:, :self.vocab]
        top = logits.topk(self.k, dim=-1).indices
        for token, row in zip(tokens.tolist(), top.tolist()):
            self.rows[token] = row

    def order(self, depth: int, n: int) -> list[tuple[int, ...]]:
        """The best `n` rank paths (each token's rank in the row of the token before it) none
        deeper than `depth`, best first by the product of their ranks' guesses (ties: the ranks
        compared in order). The order a draft grows in is the same whatever the tokens,
        so it is worked out once per depth."""
        known, every = self.orders.get(depth, ([], False))
        if len(known) < n and not every:
            known, heap = [], [(-g, (r,)) for r, g in enumerate(self.guess)]
            while heap and len(known) < n:
                neg, ranks = heapq.heappop(heap)
                known.append(ranks)
                if len(ranks) < depth:
                    for r, g in enumerate(self.guess):
                        heapq.heappush(heap, (neg * g, ranks + (r,)))
            self.orders[depth] = known, not heap  # `every`: no deeper path is left
        return known

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        """The best `budget` paths through the table, best first. A token not seen in a pass
        yet has no row: the paths under it are passed over, and the draft looks no further than
        the best `PASSED_OVER` x `budget` paths for others."""
        if not context or not self.rows[context[-1]] or depth <= 0:
            return []
        budget = min(budget, self.max_nodes)
        out: list[Draft] = []
        paths: dict[tuple[int, ...], tuple[int, ...]] = {(): (context[-1],)}  # with the root
        for ranks in self.order(depth, self.PASSED_OVER * budget):
            up = paths.get(ranks[:-1])
            if up is None:
                continue  # under a token with no row
            row = self.rows[up[-1]]
            if not row:
                continue
            paths[ranks] = path = up + (row[ranks[-1]],)
            out.append(Draft(path[1:], self.guess[ranks[-1]], self.sources[ranks[-1]]))
            if len(out) >= budget:
                break
        return out

    def nbytes(self) -> int:
        return sum(28 * len(row) + 56 for row in self.rows)  # ints and list headers


class HeadsDrafter(NoRequestHooks):
    """Head k (1-based) guesses the token k places after the root. From the hidden state that
    chose the root, each head's `top` likeliest tokens are laid out best-first by the product
    of their probabilities, a path taking one of head 1's, then one of head 2's, and so on
    (Medusa's tree). A node's guess is its head's probability for its token. Without heads, or
    without the hidden state (the first tree of a request), it drafts nothing."""

    name = "heads"

    def __init__(self, heads: FutureHeads | None = None,
                 output: Callable[[Tensor], Tensor] | None = None, top: int = 3):
        self.heads, self.output, self.top = heads, output, top
        self.hidden: Tensor | None = None
        self.sources = [f"heads:{k}" for k in range(1, (len(heads) if heads else 0) + 1)]

    @property
    def active(self) -> bool:
        return self.heads is not None and self.output is not None

    def begin(self, context: Sequence[int]) -> None:
        self.hidden = None

    def settled(self, hidden: Tensor | None) -> None:
        self.hidden = hidden

    def propose(self, context: Sequence[int], budget: int, depth: int) -> list[Draft]:
        if not self.active or self.hidden is None or depth <= 0 or budget <= 0:
            return []
        heads = self.heads(self.hidden.view(1, 1, -1))[:depth]
        logits = self.output(torch.cat(heads, dim=1))[0].float()  # (depth, vocab)
        top = logits.softmax(-1).topk(self.top, dim=-1)
        probs, tokens = top.values.tolist(), top.indices.tolist()
        out: list[Draft] = []
        heap = [(-probs[0][r], (r,)) for r in range(self.top)]
        while heap and len(out) < budget:
            neg, ranks = heapq.heappop(heap)
            d = len(ranks) - 1
            out.append(Draft(tuple(tokens[i][r] for i, r in enumerate(ranks)), probs[d][ranks[-1]],
                             self.sources[d]))
            if d + 1 < len(heads):
                for r in range(self.top):
                    heapq.heappush(heap, (neg * probs[d + 1][r], ranks + (r,)))
        return out

    def nbytes(self) -> int:
        return 0  # the heads are the model's


def registry(vocab: int, ngrams: NGramTable | None = None, heads: FutureHeads | None = None,
             output: Callable[[Tensor], Tensor] | None = None) -> dict[str, Drafter]:
    """Every drafter by name, fresh (`ngrams`: the model's corpus table, if it has one;
    `heads` and the model's `output` layer: its multi-token heads, if it has them)."""
    seen = ContextTokens()  # the request's tokens, indexed once for both context drafters
    return {"prompt": PromptLookup(seen=seen),
            "ngram": NGramDrafter("ngram", seen=seen),
            "corpus": CorpusDrafter(ngrams),
            "workspace": CorpusDrafter(None, name="workspace"),
            "recycle": TokenRecycling(vocab),
            "heads": HeadsDrafter(heads, output)}


DRAFTERS = ("prompt", "ngram", "corpus", "workspace", "recycle", "heads")
