"""What travels to a lent GPU: the bundle fits the transfer limit, the command is one the CLI
takes, and the export it asks for comes back in few enough files."""

from __future__ import annotations

import shlex

import pytest

from tokenfill.cli import build_parser
from tokenfill.paths import shared_data
from tokenfill.train import corpus, device


def test_command_is_a_valid_train_command_within_the_length_limit():
    for init in (False, True):
        line = device.command(init=init)
        assert len(line) <= 2000
        train = line.split("python3 -m tokenfill.cli ", 1)[1].split(";", 1)[0]
        args = build_parser().parse_args(shlex.split(train.replace("$OUT", "/out")))
        assert args.command == "train" and args.environment and args.heads == 3
        assert args.shard_mib <= 16 and args.no_ngrams and args.max_minutes > 0
        assert (args.init is not None) == init and args.benchmark_data is not None


@pytest.mark.skipif(shared_data() is None, reason="needs the benchmark data beside the checkout")
def test_bundle_takes_shards_while_they_fit(tmp_path, tokenizer):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(4):
        (shards / f"corpus-{k:03d}.jsonl.xz").write_bytes(b"x" * 1000)
    tokenizer.save(tmp_path / "tokenizer.json")
    wheels = {pkg.name: corpus.fetch_wheel(pkg, corpus.DEFAULT_CACHE)
              for pkg in corpus.HeldOut.load().packages + corpus.HeldOut.load().outside}
    fixed = sum(w.stat().st_size for w in wheels.values())
    fixed += sum(p.stat().st_size for p in shared_data().rglob("*") if p.is_file())
    fixed += (tmp_path / "tokenizer.json").stat().st_size
    out = tmp_path / "device"
    got = device.bundle(tmp_path / "tokenizer.json", shards, out, room=fixed + 2500, skip=1)
    assert got["shards"] == ["corpus-001.jsonl.xz", "corpus-002.jsonl.xz"]
    assert 0 <= got["bytes_left"] < 1000
    assert len(list((out / "wheels").glob("*.whl"))) == len(wheels)
    assert (out / "benchmark").is_dir() and (out / "tokenizer.json").is_file()
