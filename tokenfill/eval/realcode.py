"""Real Python code the bundled model never saw, for benchmarks: the held-out packages.

corpus/heldout.toml pins pure-Python wheels of packages that are not in the training manifest.
They are downloaded with pip (never installed) into the corpus cache and read like the corpus
(same filters). `files()` refuses to run if a held-out package is also a training package.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tokenfill.paths import HELDOUT_MANIFEST
from tokenfill.train import corpus


def packages(path: Path = HELDOUT_MANIFEST) -> list[corpus.Package]:
    data = tomllib.loads(path.read_text())
    return [corpus.Package(p["name"], str(p["version"])) for p in data.get("package", [])]


def check_disjoint(heldout: list[corpus.Package], training: corpus.Manifest) -> None:
    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    overlap = {norm(p.name) for p in heldout} & {norm(p.name) for p in training.packages}
    if overlap:
        raise ValueError(f"held-out packages are in the training manifest: {sorted(overlap)}")


def files(cache: Path = corpus.DEFAULT_CACHE) -> list[tuple[str, str]]:
    """(path, text) of every usable .py file of the held-out packages, in a stable order."""
    heldout = packages()
    check_disjoint(heldout, corpus.Manifest.load())
    out = []
    for pkg in heldout:
        for path, raw in corpus.wheel_files(corpus.fetch_wheel(pkg, cache), pkg):
            text = corpus.clean(raw)
            if text is not None:
                out.append((path, text))
    return out
