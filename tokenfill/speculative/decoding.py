"""Lossless speculative decoding: draft a tree of likely next tokens, verify it in one pass.

Each step builds one `DraftTree` rooted at the last generated token from every drafter's
proposals, runs the whole tree through the model at once (tree attention over the KV cache), and
walks it from the root: at each node the next token is chosen from the model's own logits there,
exactly as plain decoding would choose it, and the walk goes on while that token is one of the
node's children. The accepted path's keys and values are moved into place; the rest are dropped
(later passes overwrite them). So every step yields at least one token, and usually more.

- Greedy: the argmax at each node, so the output is plain greedy decoding's.
- Sampling: the children are drafts of probability one (a point mass q), so the standard rule
  (`residual_accept`) accepts a child with probability p(child) under the node's distribution p,
  and on rejection moves on with the residual, p without that child, renormalised; after the
  last child it samples from the residual. The token that comes out is distributed as p itself,
  so the walk draws it from p directly, with plain sampling's own draw, and follows the child it
  matches. That is the same rule in distribution, and it takes exactly the random numbers plain
  sampling takes: with a seed, the output is plain sampling's, whatever was drafted.

Constraints, the stop rule and the time budget see every token in order, as in `generate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tokenfill.runtime.generate import (
    Constraint,
    Generation,
    Sampling,
    choose,
    forward,
    greedy_rows,
    probabilities,
    start,
)
from tokenfill.runtime.heads import FutureHeads
from tokenfill.runtime.model import KVCache, Transformer
from tokenfill.speculative.draft_tree import AcceptanceRates, DraftTree, PassCost
from tokenfill.speculative.drafters import DRAFTERS, Drafter, registry
from tokenfill.speculative.ngram_table import NGramTable


class Speculator:
    """The drafters, their acceptance rates and the cost of a pass, kept across requests (one per
    model: the token recycling table learns from every request). Trees hold at most
    `max_nodes` nodes, `max_depth` deep; within that, `DraftTree.build` sizes them."""

    def __init__(self, vocab: int, drafters: Sequence[str] = DRAFTERS, max_depth: int = 32,
                 max_nodes: int = 64, ngrams: NGramTable | None = None,
                 heads: FutureHeads | None = None, output: Callable[[Tensor], Tensor] | None = None):
        unknown = set(drafters) - set(DRAFTERS)
        if unknown:
            raise ValueError(f"unknown drafter(s) {sorted(unknown)}; known: {list(DRAFTERS)}")
        every = registry(vocab, ngrams, heads, output)
        self.drafters: list[Drafter] = [every[name] for name in drafters]
        # the multi-token heads read the hidden states of a pass: the pass keeps them
        self.hidden = heads is not None and output is not None and "heads" in drafters
        self.output = output
        self.rates = AcceptanceRates()
        self.cost = PassCost()
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.kept = max_nodes  # nodes in the last tree

    def nbytes(self) -> int:
        return sum(d.nbytes() for d in self.drafters)

    def use_workspace(self, table: NGramTable | None) -> None:
        """The workspace drafter's table for the requests that follow (None: it drafts nothing)."""
        for drafter in self.drafters:
            if drafter.name == "workspace":
                drafter.use(table)

    def tree(self, context: Sequence[int], budget: int, depth: int | None = None) -> DraftTree:
        """The step's draft tree: at most `budget` nodes, paths at most `depth` tokens deep.
        The drafters are asked for a few more nodes than the last tree kept (sized by its cost,
        `DraftTree.build`), not for the whole budget: proposals the cut would drop cost time."""
        depth = self.max_depth if depth is None else min(depth, self.max_depth)
        ask = min(budget, self.kept + 8)
        drafts = [d for drafter in self.drafters for d in drafter.propose(context, ask, depth)
                  ] if depth > 0 else []
        tree = DraftTree.build(context[-1], drafts, self.rates, budget, self.cost)
        self.kept = len(tree)
        return tree

    @torch.inference_mode()
    def generate(self, model: Transformer, prompt: list[int], max_new_tokens: int, *,
                 end_ids: frozenset[int] = frozenset(), sampling: Sampling = Sampling(),
                 should_stop: Callable[[int], bool] | None = None,
                 cache: KVCache | None = None, cached: int = 0,
                 vocab_limit: int | None = None, logits: Tensor | None = None,
                 constraints: Sequence[Constraint] = (),
                 generator: torch.Generator | None = None,
                 observe: Callable[[Tensor, int], None] | None = None) -> Generation:
        """`generate`'s contract (same arguments, same output for greedy), decoded by draft trees."""
        out = Generation()
        if cache is None:
            cache, cached = model.new_cache(1, len(prompt) + max_new_tokens + self.max_nodes), 0
        logits = start(model, prompt, out, cache, cached, logits)
        generator = generator if generator is not None else sampling.generator()
        t0 = time.perf_counter()
        context = list(prompt)
        for drafter in self.drafters:
            drafter.begin(context)

        def pick(logits: Tensor, argmax: int | None = None) -> int:
            return choose(logits, sampling, generator, vocab_limit, constraints, argmax, observe)

        def emit(token: int) -> bool:
            """Append the token; True when the generation is over."""
            if token in end_ids:
                out.finish_reason = "stop"
                return True
            out.tokens.append(token)
            context.append(token)
            if should_stop is not None and should_stop(token):
                out.finish_reason = "stop"
                return True
            return len(out.tokens) >= max_new_tokens

        over = max_new_tokens <= 0 or emit(pick(logits))
        pos = len(prompt)  # the last token goes here; the cache holds everything before it
        while not over:
            left = max_new_tokens - len(out.tokens)  # a deeper draft could not be used
            tree = self.tree(context, min(self.max_nodes, cache.max_seq - pos), left - 1)
            logits, hidden = self._verify(model, tree, pos, cache)
            out.forwards += 1
            # greedy: every node's argmax at once
            best = greedy_rows(logits, vocab_limit) if sampling.temperature == 0 else None
            accepted, over = self._walk(tree, logits, best, pick, emit, end_ids)
            for drafter in self.drafters:  # the last node taken chose the next tree's root
                drafter.settled(hidden[accepted[-1]] if hidden is not None else None)
            self._count(out, tree, accepted)
            self._lay(cache, accepted, pos)
            pos += len(accepted)
            out.cache_valid = pos
            for drafter in self.drafters:
                drafter.extend(context, len(accepted))
        for drafter in self.drafters:
            drafter.finish(context[len(prompt) - min(len(prompt), 3):])
        out.decode_s = time.perf_counter() - t0
        return out

    def _verify(self, model: Transformer, tree: DraftTree, pos: int, cache: KVCache
                ) -> tuple[Tensor, Tensor | None]:
        """One pass over the tree's nodes at cache slots pos, pos + 1, ...: each node's logits
        (T, vocab), and its final hidden state (T, hidden) where the heads need them. The pass
        is timed for the cost model; the drafters see its logits."""
        tokens = torch.tensor(tree.tokens)
        options = {} if len(tree) == 1 else {"positions": tree.positions(pos), "mask": tree.mask()}
        t0 = time.perf_counter()
        hidden = None
        if self.hidden:  # the same logits the model's own pass gives, by the same layer
            hidden = forward(model, tokens[None], pos, cache, hidden=True, **options)
            logits = model.output(hidden, True).float()[0]
            hidden = hidden[0]
        else:
            logits = forward(model, tokens[None], pos, cache, **options)[0]
        self.cost.observe(len(tree), time.perf_counter() - t0)
        for drafter in self.drafters:
            drafter.verified(tokens, logits)
        return logits, hidden

    def _walk(self, tree: DraftTree, logits: Tensor, best: list[int] | None,
              pick: Callable[[Tensor, int | None], int], emit: Callable[[int], bool],
              end_ids: frozenset[int]) -> tuple[list[int], bool]:
        """From the root, draw each next token from its node's logits and go on while it is a
        child (the acceptance rule: only the model's own choice is kept). The nodes taken, the
        root first, and whether the generation is over."""
        node, accepted = 0, [0]
        while True:
            kids = tree.children[node]
            token = pick(logits[node], best[node] if best is not None else None)
            hit = next((k for k in kids if tree.tokens[k] == token), None)
            for k in kids:
                together = len(tree.sources[k]) > 1
                for source in tree.sources[k]:
                    self.rates.observe(source, k == hit, together)
            over = emit(token)
            if hit is None or token in end_ids:  # an end token is not part of the output
                return accepted, over
            accepted.append(hit)
            node = hit
            if over:
                return accepted, over

    @staticmethod
    def _lay(cache: KVCache, accepted: list[int], pos: int) -> None:
        """Node i was written to slot pos + i; the accepted ones belong in pos, pos + 1, ...
        (depth first, the likeliest path's nodes are there already: those stay)."""
        first = next((i for i, node in enumerate(accepted) if node != i), len(accepted))
        if first < len(accepted):
            cache.move(torch.tensor(accepted[first:]) + pos, pos + first)

    @staticmethod
    def _count(out: Generation, tree: DraftTree, accepted: list[int]) -> None:
        out.drafted += len(tree) - 1
        out.accepted += len(accepted) - 1
        on_path = set(accepted[1:])
        for node in range(1, len(tree)):
            for name in {s.split(":")[0] for s in tree.sources[node]}:
                row = out.by_drafter.setdefault(name, [0, 0])
                row[0] += 1
                row[1] += node in on_path


def residual_accept(logits: Tensor, drafted: list[int], sampling: Sampling,
                    generator: torch.Generator | None) -> int:
    """The standard acceptance rule, for drafts of probability one (the children, best first):
    each in turn is accepted with its probability under the residual distribution, which on
    rejection loses that child and is renormalised; when none is, the token is drawn from the
    residual. Greedy: the argmax. (The decoding walk draws from p and matches instead: the same
    distribution, tested against this.)"""
    if sampling.temperature == 0:
        return int(logits.argmax())
    p = probabilities(logits, sampling).double()
    for token in drafted:
        total = float(p.sum())
        if total <= 0:
            break
        if float(torch.rand(1, generator=generator, dtype=torch.float64)) * total < float(p[token]):
            return token
        p[token] = 0
    return int(torch.multinomial(p, 1, generator=generator))
