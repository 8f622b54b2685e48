"""Training on a GPU lent for minutes: what travels there, and the one command that runs.

A lent GPU machine takes the checkout plus at most `MAX_CARRY` bytes in all, reaches no network,
and sends back at most 8 files of 16 MiB. So everything that needs no GPU is done here first,
and `bundle` lays what the run needs in one ignored folder (`runs/device`):
- `tokenizer.json`, the 16,384-token BPE trained here on the corpus, with the two repository
  tokens after it (corpus/tokenizer.json);
- `wheels/`, the held-out packages' wheels, so that the machine's own installed packages (the
  run reads them, `--environment`) are checked against them offline;
- `benchmark/`, the benchmark data every corpus is checked against;
- `shards/`, as many corpus shards as the room left allows (the rest on a later run);
- `init/`, an earlier run's exported weights to go on from, when there is one.
`command()` is the run: the recipe with a time budget, multi-token heads, the export (weights in
files of at most 15 MiB, no n-gram table: that is built here afterwards) written to $OUT. Back
here, beside the export: `tokenfill ngrams` (the corpus drafter's table) and `tokenfill gate
--corpus runs/corpus3/corpus.jsonl` (its confidence gate: the old model's does not fit it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenfill.paths import REPO_ROOT, shared_data
from tokenfill.train import corpus

MAX_CARRY = 64 << 20
DEFAULT_FOLDER = REPO_ROOT / "runs" / "device"
TOKENIZER = REPO_ROOT / "corpus" / "tokenizer.json"  # the next model's (BENCHMARKS.md: tokenizer)
SHARDS = REPO_ROOT / "runs" / "corpus3" / "shards"


def tree_bytes(root: Path = REPO_ROOT) -> int:
    """The size of what travels besides the bundle: the checkout's tracked files."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((root / f.decode()).stat().st_size for f in files if f and (root / f.decode()).is_file())


def bundle(tokenizer: Path, shards: Path, folder: Path = DEFAULT_FOLDER, *,
           init: Path | None = None, cache: Path = corpus.DEFAULT_CACHE,
           benchmark: Path | None = None, room: int | None = None, skip: int = 0) -> dict:
    """Lay out `folder` for a run; returns what went in and the bytes left. Shards are taken in
    order from the `skip`-th while they fit in `room` (default: MAX_CARRY less the checkout)."""
    benchmark = benchmark or shared_data()
    if benchmark is None or not Path(benchmark).is_dir():
        raise FileNotFoundError("no benchmark data to carry (shared/data beside the checkout)")
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "wheels").mkdir(parents=True)
    (folder / "shards").mkdir()
    shutil.copy(tokenizer, folder / "tokenizer.json")
    heldout = corpus.HeldOut.load()
    for pkg in heldout.packages + heldout.outside:
        shutil.copy(corpus.fetch_wheel(pkg, cache), folder / "wheels")
    shutil.copytree(benchmark, folder / "benchmark")
    if init is not None:
        shutil.copytree(init, folder / "init",
                        ignore=shutil.ignore_patterns("ngrams.safetensors", "README.md"))
    used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    left = (room if room is not None else MAX_CARRY - tree_bytes()) - used
    taken = []
    for path in sorted(shards.glob("corpus-*.jsonl.xz"))[skip:]:
        if path.stat().st_size > left:
            break
        shutil.copy(path, folder / "shards")
        left -= path.stat().st_size
        taken.append(path.name)
    if (shards / "stats.json").is_file():
        shutil.copy(shards / "stats.json", folder / "shards")
    return {"shards": taken, "init": init is not None, "bytes_left": left}


def command(preset: str = "mid", minutes: float = 8.0, heads: int = 3, init: bool = False,
            folder: str = "runs/device") -> str:
    """The shell command the GPU machine runs, from the checkout's root."""
    return " ".join([
        "export PYTHONPATH=$PWD;",
        "python3 -m tokenfill.cli train --run /tmp/run --no-progress",
        f"--corpus {folder}/shards --environment --cache {folder}/wheels",
        f"--benchmark-data {folder}/benchmark --tokenizer {folder}/tokenizer.json",
        f"--init {folder}/init" if init else f"--preset {preset}",
        "--seq-len 2048 --batch-size 64 --lr 3e-3 --warmup 300 --steps 1000000",
        f"--max-minutes {minutes} --heads {heads} --workers 12 --compile --eval-every 500",
        "--save-every 1000000 --no-ngrams --shard-mib 15 --out $OUT/model;",
        "rm -f $OUT/model/tokenizer.json",  # at most 8 files come back, and this one is here
    ])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tokenfill.train.device",
                                description="lay out runs/device for a GPU run; print its command")
    p.add_argument("--shards", type=Path, default=SHARDS)
    p.add_argument("--skip", type=int, default=0, help="start at this shard (a later run's)")
    p.add_argument("--init", type=Path, default=None, help="an earlier run's export to go on from")
    p.add_argument("--minutes", type=float, default=8.0, help="the training time budget")
    args = p.parse_args(argv)
    got = bundle(TOKENIZER, args.shards, init=args.init, skip=args.skip)
    print(f"runs/device: shards {', '.join(got['shards']) or 'none'}; "
          f"{got['bytes_left'] / 2**20:.1f} MiB left of what may travel")
    if args.init is not None:
        print("for the run, move the bundled model's files out of the checkout first: the "
              "export to go on from takes their room")
    print(command(minutes=args.minutes, init=args.init is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
