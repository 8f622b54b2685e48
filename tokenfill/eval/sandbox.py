"""Run untrusted Python (benchmark tests, generated code) in a limited subprocess.

What it does, in layers:
- a fresh temporary directory as the working directory and HOME, deleted afterwards; a minimal
  environment; `python -I` (no user site, no PYTHON* variables);
- resource limits: CPU seconds, address space, file size, open files, no core files, and a cap on
  processes; a wall-clock timeout that kills the whole process group;
- no network: a fresh network namespace (`unshare --net`, when the machine allows it), where even
  loopback is down;
- as root, the code runs as `nobody`, so the process cap applies and the user's files are not
  writable;
- an audit hook, installed before the code runs, that refuses writes, deletions and renames
  outside the temporary directory, new processes (fork, exec, subprocess, os.system) and socket
  connections.

What it does not protect against: it is not a security boundary against code written to escape.
The audit hook lives inside the sandboxed interpreter (ctypes or a C extension can get around it),
reading the user's files stays possible where permissions allow, and without root or user
namespaces there is no network namespace and no change of user: then only the audit hook and the
limits stand. Use a VM or container for hostile code.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache

NOBODY = 65534

# Runs inside the sandboxed interpreter before the code under test.
PRELUDE = r'''
import os as _os, sys as _sys
def _tokenfill_guard():
    root = _os.path.realpath(_os.getcwd())
    def inside(path):
        try:
            path = _os.fsdecode(path)
        except TypeError:
            return True  # a file descriptor: it was opened under these rules already
        full = _os.path.realpath(_os.path.join(root, path))
        return full == root or full.startswith(root + _os.sep)
    writes = ("w", "a", "x", "+")
    blocked = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "subprocess.Popen", "os.kill", "os.killpg", "socket.connect", "socket.bind",
               "socket.sendto", "ctypes.dlopen"}
    def hook(event, args):
        if event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            mode, flags = args[1], args[2] or 0
            writing = any(c in mode for c in writes) if isinstance(mode, str) else \
                bool(flags & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC))
            if writing and not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox")
        if event in ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod",
                     "os.truncate", "shutil.rmtree", "os.symlink", "os.link"):
            if not inside(args[0]) or (event in ("os.rename", "os.symlink", "os.link")
                                       and not inside(args[1])):
                raise PermissionError(f"sandbox: {event} outside the sandbox")
    _sys.addaudithook(hook)
_tokenfill_guard()
del _tokenfill_guard
'''


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 1 << 10   # per user: counts every process `nobody` runs on the machine
    open_files: int = 256


@dataclass
class Outcome:
    status: str          # "passed", "failed" (non-zero exit) or "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@cache
def isolation() -> tuple[tuple[str, ...], str]:
    """(command prefix, interpreter): the strongest isolation that works on this machine.

    As root: a network namespace and the user `nobody`, with an interpreter `nobody` can run
    (this venv's may sit in a private home; the system's python3 serves then), else a network
    namespace alone. Otherwise: a user + network namespace if allowed, else none.
    """
    unshare = shutil.which("unshare")
    pythons = list(dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable),
                                  "/usr/bin/python3"]))
    if unshare is None:
        return (), sys.executable
    if os.geteuid() == 0:
        prefixes = [(unshare, "--net", "--setuid", str(NOBODY), "--setgid", str(NOBODY), "--"),
                    (unshare, "--net", "--")]
    else:
        prefixes = [(unshare, "--map-root-user", "--net", "--")]
    for prefix in prefixes:
        for python in pythons:
            try:
                probe = subprocess.run([*prefix, python, "-I", "-c", "pass"], capture_output=True,
                                       timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0:
                return prefix, python
    return (), sys.executable


def _limit(limits: Limits):
    def apply() -> None:
        os.setsid()  # a process group of its own, killed as a whole on timeout
        for res, value in [(resource.RLIMIT_CPU, limits.cpu_s),
                           (resource.RLIMIT_AS, limits.memory_bytes),
                           (resource.RLIMIT_FSIZE, limits.file_bytes),
                           (resource.RLIMIT_NOFILE, limits.open_files),
                           (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_NPROC, limits.processes)]:
            resource.setrlimit(res, (value, value))
    return apply


def run(code: str, limits: Limits = Limits()) -> Outcome:
    """Run `code` as a Python program in the sandbox and report how it ended."""
    workdir = tempfile.mkdtemp(prefix="tokenfill-sandbox-")
    try:
        program = os.path.join(workdir, "program.py")
        with open(program, "w") as f:
            f.write(PRELUDE + "\n" + code)
        prefix, python = isolation()
        if "--setuid" in prefix:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        start = time.perf_counter()
        proc = subprocess.Popen([*prefix, python, "-I", "-B", program], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limit(limits))
        try:
            out, err = proc.communicate(timeout=limits.wall_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            out, err = proc.communicate()
            status = "timeout"
        with_group(proc, signal.SIGKILL)  # whatever it left behind
        return Outcome(status, proc.returncode if status != "timeout" else None,
                       out.decode(errors="replace")[-10000:], err.decode(errors="replace")[-10000:],
                       time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def with_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
