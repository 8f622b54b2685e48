"""The training corpus: Python source available offline, listed in corpus/manifest.toml.

Documents come from the running interpreter's standard library and from pure-Python wheels of
the pinned packages (downloaded with pip, never installed). They are filtered (UTF-8, parses
as Python, no minified or generated blobs), deduplicated by content, decontaminated against the
HumanEval benchmark lines when that data is at hand, and split into train / held-out by a hash of
the content, so the split is stable across runs.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import lzma
import subprocess
import sys
import sysconfig
import tomllib
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenfill.paths import CORPUS_MANIFEST

DEFAULT_MANIFEST = CORPUS_MANIFEST
DEFAULT_CACHE = Path.home() / ".cache" / "tokenfill" / "corpus"
HELDOUT_PERCENT = 1
MAX_DOC_BYTES = 400_000
MAX_LINE_CHARS = 400


@dataclass(frozen=True)
class Package:
    name: str
    version: str


@dataclass
class Manifest:
    stdlib_exclude: list[str]
    packages: list[Package] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path = DEFAULT_MANIFEST) -> Manifest:
        data = tomllib.loads(Path(path).read_text())
        return cls(
            stdlib_exclude=list(data.get("stdlib", {}).get("exclude", [])),
            packages=[Package(p["name"], str(p["version"])) for p in data.get("package", [])],
        )


@dataclass
class CorpusStats:
    seen: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected: int = 0
    contaminated: int = 0
    chars: int = 0

    def __str__(self) -> str:
        return (f"{self.kept} documents kept ({self.chars / 1e6:.1f}M chars) of {self.seen} files: "
                f"{self.duplicates} duplicates, {self.rejected} rejected by the filters, "
                f"{self.contaminated} overlapping the benchmark data")


def fetch_wheel(pkg: Package, cache: Path) -> Path:
    """Download the pure-Python wheel of `pkg` into `cache` (once) and return its path."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = pkg.name.replace("-", "_").lower()
    found = [p for p in cache.glob("*.whl")
             if p.name.lower().startswith(f"{stem}-{pkg.version}-")]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           "--python-version", "3.11", "--platform", "any", "-d", str(cache),
           f"{pkg.name}=={pkg.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in cache.glob("*.whl")
             if p.name.lower().startswith(f"{stem}-{pkg.version}-")]
    if result.returncode != 0 or not found:
        raise RuntimeError(f"could not download {pkg.name}=={pkg.version} as a pure-Python wheel:\n"
                           f"{result.stderr.strip()[-2000:]}")
    return found[0]


def stdlib_files(exclude: list[str]) -> Iterator[tuple[str, bytes]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude):
            continue
        yield f"stdlib/{rel}", path.read_bytes()


def wheel_files(wheel: Path, pkg: Package) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name.endswith(".py"):
                yield f"{pkg.name}-{pkg.version}/{name}", zf.read(name)


def clean(raw: bytes) -> str | None:
    """The document's text, or None if it is not usable training data."""
    if len(raw) > MAX_DOC_BYTES or len(raw) < 64:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n")
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            return None
    return text


def benchmark_lines(data_dir: Path | None) -> set[str]:
    """Distinctive lines (stripped, >= 30 chars) of the HumanEval infilling data."""
    lines: set[str] = set()
    if data_dir is None or not data_dir.is_dir():
        return lines
    for path in sorted(data_dir.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            for row in f:
                obj = json.loads(row)
                for key in ("prompt", "suffix", "canonical_solution"):
                    for line in obj.get(key, "").splitlines():
                        line = line.strip()
                        if len(line) >= 30:
                            lines.add(line)
    return lines


def is_heldout(text: str) -> bool:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELDOUT_PERCENT


def build(manifest: Manifest, out: Path, *, cache: Path = DEFAULT_CACHE,
          benchmark_dir: Path | None = None, progress: bool = True) -> CorpusStats:
    """Write `out` (JSON lines: source, split, text) and return what was kept and dropped."""
    from tqdm import tqdm

    banned = benchmark_lines(benchmark_dir)
    sources: list[tuple[str, Iterator[tuple[str, bytes]]]] = [
        ("stdlib", stdlib_files(manifest.stdlib_exclude))]
    for pkg in tqdm(manifest.packages, desc="fetching wheels", disable=not progress):
        sources.append((pkg.name, wheel_files(fetch_wheel(pkg, cache), pkg)))

    stats, seen_hashes = CorpusStats(), set()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for _, files in tqdm(sources, desc="reading sources", disable=not progress):
            for path, raw in files:
                stats.seen += 1
                text = clean(raw)
                if text is None:
                    stats.rejected += 1
                    continue
                digest = hashlib.sha256(text.strip().encode()).hexdigest()
                if digest in seen_hashes:
                    stats.duplicates += 1
                    continue
                seen_hashes.add(digest)
                if banned and sum(line.strip() in banned for line in text.splitlines()) >= 2:
                    stats.contaminated += 1
                    continue
                split = "heldout" if is_heldout(text) else "train"
                f.write(json.dumps({"source": path, "split": split, "text": text}) + "\n")
                stats.kept += 1
                stats.chars += len(text)
    tmp.replace(out)
    return stats


def read(path: Path, split: str) -> list[str]:
    """The texts of one split of a built corpus (JSON lines, or the same compressed: .gz, .xz)."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(Path(path).suffix, open)
    with opener(path, "rt") as f:
        return [doc["text"] for doc in map(json.loads, f) if doc["split"] == split]
