"""A CompletionRequest is checked once, where it is built, and names the field that is wrong."""

from __future__ import annotations

import dataclasses

import pytest

from tokenfill.completion.request import (
    UNLIMITED_TOKENS,
    CompletionRequest,
    RequestError,
    max_tokens_of,
)
from tokenfill.runtime.generate import Sampling


def test_defaults_are_an_editors_automatic_request():
    r = CompletionRequest(prefix="x = ")
    assert (r.suffix, r.max_tokens, r.cursor_mode, r.speculative, r.syntax, r.invoked,
            r.reuse) == ("", 64, "exact", True, True, False, True)
    assert r.sampling == Sampling()


def test_it_is_frozen_and_keyword_only():
    r = CompletionRequest(prefix="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.prefix = "b"
    with pytest.raises(TypeError):
        CompletionRequest("a")


@pytest.mark.parametrize("fields,name", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"n_indent": -2}, "n_indent"),
    ({"cursor_mode": "fuzzy"}, "cursor_mode"),
    ({"time_budget_ms": 0}, "time_budget_ms"),
    ({"time_budget_ms": float("nan")}, "time_budget_ms"),
    ({"stop": ["a"]}, "stop"),
    ({"stop": ("",)}, "stop"),
    ({"stop": ("s",) * 17}, "stop"),
    ({"suffix": 3}, "suffix"),
    ({"suffix": "\ud800"}, "suffix"),
    ({"extra": (("a.py",),)}, "extra[0]"),
    ({"extra": [("a.py", "x")]}, "extra"),
    ({"speculative": "yes"}, "speculative"),
    ({"sampling": {"temperature": 0}}, "sampling"),
])
def test_a_bad_value_names_its_field(fields, name):
    with pytest.raises(RequestError) as caught:
        CompletionRequest(prefix="x", **fields)
    assert caught.value.field == name and f"'{name}'" in str(caught.value)


def test_a_negative_client_limit_means_the_longest_completion():
    assert max_tokens_of(-1) == max_tokens_of(-2) == UNLIMITED_TOKENS
    assert max_tokens_of(0) == 0 and max_tokens_of(12) == 12
