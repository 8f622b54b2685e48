"""The member prior: after `name.`, the names the file uses with `name` weigh more."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tokenfill.completion.engine import Engine
from tokenfill.completion.monitor import is_name_byte
from tokenfill.completion.request import CompletionRequest
from tokenfill.completion.usage import ESCAPE, MemberPrior, uses
from tokenfill.runtime.generate import Sampling, choose


def test_uses_counts_the_attributes_a_receiver_is_seen_with():
    text = ("state.outcome = 1\nif state.outcome:\n    state.retry(state.outcome)\n"
            "other.state.outcome\nmy_state.x\nstate .spaced\n")
    assert uses("state", text) == {"outcome": 3, "retry": 1}
    assert uses("self.items", "self.items.append(1)\nself.items.pop()\nx.self.items.sort()") == \
        {"append": 1, "pop": 1}


@pytest.mark.parametrize("receiver", ["f()", "xs[0]", "'text'", ""])
def test_a_receiver_that_is_no_dotted_name_has_no_uses(receiver):
    assert uses(receiver, f"{receiver}.strip()\n{receiver}.strip()\n") == {}


def reference_masses(tokenizer, counts: dict[str, float], typed: bytes) -> list[float]:
    """Per token, straight from the definition: the uses of the seen names that the text typed
    so far plus the token's bytes spells towards (all name bytes: a prefix of the name) or
    completes (the name, then a byte that cannot be part of one; a special token ends it)."""
    names = {name.encode(): n for name, n in counts.items()}
    out = []
    for i, data in enumerate(tokenizer.token_bytes):
        if i in tokenizer.special_ids or not data:
            out.append(names.get(typed, 0.0) if i in tokenizer.special_ids else 0.0)
            continue
        k = next((j for j, b in enumerate(data) if not is_name_byte(b)), None)
        if k is None:
            spelled = typed + data
            out.append(sum(n for name, n in names.items() if name.startswith(spelled)))
        else:
            out.append(names.get(typed + data[:k], 0.0))
    return out


@pytest.mark.parametrize("typed", [b"", b"ou", b"outcome", b"re", b"zz"])
def test_the_bias_equals_the_reference_for_every_token(tokenizer, typed):
    counts = {"outcome": 3, "out": 1, "retry": 2, "result": 0.5}
    prior = MemberPrior(tokenizer, counts, b"    x = state." + typed)
    bias = prior.bias()
    expected = reference_masses(tokenizer, counts, typed)
    if not any(expected):
        assert bias is None
        return
    assert bias is not None and bias.shape == (len(tokenizer.token_bytes),)
    want = torch.tensor([math.log1p(m / ESCAPE) for m in expected])
    assert torch.allclose(bias, want, atol=1e-6)


def test_the_bias_follows_the_name_as_it_is_spelled_and_then_lets_go(tokenizer):
    prior = MemberPrior(tokenizer, {"outcome": 2, "retry": 1}, b"state.")
    for token in tokenizer.encode("out"):
        prior.advance(token)
    bias = prior.bias()
    leads = {tokenizer.token_bytes[i] for i in torch.nonzero(bias).flatten().tolist()}
    assert leads and all(b"come".startswith(b) or b.startswith(b"come") for b in leads)
    prior.advance(tokenizer.encode("(")[0])  # the name is over: no more bias
    assert prior.bias() is None


def test_choose_adds_the_bias_and_observes_the_models_logits():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])

    class Bias:
        def allowed(self):
            return None

        def bias(self):
            return torch.tensor([0.0, 0.0, 2.5])  # shorter than the logits: the rest unbiased

        def advance(self, token):
            self.token = token

    prior, seen = Bias(), []
    token = choose(logits, Sampling(), None, None, [prior], argmax=0,
                   observe=lambda raw, t: seen.append((raw, t)))
    assert token == 2 == prior.token
    assert torch.equal(seen[0][0], logits) and seen[0][1] == 2


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, dtype="fp32")


USED = "".join(f"    print(obj.zeta, {k})\n" for k in range(12))


@pytest.mark.parametrize("speculative", [False, True])
def test_engine_prefers_the_name_the_file_uses_and_drafts_stay_lossless(engine, speculative):
    request = CompletionRequest(prefix=f"def f(obj):\n{USED}    return obj.", suffix="\n",
                                max_tokens=6, cursor_mode="none", speculative=speculative)
    engine.monitor.timeout_s = 30  # the members jedi finds (none for a bare parameter) settled
    with_prior = engine.complete(request)
    assert re.match(r"\w*", with_prior.text).group(0) == "zeta"
    plain = engine.complete(CompletionRequest(**{**request.__dict__, "speculative": False}))
    assert with_prior.text == plain.text
    engine.member_prior = False
    try:
        without = engine.complete(request)
    finally:
        engine.member_prior = True
    assert not without.text.startswith("zeta")  # the random model alone would not write it
