"""Fuzzed request bodies on every completion route, through the real app over a real (tiny)
engine: whatever the body, the answer is a 2xx or a 4xx, never a 5xx, and a stream never ends
in an error event. `python -m benchmarks fuzz` sends thousands more to a real server."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tokenfill.completion.engine import Engine
from tokenfill.serve.app import ServerSettings, create_app
from tokenfill.serve.fuzzing import ROUTES, json_values

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(model_dir):
    engine = Engine.load(model_dir, dtype="fp32")
    c = TestClient(create_app(ServerSettings(), engine=engine), base_url="http://127.0.0.1:8080")
    c.__enter__()
    deadline = time.time() + 30
    while c.get("/health").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.05)
    yield c
    c.__exit__(None, None, None)


def bodies(route: str):
    fields = ROUTES[route]
    return st.fixed_dictionaries({}, optional={name: json_values() for name in fields})


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_body_gets_a_5xx(client, route):
    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies(route))
    def check(body):
        r = client.post(route, content=json.dumps(body), headers={"content-type":
                                                                   "application/json"})
        assert r.status_code < 500, (r.status_code, r.text[:300])
        assert "completion failed" not in r.text, r.text[:300]

    check()
