"""Start `tokenfill serve`, or another engine serving the model (vLLM, llama-server), as a
subprocess on a free loopback port and wait until it is healthy.

Used by the benchmarks and by the end-to-end tests: they talk to the real servers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tokenfill.paths import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server, what: str, timeout: float) -> None:
    """Until `server.url`/health answers 200; a server that exits or stays silent is stopped
    and the error carries the end of its log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{server.log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{what} did not become healthy in {timeout:.0f} s:\n"
                       f"{server.log_path.read_text()[-3000:]}")


class ServerProcess:
    def __init__(self, model_dir: Path, log_path: Path, *args: str, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenfill", "serve", "--model", str(model_dir),
             "--port", str(self.port), *args], stdout=self._log, stderr=subprocess.STDOUT)
        wait_healthy(self, "the server", timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


ENGINES = REPO_ROOT / ".engines"
ENGINE_BUILDS = {"vllm": ENGINES / "vllm" / ".installed",
                 "llama.cpp": ENGINES / "llama.cpp" / "llama-server"}


def engine_missing(kind: str) -> str | None:
    """Why the engine `kind` cannot run here (None: it can): `make engines` installs it."""
    if ENGINE_BUILDS[kind].exists():
        return None
    failed = ENGINES / f"{kind}.failed"
    why = failed.read_text().strip() if failed.is_file() else "not installed"
    return f"{kind}: {why} (`make engines` installs vLLM and builds llama-server)"


class EngineProcess:
    """`make vllm-server` or `make llama-server` on a free loopback port, serving `model`, until
    it answers; the whole process group is stopped at the end."""

    def __init__(self, kind: str, model: Path, log_path: Path, *, slots: int = 4,
                 timeout: float = 300, env: dict[str, str] | None = None):
        target = {"vllm": "vllm-server", "llama.cpp": "llama-server"}[kind]
        self.kind, self.port = kind, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            ["make", "-s", "-C", str(REPO_ROOT), target, f"PORT={self.port}",
             f"MODEL={Path(model).resolve()}", f"SLOTS={slots}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})  # llama-server reads LLAMA_ARG_* settings
        wait_healthy(self, target, timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        """Send `sig` to the engine and everything it started (vLLM runs worker processes)."""
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        try:
            self.signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        self._log.close()
