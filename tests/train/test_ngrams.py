"""The corpus n-gram table: counted, hashed and pruned, it names the token plain dictionaries name;
it is kept beside the model, refused under another tokenizer, and built from a corpus or a tree."""

from __future__ import annotations

import gzip
import json
import random
import shutil

import numpy as np
import pytest
import torch

from tokenfill.speculative import ngram_table
from tokenfill.speculative.ngram_table import NGramTable, beside, tail_hashes
from tokenfill.train import ngrams
from tokenfill.train.ngrams import build_beside, context_hashes, reference_next, source_texts


def random_docs(rng: random.Random, alphabet: int) -> list[list[int]]:
    return [[rng.randrange(alphabet) for _ in range(rng.randrange(0, 80))]
            for _ in range(rng.randrange(1, 6))]


def test_lookup_names_the_token_the_plain_counts_name():
    """Over small alphabets (contexts repeat, shares tie, gates bite) and several gate settings:
    the longest context that clears the gates and its top token, as plain dictionaries count it."""
    rng = random.Random(0)
    for trial in range(60):
        alphabet = rng.choice([2, 3, 5, 20])
        docs = random_docs(rng, alphabet)
        min_count, min_share = rng.choice([(1, 0.0), (2, 0.3), (3, 0.4), (3, 0.6)])
        table = ngrams.count(docs, min_count=min_count, min_share=min_share)
        for _ in range(40):
            tail = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 7))]
            found = table.lookup(tail)
            assert (found[0] if found else None) == reference_next(docs, tail, min_count, min_share), (
                trial, tail)


def test_counting_a_models_predictions_names_what_the_plain_counts_of_them_name():
    """With `targets` (a model's prediction after each position), what is counted after each
    context is the target, not the document's next token: against plain dictionaries."""
    rng = random.Random(2)
    for trial in range(40):
        alphabet = rng.choice([2, 3, 5])
        docs = random_docs(rng, alphabet)
        targets = [[rng.randrange(alphabet) for _ in doc] for doc in docs]
        min_count, min_share = rng.choice([(1, 0.0), (2, 0.3), (3, 0.5)])
        table = ngrams.count(docs, targets=targets, min_count=min_count, min_share=min_share)
        for _ in range(30):
            tail = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 7))]
            found = table.lookup(tail)
            assert (found[0] if found else None) == reference_next(
                docs, tail, min_count, min_share, targets), (trial, tail)
    # the document's own next token is no longer what is counted
    table = ngrams.count([[1, 2, 3]], targets=[[5, 6, 7]], min_count=1, min_share=0.0)
    assert table.lookup([1])[0] == 5 and table.lookup([1, 2])[0] == 6


def test_a_merged_table_takes_the_longer_context_and_the_preferred_one_on_a_tie():
    rng = random.Random(3)
    for trial in range(20):
        alphabet = rng.choice([2, 3, 5])
        a = ngrams.count(random_docs(rng, alphabet), min_count=1, min_share=0.0)
        b = ngrams.count(random_docs(rng, alphabet), min_count=1, min_share=0.0)
        merged = ngrams.merge(a, b)
        assert len(merged) <= len(a) + len(b)
        for _ in range(40):
            tail = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 7))]
            x, y = a.lookup(tail), b.lookup(tail)
            want = x if y is None or (x is not None and x[2] >= y[2]) else y
            assert merged.lookup(tail) == want, (trial, tail)


def test_model_predictions_are_each_windows_own_greedy_tokens(tiny_model):
    """Windows batched together (padded, longest first) predict what each predicts alone."""
    rng = random.Random(4)
    docs = [np.array([rng.randrange(100) for _ in range(n)], dtype=np.int32) for n in (1, 7, 13, 20)]
    got = ngrams.model_predictions(tiny_model, docs, window=8, batch=3)
    with torch.inference_mode():
        for doc, predicted in zip(docs, got):
            want = [tiny_model(torch.tensor(doc[s:s + 8], dtype=torch.long)[None]).argmax(-1)[0]
                    for s in range(0, len(doc), 8)]
            assert predicted.tolist() == torch.cat(want).tolist()


def test_vectorised_hashes_equal_the_tail_hashes():
    tokens = np.array([7, 0, 4095, 3, 65535, 1 << 20])
    for n in range(1, ngram_table.MAX_N + 1):
        hashes = context_hashes(tokens, n)
        for end in range(n - 1, len(tokens)):
            assert int(hashes[end - n + 1]) == tail_hashes(tokens[:end + 1].tolist())[n - 1]


def test_contexts_do_not_run_across_documents():
    table = ngrams.count([[1, 2], [3, 4]], min_count=1, min_share=0.0)
    assert table.lookup([2]) is None  # nothing followed 2 within its document
    assert table.lookup([1]) == (2, 1.0, 1)


def test_longer_contexts_that_say_the_same_are_dropped():
    """`a b` is always followed by `c`, as `b` is: the longer context adds nothing and is not
    kept; `x b` is followed by `d`, which `b` alone does not say, and is kept."""
    docs = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [9, 2, 4], [9, 2, 4]]
    table = ngrams.count(docs, min_count=2, min_share=0.5)
    assert table.lookup([1, 2]) == (3, 0.6, 1)    # found through `2` alone (3 of 5)
    assert table.lookup([9, 2])[0] == 4 and table.lookup([9, 2])[2] == 2
    assert table.by_order()[2] == 1


def test_token_ids_past_the_packing_are_refused():
    with pytest.raises(ValueError, match="below 2"):
        ngrams.count([[1, 1 << 24]])


def test_saved_and_loaded_as_safetensors(tmp_path):
    table = ngrams.count(random_docs(random.Random(1), 5), min_count=1, min_share=0.0,
                             info={"source": "test"})
    table.save(tmp_path / "t.safetensors")
    back = NGramTable.load(tmp_path / "t.safetensors")
    for name in ("keys", "next", "share", "order"):
        assert np.array_equal(getattr(back, name), getattr(table, name))
    assert back.info["source"] == "test" and back.info["min_count"] == 1
    assert (tmp_path / "t.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_kept_beside_the_model_and_refused_under_another_tokenizer(tmp_path, model_dir, tokenizer):
    directory = tmp_path / "model"
    shutil.copytree(model_dir, directory)
    assert beside(directory) is None  # none built yet
    text = "def add(a, b):\n    return a + b\n"
    table = build_beside(directory, [text] * 4, progress=False)
    assert (directory / ngram_table.FILE).is_file()
    ids = tokenizer.encode(text)
    assert beside(directory).lookup(ids[:3])[0] == ids[3]
    assert len(beside(directory)) == len(table)
    predicted = build_beside(directory, [text] * 4, predict=20, progress=False)  # two files
    assert predicted.info["predicted"]["tokens"] == 2 * len(ids)
    assert predicted.info["predicted"]["documents"] == 2 and len(predicted) >= len(table)
    (directory / "tokenizer.json").write_text((directory / "tokenizer.json").read_text() + " ")
    with pytest.warns(UserWarning, match="another tokenizer"):
        assert beside(directory) is None


def test_source_texts_from_a_corpus_file_or_a_tree(tmp_path):
    rows = [{"source": "a.py", "split": "train", "text": "x = 1\n"},
            {"source": "b.py", "split": "heldout", "text": "y = 2\n"}]
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert source_texts(tmp_path / "corpus.jsonl.gz") == ["x = 1\n"]  # the training split only
    tree = tmp_path / "repo"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "m.py").write_text("import os\n")
    (tree / "notes.txt").write_text("not code")
    (tree / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    assert source_texts(tree) == ["import os\n"]
    with pytest.raises(FileNotFoundError, match="no such corpus"):
        source_texts(tmp_path / "missing.jsonl")
