"""The training recipe end to end on a tiny corpus: loss falls, state resumes, heads learn,
export loads (in shards), a later run starts from an export."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SNIPPETS
from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.runtime.heads import load_heads
from tokenfill.train.recipe import TrainArgs, lr_at, train

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(tmp_path, tokenizer):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "corpus.jsonl", "w") as f:
        for i, text in enumerate(SNIPPETS * 3):
            f.write(json.dumps({"source": f"s{i}", "split": "heldout" if i < 3 else "train",
                                "text": text}) + "\n")
    tokenizer.save(run / "tokenizer.json")
    return run


def args(run, **kw):
    base = dict(run=run, preset="tiny", seq_len=32, batch_size=4, steps=40, lr=1e-2, warmup=5,
                eval_every=20, eval_batches=2, save_every=10, progress=False)
    base.update(kw)
    return TrainArgs(**base)


def test_loss_falls_and_export_loads(run_dir, tmp_path):
    out = tmp_path / "model"
    meta = train(args(run_dir, out=out))
    losses = [e["heldout_loss"] for e in meta["evals"]]
    assert meta["step"] == 40 and meta["tokens"] == 40 * 4 * 32
    assert losses[-1] < losses[0] - 1.0
    card = (out / "README.md").read_text()
    assert "tokens seen" in card and f"{meta['final']['heldout_loss']:.3f}" in card
    engine = Engine.load(out, dtype="fp32")
    assert isinstance(engine.complete(CompletionRequest(prefix="def ", suffix="\n", max_tokens=4)
                                      ).text, str)
    corpus_drafter = next(d for d in engine.speculator.drafters if d.name == "corpus")
    assert corpus_drafter.table is not None and len(corpus_drafter.table) > 0  # kept beside it


def test_resume_continues_where_it_stopped(run_dir):
    first = train(args(run_dir, steps=10))
    assert (run_dir / "state" / "state.json").exists()
    resumed = train(args(run_dir, steps=14))
    assert first["step"] == 10 and resumed["step"] == 14
    assert resumed["tokens"] == 14 * 4 * 32
    fresh = train(args(run_dir, steps=3, resume=False))
    assert fresh["step"] == 3


def test_schedule_warms_up_holds_then_decays_by_the_time_budget():
    a = args(None, lr=1.0, warmup=10, steps=100, decay_fraction=0.2)
    assert lr_at(a, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(a, 10, 0.1) == lr_at(a, 50, 0.5) == lr_at(a, 80, 0.8) == 1.0   # stable
    assert a.min_lr_ratio < lr_at(a, 85, 0.85) < 1.0                          # decaying
    assert lr_at(a, 50, 1.0) == pytest.approx(a.min_lr_ratio)   # time budget spent
    assert lr_at(a, 99, 0.99) == pytest.approx(a.min_lr_ratio, abs=0.05)


def test_heads_learn_and_a_later_run_starts_from_the_export(run_dir, tmp_path):
    out = tmp_path / "model"
    meta = train(args(run_dir, out=out, heads=2, steps=40, shard_mib=0.02, ngrams=False))
    first, last = meta["evals"][0]["head_accuracy"], meta["final"]["head_accuracy"]
    assert len(last) == 2 and last[0] > first[0]
    assert (out / "model.safetensors.index.json").is_file()   # 20 KiB shards: several files
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 2
    assert "heads" in (out / "README.md").read_text()
    engine = Engine.load(out, dtype="fp32")
    assert engine.heads is not None and len(engine.heads) == 2
    heads = load_heads(out, engine.model.config.hidden_size)
    assert heads is not None and len(heads) == 2
    again = train(args(tmp_path / "run2", init=out, tokenizer=run_dir / "tokenizer.json",
                       corpora=[run_dir / "corpus.jsonl"], heads=2, steps=5, ngrams=False))
    assert again["init"] == str(out)
    assert again["evals"][0]["heldout_loss"] < first_loss(meta) - 0.5  # it starts where it was


def first_loss(meta):
    return meta["evals"][0]["heldout_loss"]


def test_loader_workers_feed_training(run_dir):
    meta = train(args(run_dir, steps=6, workers=2, resume=False))
    assert meta["step"] == 6 and meta["tokens"] == 6 * 4 * 32
    assert meta["final"]["heldout_loss"] < meta["evals"][0]["heldout_loss"]
