"""How likely a person is to keep a completion, scored while it is decoded, at no extra pass.

Every token the decoder picks comes with the logits it was picked from; `TokenStats` keeps, per
token, its log-probability, the distribution's entropy and the margin between the two likeliest
tokens' probabilities (the model's own doubt, as "When Neural Code Completion Models Size up
the Situation" and "Cautious Next Token Prediction" read it). `Gate` turns those into a score in
[0, 1] with a logistic regression over a few summaries (`FEATURES`), fitted by `tokenfill gate`
on completions whose gold text is known, and shipped beside the model as `gate.json` (plain
JSON: weights, threshold and how it was fitted); `tokenfill gate refit` fits one to a person's
own accepted and rejected completions (`user_gates()`).

The gate is used three ways (engine.py):
- a completion whose final score is under the threshold is not shown (unless the person asked
  for it: then it comes with its score);
- decoding stops early once the running score falls under `exit_threshold` (a completion that
  low almost never recovers), which saves the rest of its tokens;
- when confidence collapses on a later line of a completion whose first lines were sure, the
  completion is cut at the end of the last sure line instead of dropped whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tokenfill.paths import user_state

FILE = "gate.json"


def user_gates() -> Path:
    """Where gates refitted to one person's choices live, a folder per model (by its folder's
    name): $XDG_STATE_HOME/tokenfill/gates (~/.local/state by default). One there is used
    instead of the gate shipped beside the model."""
    return user_state() / "gates"


# where the cursor is (syntax.py's reading of it), which moves how often completions are right:
# a block, a name after a dot, text after the cursor on its line, an empty line, inside a word
SHAPE = ("block", "after_dot", "rest_of_line", "blank_line", "partial")
FEATURES = ("mean_logprob", "min_logprob", "first_logprob", "mean_entropy", "min_margin",
            "mean_margin", "log_tokens", *SHAPE)
MIN_EXIT_TOKENS = 3      # the running score is not trusted on fewer tokens
COLLAPSE_LOGPROB = -4.0  # a token this unlikely (p < 2%) on a later line ends the sure part


@dataclass
class TokenStats:
    """Per token picked: log-probability, entropy (nats) and top-two margin; and where each
    output line starts (in tokens), to cut a completion at a line."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    line_starts: list[int] = field(default_factory=lambda: [0])
    shape: dict[str, float] = field(default_factory=dict)  # SHAPE's values (0 when not given)

    def observe(self, logits: Tensor, token: int) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(logp, 2).values.exp()
        self.tokens.append(token)
        self.logprobs.append(float(logp[token]))
        self.entropies.append(float(-(logp.exp() * logp).nan_to_num().sum()))
        self.margins.append(float(top[0] - top[1]) if top.numel() > 1 else 1.0)

    def observe_top(self, logprob: float, top: dict[int, float], token: int) -> None:
        """The same from what a remote engine returns: the picked token's log-probability and the
        top few tokens' (runtime/remote.py asks for TOP_LOGPROBS). The entropy counts the rest
        of the probability as one more outcome, so it is a lower bound, close where the model is
        sure (the rest is then small)."""
        probs = sorted((math.exp(v) for v in top.values()), reverse=True)
        rest = max(0.0, 1.0 - sum(probs))
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.entropies.append(-sum(p * math.log(p) for p in [*probs, rest] if p > 0))
        self.margins.append(probs[0] - probs[1] if len(probs) > 1 else 1.0)

    def newline(self) -> None:
        """The output's next line starts with the next token."""
        self.line_starts.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.logprobs)

    def features(self, upto: int | None = None) -> dict[str, float]:
        """FEATURES over the first `upto` tokens (all by default)."""
        shape = {name: float(self.shape.get(name, 0.0)) for name in SHAPE}
        n = len(self.logprobs) if upto is None else upto
        if n == 0:
            return {name: 0.0 for name in FEATURES} | shape
        lp, ent, mg = self.logprobs[:n], self.entropies[:n], self.margins[:n]
        return {"mean_logprob": sum(lp) / n, "min_logprob": min(lp), "first_logprob": lp[0],
                "mean_entropy": sum(ent) / n, "min_margin": min(mg), "mean_margin": sum(mg) / n,
                "log_tokens": math.log1p(n), **shape}

    def sure_lines_end(self) -> int:
        """Tokens up to the end of the last line before the first collapsing token (0: the first
        line collapses, or none does: then there is nothing to cut)."""
        for k, lp in enumerate(self.logprobs):
            if lp < COLLAPSE_LOGPROB:
                ends = [s for s in self.line_starts if 0 < s <= k]
                return ends[-1] if ends else 0
        return 0


@dataclass
class Gate:
    """A logistic regression over `FEATURES` (standardised by `mean` and `scale`)."""
    weights: dict[str, float]
    bias: float
    mean: dict[str, float]
    scale: dict[str, float]
    threshold: float = 0.5          # shown at or above it
    exit_threshold: float = 0.0     # decoding stops under it (after MIN_EXIT_TOKENS)
    fitted: dict = field(default_factory=dict)  # on what, and how it did there

    def score(self, features: dict[str, float]) -> float:
        z = self.bias + sum(w * (features[name] - self.mean[name]) / self.scale[name]
                            for name, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> Gate | None:
        """The gate in `directory`, if there is one."""
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    @classmethod
    def for_model(cls, model: Path) -> Gate | None:
        """The person's own refitted gate for this model, else the one shipped beside it."""
        model = Path(model)
        return cls.load(user_gates() / model.resolve().name) or cls.load(model)


def fit(rows: list[dict[str, float]], labels: list[bool], *, l2: float = 1.0,
        iterations: int = 50) -> tuple[dict[str, float], float, dict[str, float],
                                        dict[str, float]]:
    """Logistic regression by Newton's method (L2-penalised, so separable data still converge):
    weights, bias, and the features' mean and scale it standardised them by."""
    x = torch.tensor([[r[name] for name in FEATURES] for r in rows], dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    x = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), (x - mean) / scale], dim=1)
    w = torch.zeros(x.shape[1], dtype=torch.float64)
    penalty = torch.full((x.shape[1],), l2, dtype=torch.float64)
    penalty[0] = 0.0  # the bias is not pulled to zero
    for _ in range(iterations):
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) + penalty * w
        hess = (x.T * (p * (1 - p))) @ x + torch.diag(penalty) + 1e-9 * torch.eye(x.shape[1])
        step = torch.linalg.solve(hess, grad)
        w -= step
        if float(step.abs().max()) < 1e-8:
            break
    names = list(FEATURES)
    return ({n: float(v) for n, v in zip(names, w[1:])}, float(w[0]),
            {n: float(v) for n, v in zip(names, mean)}, {n: float(v) for n, v in zip(names, scale)})
