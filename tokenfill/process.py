"""Process-wide settings, made once at the start of a `tokenfill` command, never on import.

- OpenMP threads that spin while waiting turn a busy machine (an editor, a browser, a build)
  into a many-fold slowdown of every small matrix product; sleeping instead costs little on an
  idle machine. It must be set before torch loads its OpenMP runtime; a user's setting wins.
- A server's threads (the event loop, the model worker, jedi's) each get a glibc heap of their
  own whose freed pages linger; a server that needs a few threads' worth of heaps keeps two.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8


def configure() -> None:
    """Before torch loads: OpenMP threads sleep while they wait."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def few_arenas(arenas: int = 2) -> None:
    """For a server: glibc keeps `arenas` heaps, not one per thread."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to set
        pass
