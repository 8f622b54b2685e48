"""Run untrusted Python (benchmark tests, generated code) in a limited subprocess.

What it does, in layers:
- where bubblewrap (`bwrap`, Debian's `bubblewrap`) is installed and works: mount, PID, network,
  IPC and user namespaces, a read-only view of only the system's and Python's own files, the
  temporary directory the only place it can write, `/tmp` a private tmpfs, and the user `nobody`;
  every way plain Python has to touch the file system (`dir_fd`, `sqlite3`, `os.mkfifo`, a
  process started through `_posixsubprocess`) meets that read-only view;
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

Without bubblewrap it is not a boundary against code written to escape: the audit hook lives
inside the sandboxed interpreter (ctypes, `_posixsubprocess` or a `dir_fd` get around it), reading
the user's files stays possible where permissions allow, and without root or user namespaces there
is no network namespace and no change of user: then only the audit hook and the limits stand.
`isolation()` says which layers this machine gives; README.md has a table of escapes tried.
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


@dataclass(frozen=True)
class Isolation:
    name: str                   # "bubblewrap", "unshare" or "none"
    prefix: tuple[str, ...]     # the command before the interpreter (bubblewrap: its mounts
    python: str                 # are made per run, `command` adds the working directory)

    def command(self, workdir: str, program: str) -> list[str]:
        if self.name != "bubblewrap":
            return [*self.prefix, self.python, "-I", "-B", program]
        return [*self.prefix, "--bind", workdir, workdir, "--chdir", workdir, "--",
                self.python, "-I", "-B", program]


def bubblewrap(bwrap: str, python: str) -> tuple[str, ...]:
    """bwrap's options for a run: system and interpreter files read-only, nothing else."""
    base = os.path.realpath(sys.base_prefix)
    mounts = [("--ro-bind-try", d, d) for d in ("/usr", "/lib", "/lib64", "/bin", "/sbin")]
    mounts.append(("--ro-bind", base, base))
    interpreter = os.path.dirname(os.path.realpath(python))
    if not interpreter.startswith(("/usr/", base)):
        mounts.append(("--ro-bind", interpreter, interpreter))
    return (bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(NOBODY), "--gid", str(NOBODY), *[x for m in mounts for x in m],
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp")


@cache
def isolation() -> Isolation:
    """The strongest isolation that works on this machine: bubblewrap; else, as root, a network
    namespace and the user `nobody`, with an interpreter `nobody` can run (this venv's may sit
    in a private home; the system's python3 serves then), else a network namespace alone;
    otherwise a user + network namespace if allowed, else none.
    """
    pythons = list(dict.fromkeys([getattr(sys, "_base_executable", sys.executable),
                                  sys.executable, "/usr/bin/python3"]))
    bwrap = shutil.which("bwrap")
    if bwrap is not None:
        for python in pythons:
            found = Isolation("bubblewrap", bubblewrap(bwrap, python), python)
            with tempfile.TemporaryDirectory(prefix="tokenfill-sandbox-") as workdir:
                if _works(found.command(workdir, "-c"), "pass"):
                    return found
    unshare = shutil.which("unshare")
    if unshare is None:
        return Isolation("none", (), sys.executable)
    if os.geteuid() == 0:
        prefixes = [(unshare, "--net", "--setuid", str(NOBODY), "--setgid", str(NOBODY), "--"),
                    (unshare, "--net", "--")]
    else:
        prefixes = [(unshare, "--map-root-user", "--net", "--")]
    for prefix in prefixes:
        for python in pythons:
            if _works([*prefix, python, "-I", "-c"], "pass"):
                return Isolation("unshare", prefix, python)
    return Isolation("none", (), sys.executable)


def _works(command: list[str], code: str) -> bool:
    """Does `command` + `code` run (exit 0) on this machine?"""
    argv = [*command[:-1], "-c", code] if command[-1] == "-c" else [*command, code]
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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
        isolated = isolation()
        if "--setuid" in isolated.prefix:  # (bubblewrap maps its `nobody` to the caller's user)
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        start = time.perf_counter()
        proc = subprocess.Popen(isolated.command(workdir, program), cwd=workdir, env=env,
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
