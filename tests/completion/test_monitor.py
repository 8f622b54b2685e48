"""Monitor-guided identifiers: jedi's members after `name.`, cached per document, and the decoding
constraint that holds the name to them."""

from __future__ import annotations

import re
import time

import pytest
import torch

from tokenfill.completion.engine import Engine
from tokenfill.completion.monitor import MemberConstraint, Monitor, lookup
from tokenfill.completion.request import CompletionRequest
from tokenfill.completion.syntax import analyze

STACK = ("class Stack:\n    def __init__(self):\n        self.items = []\n        self.size = 0\n\n"
         "    def push(self, item):\n        self.")


def test_jedi_finds_the_members_of_a_class_in_the_buffer():
    line = STACK.count("\n") + 1
    names = lookup(STACK + "\n", line, len(STACK.rsplit("\n", 1)[-1]), None, None)
    assert {"items", "size", "push"} <= set(names)
    assert all(n.isidentifier() for n in names)


def test_members_are_cached_per_document_and_partial_words_share_them():
    monitor = Monitor(timeout_s=30)
    members = monitor.members(STACK, "\n", analyze(STACK, "\n"))
    assert "items" in members and monitor.lookups == 1
    typed = STACK + "it"  # the next keystroke: same text up to the dot
    assert monitor.members(typed, "\n", analyze(typed, "\n")) == members
    assert monitor.lookups == 1 and monitor.hits == 1
    changed = STACK.replace("size", "count")
    assert "count" in monitor.members(changed, "\n", analyze(changed, "\n"))
    assert monitor.lookups == 2


def test_a_slow_lookup_leaves_decoding_free_and_lands_in_the_cache(monkeypatch):
    import tokenfill.completion.monitor as module

    def slow(*args):
        time.sleep(0.3)
        return ("late",)

    monkeypatch.setattr(module, "lookup", slow)
    monitor = Monitor(timeout_s=0.05)
    ctx = analyze("x.", "")
    assert monitor.members("x.", "", ctx) == () and monitor.timeouts == 1
    deadline = time.time() + 5
    while monitor.members("x.", "", ctx) != ("late",) and time.time() < deadline:
        time.sleep(0.05)
    assert monitor.members("x.", "", ctx) == ("late",)
    assert monitor.members("y = 1", "", analyze("y = 1", "")) == ()  # not after a dot: no lookup


def test_a_failing_lookup_leaves_decoding_free(monkeypatch):
    import tokenfill.completion.monitor as module

    monkeypatch.setattr(module, "lookup", lambda *a: 1 / 0)
    assert Monitor(timeout_s=5).members("x.", "", analyze("x.", "")) == ()


def allowed_texts(constraint: MemberConstraint, tokenizer) -> set[str]:
    mask = constraint.allowed()
    return {tokenizer.token_bytes[i].decode(errors="replace") for i in torch.nonzero(mask).flatten()}


def test_constraint_allows_only_prefixes_of_members_then_lets_go(tokenizer):
    members = ("items", "size", "push")
    c = MemberConstraint(tokenizer, members, b"        self.")
    texts = allowed_texts(c, tokenizer)
    assert texts and all(any(m.startswith(t) or t.startswith(m) and not t[len(m)].isalnum()
                                 for m in members) for t in texts)
    assert any("items".startswith(t) for t in texts)
    for token in tokenizer.encode("it"):
        c.advance(token)
    assert all("items".startswith("it" + t) or t.startswith("ems") for t in allowed_texts(c, tokenizer))
    for token in tokenizer.encode("ems"):
        c.advance(token)
    after = allowed_texts(c, tokenizer)  # a whole member: anything that is not more name
    assert "(" in after or "." in after
    assert not any(t[:1].isalnum() or t[:1] == "_" for t in after if t)
    c.advance(tokenizer.encode(".")[0])
    assert c.allowed() is None


def test_constraint_counts_a_partial_name_already_typed(tokenizer):
    c = MemberConstraint(tokenizer, ("items", "size"), b"self.si")
    assert all("ze".startswith(t) or t.startswith("ze") for t in allowed_texts(c, tokenizer))
    off = MemberConstraint(tokenizer, ("items",), b"self.zz")  # matches no member: free
    assert off.allowed() is None


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, dtype="fp32")


@pytest.mark.parametrize("speculative", [False, True])
def test_engine_completes_a_member_after_the_dot(engine, speculative):
    engine.monitor.timeout_s = 30
    result = engine.complete(CompletionRequest(prefix=STACK, suffix="\n", max_tokens=8,
                                               cursor_mode="none", speculative=speculative))
    members = engine.monitor.members(STACK, "\n", analyze(STACK, "\n"))  # cached by now
    assert result.members == len(members) >= 3
    name = re.match(r"\w*", result.text).group(0)
    assert name in members or result.tokens == 8 and any(m.startswith(name) for m in members)
    free = engine.complete(CompletionRequest(prefix=STACK, suffix="\n", max_tokens=8,
                                             cursor_mode="none", syntax=False))
    assert free.members == 0
