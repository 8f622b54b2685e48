"""The command line, run as a user runs it: a subprocess, real files, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokenfill.cli import UsageError, cursor_offset

pytestmark = pytest.mark.e2e


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "tokenfill", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


@pytest.mark.parametrize("text,line,column,offset", [
    ("ab\ncd\n", 1, 1, 0), ("ab\ncd\n", 1, 3, 2), ("ab\ncd\n", 2, 2, 4), ("ab\ncd\n", 3, 1, 6),
    ("é✓\nx", 1, 3, 2), ("a\r\nb", 2, 1, 3), ("a\r\nb", 1, 2, 1),
])
def test_cursor_offset(text, line, column, offset):
    assert cursor_offset(text, line, column) == offset


@pytest.mark.parametrize("line,column,message", [(4, 1, "line 4"), (0, 1, "line 0"),
                                                  (1, 4, "column 4"), (1, 0, "column 0")])
def test_cursor_outside_the_file(line, column, message):
    with pytest.raises(UsageError, match=message):
        cursor_offset("ab\ncd\n", line, column)


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
def test_complete_prints_the_completion(tmp_path, model_dir, mode):
    source = tmp_path / "a.py"
    source.write_text("def f(x):\n    return x\n")
    result = run("complete", source, "--line", 2, "--column", 9, "--model", model_dir,
                 "--max-tokens", 4, "--dtype", "fp32", "--cursor-mode", mode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")


@pytest.mark.parametrize("args,message", [
    (["missing.py", "--line", "1", "--column", "1"], "no such file"),
    (["a.py", "--line", "9", "--column", "1"], "line 9 is outside"),
    (["a.py", "--line", "1", "--column", "1", "--max-tokens", "0"], "max-tokens"),
    (["a.py", "--line", "1", "--column", "1", "--model", "nowhere"], "cannot load model"),
    (["a.py", "--line", "1", "--column", "1", "--cursor-mode", "fuzzy"], "--cursor-mode"),
])
def test_complete_bad_input(tmp_path, model_dir, args, message):
    (tmp_path / "a.py").write_text("x = 1\n")
    if "--model" not in args:
        args = [*args, "--model", str(model_dir)]
    result = run("complete", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_batch_completes_and_skips_bad_lines(tmp_path, model_dir):
    tasks = tmp_path / "in.jsonl"
    tasks.write_text("\n".join([
        json.dumps({"id": "a", "prefix": "def f():\n    return ", "suffix": "\n", "extra": 1}),
        "{not json",
        json.dumps({"prefix": "x = "}),
        json.dumps({"id": "b", "prefix": "import ", "suffix": ""}),
        json.dumps({"id": "c", "prefix": 5, "suffix": ""}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    result = run("batch", tasks, "-o", out, "--model", model_dir, "--max-tokens", 4)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["extra"] == 1
    for r in rows:
        assert isinstance(r["completion"], str) and r["ms"] > 0 and 0 <= r["tokens"] <= 4
    assert "in.jsonl:2: skipped: not valid JSON" in result.stderr
    assert "in.jsonl:3: skipped: missing field 'id'" in result.stderr
    assert "in.jsonl:5: skipped: field 'prefix' must be a string" in result.stderr
    assert "2 completed, 3 skipped" in result.stderr
    assert all(r["drafted"] >= r["accepted"] >= 0 and r["forwards"] >= 0 for r in rows)
    assert "accepted per decoding pass" in result.stderr or all(r["forwards"] == 0 for r in rows)


def test_batch_without_speculation_gives_the_same_completions(tmp_path, model_dir):
    tasks = tmp_path / "in.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "prefix": p, "suffix": "\n"}) + "\n" for i, p in
                             enumerate(["def f():\n    return ", "for i in range(", "import "])))
    outputs = []
    for flags in ([], ["--no-speculative"]):
        out = tmp_path / f"out{len(flags)}.jsonl"
        result = run("batch", tasks, "-o", out, "--model", model_dir, "--max-tokens", 12, *flags)
        assert result.returncode == 0, result.stderr
        outputs.append([json.loads(x) for x in out.read_text().splitlines()])
    assert [r["completion"] for r in outputs[0]] == [r["completion"] for r in outputs[1]]
    assert "drafted" in outputs[0][0] and "drafted" not in outputs[1][0]


def test_complete_without_syntax_decodes_raw(tmp_path, model_dir):
    source = tmp_path / "a.py"
    source.write_text("def add(a, b):\n    return a + b\n")
    on = run("complete", source, "--line", 1, "--column", 15, "--model", model_dir,
             "--max-tokens", 12, "--cursor-mode", "none")
    off = run("complete", source, "--line", 1, "--column", 15, "--model", model_dir,
              "--max-tokens", 12, "--cursor-mode", "none", "--no-syntax")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert off.stdout.rstrip("\n").startswith(on.stdout.rstrip("\n"))


def test_ngrams_builds_the_table_the_engine_then_drafts_from(tmp_path, model_dir):
    import shutil

    from tokenfill.completion.engine import Engine

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("def add(a, b):\n    return a + b\n" * 5)
    result = run("ngrams", repo, "--model", model, "--min-count", 2)
    assert result.returncode == 0, result.stderr
    assert "ngrams.safetensors" in result.stdout and "from 1 files" in result.stdout
    assert "the model's predictions on" in result.stdout  # on by default
    drafter = next(d for d in Engine.load(model, dtype="fp32").speculator.drafters
                   if d.name == "corpus")
    assert drafter.table is not None and len(drafter.table) > 0
    for corpus, checkpoint, message in ((tmp_path / "none", model, "no such corpus"),
                                        (model, model, "no Python files"),
                                        (repo, repo, "no tokenizer.json")):
        result = run("ngrams", corpus, "--model", checkpoint)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run("ngrams", repo, "--model", model, "--predict", -1)
    assert result.returncode == 2 and "--predict" in result.stderr, result.stderr
    result = run("ngrams", repo, "--model", model, "--predict", 0)
    assert result.returncode == 0 and "predictions" not in result.stdout, result.stderr


def workspace_env(tmp_path) -> dict:
    import os

    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # indexes stay in tmp


def test_batch_with_a_workspace_retrieves_from_the_other_files(tmp_path, model_dir):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "shapes.py").write_text("def area_of_circle(radius):\n    return 3.14 * radius ** 2\n")
    (ws / "report.py").write_text("from shapes import area_of_circle\n")
    tasks = tmp_path / "in.jsonl"
    tasks.write_text(json.dumps({"id": 1, "path": "report.py",
                                 "prefix": "from shapes import area_of_circle\nx = area_of_",
                                 "suffix": "\n"}) + "\n" +
                     json.dumps({"id": 2, "path": 7, "prefix": "x"}) + "\n")
    out = tmp_path / "out.jsonl"
    env = workspace_env(tmp_path)
    result = run("batch", tasks, "-o", out, "--model", model_dir, "--max-tokens", 4,
                 "--workspace", ws, env=env)
    assert result.returncode == 0, result.stderr
    assert "workspace" in result.stderr and "2 files" in result.stderr
    assert "'path' must be a string" in result.stderr
    row = json.loads(out.read_text().splitlines()[0])
    assert row["context"]["chunks"] >= 1 and row["context"]["tokens"] > 0
    plain = tmp_path / "plain.jsonl"
    assert run("batch", tasks, "-o", plain, "--model", model_dir, "--max-tokens", 4,
               env=env).returncode == 0
    assert "context" not in json.loads(plain.read_text().splitlines()[0])
    bad = run("batch", tasks, "-o", out, "--model", model_dir, "--workspace", tmp_path / "nope",
              env=env)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_complete_uses_the_files_repository(tmp_path, model_dir):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "util.py").write_text("def helper(values):\n    return sorted(values)\n")
    (repo / "main.py").write_text("from util import helper\n\nprint(helper(\n")
    args = ("complete", repo / "main.py", "--line", 3, "--column", 14, "--model", model_dir,
            "--max-tokens", 4)
    result = run(*args, env=workspace_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"workspace {repo}" in result.stderr
    quiet = run(*args, "--no-context", env=workspace_env(tmp_path))
    assert quiet.returncode == 0 and "workspace" not in quiet.stderr


def test_batch_missing_input(tmp_path, model_dir):
    result = run("batch", tmp_path / "none.jsonl", "-o", tmp_path / "o.jsonl", "--model", model_dir)
    assert result.returncode == 2 and "no such file" in result.stderr


def test_demo_runs(model_dir):
    result = run("demo", "--model", model_dir, "--max-tokens", 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("completion (") == 4


def test_gate_fits_refits_and_gates_completions(tmp_path, model_dir):
    import os
    import random
    import shutil

    from tokenfill.completion.confidence import FEATURES

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    rng = random.Random(0)
    with open(tmp_path / "telemetry.jsonl", "w") as f:
        for _ in range(60):
            accepted = rng.random() < 0.5
            features = {n: rng.gauss(0, 1) for n in FEATURES}
            features["mean_logprob"] = rng.gauss(-0.2 if accepted else -2.0, 0.4)
            f.write(json.dumps({"accepted": accepted, "features": features}) + "\n")
    result = run("gate", "--model", model, "--telemetry", tmp_path / "telemetry.jsonl", env=env)
    assert result.returncode == 0, result.stderr
    mine = tmp_path / "state" / "tokenfill" / "gates" / "model" / "gate.json"
    assert mine.is_file() and not (model / "gate.json").exists()   # the person's, not the model's
    source = tmp_path / "main.py"
    source.write_text("def add(a, b):\n    return \n")
    args = ("complete", source, "--line", 2, "--column", 12, "--model", model, "--max-tokens", 4,
            "--no-context")
    shown = run(*args, env=env)
    assert shown.returncode == 0 and "confidence 0." in shown.stderr, shown.stderr
    held = run(*args, "--min-confidence", 1.0, env=env)
    assert held.returncode == 0 and "not shown: low confidence" in held.stderr, held.stderr
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text(json.dumps({"source": "p/a.py", "split": "heldout",
                                       "text": "x = 1\ny = 2\n"}) + "\n")
    few = run("gate", "--model", model, "--corpus", corpus_file, "--per-kind", 1, env=env)
    assert few.returncode == 2 and "both kinds" in few.stderr, few.stderr
    missing = run("gate", "--model", model, "--corpus", tmp_path / "none", env=env)
    assert missing.returncode == 2 and "no such corpus" in missing.stderr


def test_export_writes_what_other_engines_load(tmp_path, model_dir):
    """gguf: a file `--model` loads back; hf: a folder with its weights indexed and the end token
    named; a folder without config.json is a usage error."""
    gguf_file = tmp_path / "tiny.gguf"
    done = run("export", "gguf", str(model_dir), str(gguf_file), "--dtype", "f32")
    assert done.returncode == 0 and "f32" in done.stdout and gguf_file.is_file()
    source = tmp_path / "a.py"
    source.write_text("def f(x):\n    return x\n")
    cursor = ("--line", "2", "--column", "12", "--dtype", "fp32", "--max-tokens", "6")
    from_dir = run("complete", str(source), *cursor, "--model", str(model_dir))
    from_file = run("complete", str(source), *cursor, "--model", str(gguf_file))
    assert from_file.returncode == 0 and from_file.stdout == from_dir.stdout
    folder = tmp_path / "hf"
    assert run("export", "hf", str(model_dir), str(folder)).returncode == 0
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert "eos_token_id" in json.loads((folder / "config.json").read_text())
    refused = run("export", "gguf", str(tmp_path), str(tmp_path / "x.gguf"))
    assert refused.returncode == 2 and "no config.json" in refused.stderr
