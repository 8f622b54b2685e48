"""tokenfill: code completion at the cursor from a local language model."""

import os

# OpenMP threads that spin while waiting turn a busy machine (an editor, a browser, a build) into
# a 10x slowdown of every small matrix product; sleeping instead costs little when the machine
# is idle (see BENCHMARKS.md). Set before torch loads its OpenMP runtime; a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
