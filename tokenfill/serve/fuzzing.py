"""Generators of request bodies for every route (its fields as openapi.py describes them), with
values at the edges: shared by the fuzz tests (hypothesis) and the fuzz bench (a seeded
generator, thousands of bodies)."""

from __future__ import annotations

import json
import random
from typing import Any

from tokenfill.serve import openapi

ROUTES: dict[str, list[str]] = {route: list(fields)
                                for route, (_, fields) in openapi.ROUTES.items()}
OPTIONS = list(openapi.ROUTES["/api/generate"][1]["options"]["properties"])

TEXTS = ["", "x = ", "def f(a, b):\n    return ", "obj.pa", "\ud800", "<fim_middle>", "\x00",
         "a" * 5000, "é" * 300, "# comment ", "\n" * 50, "exact", "heal", "none", "fuzzy"]
NUMBERS = [0, 1, -1, 2, 7, 64, 256, 10**6, 2**31, 2**63, 2**64, -2**63, 10**30, 0.5, 1e-300,
           1e308, -0.0, 1e-3, 100.0, 2.5, 3.14]


def json_values():
    """A hypothesis strategy: any JSON value, biased towards the edges."""
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.sampled_from(NUMBERS) | st.integers()
               | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(TEXTS)
               | st.text(max_size=40))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(OPTIONS + ["filename", "text", "x"]),
                                          inner, max_size=4), max_leaves=8)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value from `rng`, biased towards the edges (the bench's generator)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(NUMBERS)
    if kind == 3:
        return rng.choice(TEXTS)
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(30)))
    if kind == 5:
        return rng.uniform(-10, 10)
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {rng.choice(OPTIONS + ["filename", "text"]): random_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [{"filename": random_value(rng, depth + 1), "text": random_value(rng, depth + 1)}]


def random_body(rng: random.Random, route: str) -> bytes:
    """A request body for `route`: mostly JSON objects with its fields, some of them raw bytes
    that are not JSON, or JSON that is not an object."""
    roll = rng.random()
    if roll < 0.03:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if roll < 0.06:
        return rng.choice([b"NaN", b"[1, 2]", b'"text"', b"{", b'{"prompt": Infinity}',
                           b"[" * 5000 + b"]" * 5000, b'{"prompt": "\\ud800"}'])
    fields = ROUTES[route]
    body = {name: random_value(rng) for name in rng.sample(fields, rng.randrange(len(fields) + 1))}
    if route == "/api/generate" and rng.random() < 0.5:
        body["options"] = {k: random_value(rng) for k in rng.sample(OPTIONS, 3)}
    return json.dumps(body).encode()
