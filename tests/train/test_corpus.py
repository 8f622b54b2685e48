"""The corpus manifest, filters, decontamination and the stable held-out split."""

from __future__ import annotations

import gzip
import json
import zipfile

from tokenfill.train import corpus


def test_manifest_pins_every_package_once():
    manifest = corpus.Manifest.load()
    names = [p.name for p in manifest.packages]
    assert len(names) == len(set(names)) >= 30
    assert all(p.version and p.version[0].isdigit() for p in manifest.packages)


def test_filters():
    good = b"def f(x):\n    return x + 1\n\n\nprint(f(2))  # a comment long enough\n"
    assert corpus.clean(good) is not None
    assert corpus.clean(good.replace(b"\n", b"\r\n")) == good.decode()   # CRLF normalised
    assert corpus.clean(b"def f(:\n" * 10) is None                       # does not parse
    assert corpus.clean(b"\xff\xfe" + good) is None                      # not UTF-8
    assert corpus.clean(b"x = '" + b"a" * 500 + b"'\n") is None          # minified / generated
    assert corpus.clean(b"x = 1\n") is None                              # too short


def test_heldout_split_is_stable_and_about_one_percent():
    texts = [f"value = {i}\n" for i in range(5000)]
    first = [corpus.is_heldout(t) for t in texts]
    assert first == [corpus.is_heldout(t) for t in texts]
    assert 20 < sum(first) < 90


def test_build_dedups_and_decontaminates(tmp_path, monkeypatch):
    solution = "    return sorted(set(numbers), key=lambda n: -n)[:limit_value]"
    bench = tmp_path / "bench"
    bench.mkdir()
    with gzip.open(bench / "t.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "def top_values(numbers, limit_value):\n",
                            "canonical_solution": solution + "\n",
                            "suffix": "    # a line that is long enough to count here\n"}) + "\n")
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    body = "def helper(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n"
    leaked = ("def top_values(numbers, limit_value):\n" + solution +
              "\n    # a line that is long enough to count here\n")
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_pkg/a.py", body)
        zf.writestr("demo_pkg/b.py", body)          # duplicate
        zf.writestr("demo_pkg/c.py", leaked)        # benchmark text
        zf.writestr("demo_pkg/d.py", "def broken(:\n    pass\n" * 5)
    monkeypatch.setattr(corpus, "stdlib_files", lambda exclude: iter([]))
    manifest = corpus.Manifest(stdlib_exclude=[], packages=[corpus.Package("demo-pkg", "1.0")])
    stats = corpus.build(manifest, tmp_path / "c.jsonl", cache=tmp_path, benchmark_dir=bench,
                         progress=False)
    assert (stats.kept, stats.duplicates, stats.contaminated, stats.rejected) == (1, 1, 1, 1)
    docs = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert docs[0]["text"] == body and docs[0]["source"] == "demo-pkg-1.0/demo_pkg/a.py"
