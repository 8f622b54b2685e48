"""Real Python code the bundled model never saw, for benchmarks: the held-out packages.

corpus/heldout.toml pins pure-Python wheels of packages that are not in the training manifest.
They are downloaded with pip (never installed) into the corpus cache and read like the corpus
(same filters). `files()` refuses to run if a held-out package is also a training package.
"""

from __future__ import annotations

from pathlib import Path

from tokenfill.train import corpus


def files(cache: Path = corpus.DEFAULT_CACHE) -> list[tuple[str, str]]:
    """(path, text) of every usable .py file of the held-out packages, in a stable order."""
    heldout = corpus.HeldOut.load()
    heldout.check_disjoint(corpus.Manifest.load())
    out = []
    for pkg in heldout.packages:
        for path, raw in corpus.wheel_files(corpus.fetch_wheel(pkg, cache), pkg):
            text = corpus.clean(raw)
            if text is not None:
                out.append((path, text))
    return out
