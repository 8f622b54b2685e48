"""The real server under test: `tokenfill serve` as a subprocess on loopback, with its log."""

from __future__ import annotations

import time
from pathlib import Path

from tokenfill.serve.launch import ServerProcess


class Server(ServerProcess):
    def __init__(self, model_dir: Path, log_path: Path, *args: str):
        super().__init__(model_dir, log_path, "--dtype", "fp32", *args)
        self.model_name = model_dir.name

    def log_line(self, request_id: str, timeout: float = 10) -> str:
        """The worker's line for this request (its completion's timings and how it ended)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.log().splitlines():
                if f"{request_id} completion:" in line:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no log line for {request_id}:\n{self.log()}")
