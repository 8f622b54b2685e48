"""Untrusted code is contained: each attack ends as a failure of the code, not of the harness."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tokenfill.eval import sandbox

QUICK = sandbox.Limits(wall_s=5, cpu_s=3, memory_bytes=512 << 20)


def test_passing_and_failing_code():
    assert sandbox.run("assert 1 + 1 == 2\nprint('ok')").passed
    outcome = sandbox.run("assert 1 + 1 == 3")
    assert outcome.status == "failed" and "AssertionError" in outcome.stderr


def test_infinite_loop_is_stopped():
    start = time.perf_counter()
    outcome = sandbox.run("while True:\n    pass", QUICK)
    assert not outcome.passed and outcome.status in ("timeout", "failed")
    assert time.perf_counter() - start < 10


def test_wall_clock_timeout_kills_a_sleeper():
    outcome = sandbox.run("import time\ntime.sleep(60)", sandbox.Limits(wall_s=1))
    assert outcome.status == "timeout"


def test_fork_bomb_is_contained():
    outcome = sandbox.run("import os\nwhile True:\n    os.fork()", QUICK)
    assert not outcome.passed and "not allowed" in outcome.stderr
    outcome = sandbox.run("import subprocess\nsubprocess.Popen(['sleep', '100'])", QUICK)
    assert not outcome.passed and "not allowed" in outcome.stderr
    leftovers = subprocess.run(["pgrep", "-f", "sleep 100"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_huge_allocation_fails_with_memory_error():
    outcome = sandbox.run("x = bytearray(8 * 2**30)", QUICK)
    assert not outcome.passed and "MemoryError" in outcome.stderr


def test_writes_outside_the_sandbox_are_refused(tmp_path):
    target = tmp_path / "escape.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        outcome = sandbox.run(code, QUICK)
        assert not outcome.passed, code
        assert not target.exists()
    inside = sandbox.run("open('ok.txt', 'w').write('fine')\nimport os\nos.remove('ok.txt')", QUICK)
    assert inside.passed, inside.stderr


def test_network_connections_are_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        outcome = sandbox.run(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", QUICK)
        assert not outcome.passed
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected


def test_temporary_directory_is_removed_and_environment_is_minimal():
    outcome = sandbox.run("import os\nprint(os.getcwd())\nprint(sorted(os.environ))", QUICK)
    assert outcome.passed, outcome.stderr
    cwd, env = outcome.stdout.splitlines()[:2]
    assert not os.path.exists(cwd)
    assert "HOME" in env and "OPENAI_API_KEY" not in env and "VIRTUAL_ENV" not in env


def test_as_root_the_code_runs_as_nobody_without_network():
    isolated = sandbox.isolation()
    if os.geteuid() != 0 or isolated.name == "none":
        pytest.skip("needs root and unshare or bubblewrap: the sandbox then falls back to limits "
                    "and the audit hook")
    outcome = sandbox.run("import os, socket\nprint(os.getuid())\n"
                          "print(socket.if_nameindex())", QUICK)
    uid, interfaces = outcome.stdout.splitlines()
    assert uid == str(sandbox.NOBODY) or "--setuid" not in isolated.prefix
    assert "eth" not in interfaces  # only the namespace's own loopback


# Escapes through plain Python that an audit hook does not see; each writes `target`.
ESCAPES = {
    "open with dir_fd": "import os\nd = os.open({parent!r}, os.O_RDONLY)\n"
                        "os.close(os.open({name!r}, os.O_CREAT | os.O_WRONLY, dir_fd=d))",
    "rename with dst_dir_fd": "import os\nopen('here', 'w').write('x')\n"
                              "d = os.open({parent!r}, os.O_RDONLY)\n"
                              "os.rename('here', {name!r}, dst_dir_fd=d)",
    "sqlite3": "import sqlite3\nsqlite3.connect({target!r}).execute('create table t (x)')",
    "mkfifo": "import os\nos.mkfifo({target!r})",
    "_posixsubprocess": "import _posixsubprocess, os\n"
                        "r, w = os.pipe()\n"
                        "pid = _posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'echo x > ' + "
                        "{target!r}.encode()], [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, "
                        "-1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False)\n"
                        "os.waitpid(pid, 0)",
}


def needs_bubblewrap() -> None:
    if sandbox.isolation().name != "bubblewrap":
        pytest.skip("bubblewrap (Debian's bubblewrap package) is not installed or does not work "
                    "here: the sandbox falls back to namespaces, limits and the audit hook, "
                    "which these escapes get past")


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_plain_python_cannot_write_outside(tmp_path, escape):
    needs_bubblewrap()
    target = tmp_path / "escaped"
    code = ESCAPES[escape].format(parent=str(tmp_path), name=target.name, target=str(target))
    sandbox.run(code, QUICK)
    assert not target.exists(), escape
    assert os.listdir(tmp_path) == []


def test_the_users_files_are_not_there_to_read(tmp_path):
    needs_bubblewrap()
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    outcome = sandbox.run(f"print(open({str(secret)!r}).read())", QUICK)
    assert not outcome.passed and "hunter2" not in outcome.stdout
    assert "No such file" in outcome.stderr
