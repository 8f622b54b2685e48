"""A real editor: Debian's Neovim, headless, its built-in LSP client attached to `tokenfill lsp`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parent / "editors" / "nvim_complete.lua"


def test_neovim_inserts_the_completion(tmp_path, chatty_model_dir):
    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.skip("Neovim is not installed (`make test` installs Debian's neovim when it can)")
    source = tmp_path / "demo.py"
    source.write_text("def f(x):\n    return x\n")
    env = {**os.environ, "TOKENFILL_PYTHON": sys.executable, "TOKENFILL_MODEL": str(chatty_model_dir),
           "TOKENFILL_FILE": str(source), "TOKENFILL_LINE": "2", "TOKENFILL_COL": "11"}
    result = subprocess.run([nvim, "--headless", "--clean", "-u", "NONE", "-c", f"luafile {SCRIPT}"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = source.read_text().splitlines()
    assert lines[0] == "def f(x):"
    assert re.fullmatch(r"    return [ab]+x", lines[1]), lines[1]  # inserted at the cursor
