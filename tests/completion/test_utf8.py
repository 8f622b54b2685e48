"""UTF-8 kept valid: which bytes may come next, and the token guard of the decode loop."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfill.completion import utf8
from tokenfill.runtime.generate import restrict


def test_allowed_bytes_follow_the_encoding():
    free = utf8.allowed_bytes(b"ab")
    assert free[ord("x")] and free[0xC3] and not free[0x80] and free[utf8.END]
    inside = utf8.allowed_bytes("日".encode()[:1])
    assert inside[0x97] and not inside[ord("x")] and not inside[utf8.END]
    assert utf8.incomplete_tail("é".encode()[:1]) == b"\xc3" and utf8.incomplete_tail("é".encode()) == b""


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3), min_size=4, max_size=40),
       st.lists(st.integers(0, 1), min_size=1, max_size=30), st.integers(0, 2**16))
def test_guarded_choices_are_always_valid_utf8(pieces, picks, seed):
    """Tokens of arbitrary bytes (and every single byte, as in a byte-level vocabulary), picked at
    random among those the guard allows: the text stays valid."""
    table = [*pieces, *(bytes([b]) for b in range(256))]
    guard = utf8.Guard(table, len(table))
    rng = torch.Generator().manual_seed(seed)
    out = b""
    for _ in picks:
        logits = restrict(torch.randn(len(table), generator=rng), guard.allowed())
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=rng))
        guard.advance(token)
        out += table[token]
    assert utf8._valid_beginning(out)
