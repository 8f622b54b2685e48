"""The real server (`tokenfill serve` as a subprocess on loopback), shared by the serving tests."""

from __future__ import annotations

import pytest

from tests.serve.servers import Server


@pytest.fixture(scope="module")
def server(chatty_model_dir, tmp_path_factory):
    # the fake model says only 'a' or 'b', never a partial word: plain prompts test the plumbing
    srv = Server(chatty_model_dir, tmp_path_factory.mktemp("log") / "server.log",
                 "--cursor-mode", "none")
    yield srv
    srv.stop()
