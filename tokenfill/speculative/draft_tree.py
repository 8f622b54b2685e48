"""One draft tree per decoding step: the drafters' nodes merged, scored, cut to a budget.

A node's score is its estimated chance of being accepted: the product, along its path, of each
token's acceptance rate (observed per source, `AcceptanceRates`). The sum of the kept nodes'
scores is then the number of drafted tokens a pass is expected to accept, and a pass yields one
more of its own. The tree keeps the k best nodes, k at most `budget - 1`, chosen to maximise
those expected tokens per unit of the pass's cost (`PassCost`, timed on this machine): wide
trees where drafts are reliable or passes cheap, narrow ones where not. Since a child never
scores above its parent, every kept node's parent is kept. The root is the token the pass
starts from (the last one of the context). The tree runs in one forward pass: node i sits in
cache slot start+i, at RoPE position start+depth, and sees the cache before `start` and its
own ancestors (`mask`). Nodes come depth first, the best child first, so the likeliest path
sits in slots start+1, start+2, ...
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenfill.runtime.model import tree_mask
from tokenfill.speculative.drafters import Draft


class AcceptanceRates:
    """Per source, apart for nodes it drafted alone and nodes other drafters drafted too: drafted
    nodes tested (their parent was accepted) and accepted. A rate starts at the drafter's guess
    and moves to what was observed (`prior` pseudo-counts). Apart, since agreement says much:
    measured on block bodies, a token recycling node alone was accepted 7% of the time, while
    that source's rate over all its nodes read 25%."""

    def __init__(self, prior: float = 4.0):
        self.prior = prior
        self.tested: dict[tuple[str, bool], float] = defaultdict(float)
        self.accepted: dict[tuple[str, bool], float] = defaultdict(float)

    def rate(self, source: str, guess: float, together: bool = False) -> float:
        key = (source, together)
        n = self.tested.get(key, 0.0)
        return (self.accepted.get(key, 0.0) + self.prior * guess) / (n + self.prior)

    def observe(self, source: str, accepted: bool, together: bool = False) -> None:
        self.tested[source, together] += 1
        self.accepted[source, together] += accepted


class PassCost:
    """Seconds a forward pass of T tokens takes. A pass of one token (a plain step) costs what
    such passes were seen to cost (a running mean); a tree of T > 1 tokens costs a + b*T, fitted
    by least squares to the trees timed (older ones count less and less, by every pass timed),
    starting from a prior line: b = `slope` * a, put in seconds by the first pass timed, which
    plain steps keep adding back at their cost. Apart, since one token takes a
    cheaper path through the matrix products than two."""

    MAX_SLOPE = 0.25  # a bound well above the slopes seen (BENCHMARKS.md, pass costs)
    PATIENCE = 32     # plain steps in a row after which the tree fit drifts to the prior,
    DRIFT = 0.9       # keeping this much of the fit at each further plain step

    def __init__(self, slope: float = 0.03, prior: float = 4.0, decay: float = 0.98):
        self.decay = decay
        self.slope, self.prior = slope, prior
        self.sums: list[float] | None = None  # n, sum T, sum T^2, sum y, sum T*y
        self.step: float | None = None        # seconds for one token
        self._line: tuple[float, float] | None = None  # (a, b), until the next pass is timed
        self.plain = 0                                 # plain steps since the last tree

    def observe(self, T: int, seconds: float) -> None:
        self._line = None
        if self.sums is None:  # the prior, scaled to this machine: two points on its line
            a = seconds / (1 + self.slope * T)
            self.sums = [0.0] * 5
            for t in (1, 64):
                self._add(t, a * (1 + self.slope * t), self.prior)
        if T == 1:
            self.step = seconds if self.step is None else 0.9 * self.step + 0.1 * seconds
            # while no tree is timed, the fit drifts back to the prior line at today's step
            # cost: a few slow tree passes (a busy machine) would otherwise make trees look
            # dear for good, cut every tree to nothing, and so never be timed again
            self.plain += 1
            if self.plain > self.PATIENCE:
                self.sums = [x * self.DRIFT for x in self.sums]
                for t in (1, 64):
                    self._add(t, self.step * (1 + self.slope * t),
                              (1 - self.DRIFT) * self.prior / 2)
            return
        self.plain = 0
        self.sums = [x * self.decay for x in self.sums]
        self._add(T, seconds, 1.0)

    def _add(self, T: int, y: float, w: float) -> None:
        for k, v in enumerate((1, T, T * T, y, T * y)):
            self.sums[k] += w * v

    def line(self) -> tuple[float, float]:
        if self.sums is None:
            return 1.0, self.slope
        if self._line is None:
            self._line = self._fit()
        return self._line

    def _fit(self) -> tuple[float, float]:
        n, t, tt, y, ty = self.sums
        slope = (n * ty - t * y) / max(n * tt - t * t, 1e-12)
        a = (y - slope * t) / n
        slope = max(slope, 1e-6 * max(a, 1e-9))  # a bigger pass never costs less
        return max(a, 1e-9), slope

    def table(self, n: int) -> list[float]:
        """costs[T] = self(T) for T = 1 .. n, all at once (costs[0] = 0)."""
        a, b = self.line()
        costs = [0.0, self(1), *(a + b * T for T in range(2, n + 1))]
        if self.step is not None:
            cap = self.step * self.MAX_SLOPE
            costs[2:] = [min(c, self.step + cap * T) for T, c in enumerate(costs[2:], start=2)]
        return costs

    def __call__(self, T: int) -> float:
        a, b = self.line()
        if self.step is None:
            return a + b * T
        if T == 1:
            return min(self.step, a + b)
        # never above a plain step plus `MAX_SLOPE` of one per token: a first tree timed during a
        # stall would otherwise price trees out for good (no tree runs, so none is timed again)
        return min(a + b * T, self.step * (1 + self.MAX_SLOPE * T))


@dataclass
class DraftTree:
    tokens: list[int]                 # node 0: the root
    parents: list[int]                # the root's is -1
    depths: list[int]
    sources: list[tuple[str, ...]]    # who drafted each node (none for the root)
    scores: list[float]               # estimated chance of acceptance (the root: 1)
    children: list[list[int]]         # each node's children, best first

    @classmethod
    def build(cls, root: int, drafts: Iterable[Draft], rates: AcceptanceRates,
              budget: int, cost: PassCost | None = None) -> DraftTree:
        """The root and at most `budget - 1` of the best drafted nodes (merged by path: a node
        several drafters propose takes the best of their rates in company, and all their names):
        all of them without `cost`, else as many as maximise expected tokens per second."""
        proposed: dict[tuple[int, ...], list[Draft]] = defaultdict(list)
        for d in drafts:
            proposed[d.path].append(d)
        score: dict[tuple[int, ...], float] = {(): 1.0}
        known: dict[tuple[str, float, bool], float] = {}  # rates asked for in this build
        for path in sorted(proposed, key=len):  # parents first
            rate, together = 0.0, len(proposed[path]) > 1
            for d in proposed[path]:
                key = (d.source, d.guess, together)
                r = known.get(key)
                if r is None:
                    r = known[key] = rates.rate(*key)
                rate = max(rate, r)
            score[path] = score.get(path[:-1], 0.0) * min(rate, 1.0)  # parent not drafted: 0
        del score[()]
        ranked = sorted(score, key=lambda p: (-score[p], len(p)))[:max(budget - 1, 0)]
        if cost is not None and ranked:
            costs = cost.table(len(ranked) + 1)
            expected, best, best_k = 1.0, 1.0 / costs[1], 0
            for k, path in enumerate(ranked, start=1):
                expected += score[path]
                if expected / costs[k + 1] > best:
                    best, best_k = expected / costs[k + 1], k
            ranked = ranked[:best_k]
        below: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
        for path in ranked:  # best first
            if score[path] > 0:
                below[path[:-1]].append(path)
        kept = {(): 0}
        tree = cls([root], [-1], [0], [()], [1.0], [[]])
        # depth first, the best child first: the likeliest path takes the slots right after the
        # root, where the accepted tokens' cache entries belong, so they mostly need no moving
        # (a path whose parent was not kept is never reached: well-formed drafters have none)
        todo = below[()][::-1]
        while todo:
            path = todo.pop()
            todo += below.get(path, [])[::-1]
            parent = kept[path[:-1]]
            kept[path] = len(tree.tokens)
            tree.children[parent].append(len(tree.tokens))
            tree.tokens.append(path[-1])
            tree.parents.append(parent)
            tree.depths.append(len(path))
            tree.sources.append(tuple(dict.fromkeys(d.source for d in proposed[path])))
            tree.scores.append(score[path])
            tree.children.append([])
        return tree

    def __len__(self) -> int:
        return len(self.tokens)

    def positions(self, start: int) -> Tensor:
        return torch.tensor([start + depth for depth in self.depths])

    def mask(self) -> Tensor:
        """(T, T) bool: the nodes each node sees, itself and its ancestors (and all of the cache
        before the tree, which `Transformer.forward` takes as given)."""
        return tree_mask(self.parents)

    def path(self, node: int) -> list[int]:
        """Tokens from the root to `node`, both included."""
        out = []
        while node >= 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]
