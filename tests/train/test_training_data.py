"""FIM training samples: layouts, unit cuts, cuts at arbitrary characters, rows starting at
sample starts."""

from __future__ import annotations

import random

from tests.conftest import SNIPPETS
from tokenfill.completion import fim
from tokenfill.train.training_data import UNITS, FimMix, SampleStream, unit_spans


def stream(tokenizer, **mix):
    tokens = fim.detect(tokenizer)
    eot = tokenizer.token_id("<|endoftext|>")
    return SampleStream(SNIPPETS, tokenizer, tokens, eot, FimMix(**mix), seed=0), tokens, eot


def test_psm_sample_reassembles_the_window(tokenizer):
    s, t, eot = stream(tokenizer, fim_rate=1.0, spm_rate=0.0)
    for _ in range(50):
        ids = s.sample()
        assert ids[0] == t.prefix and ids[-1] == eot
        i_suf, i_mid = ids.index(t.suffix), ids.index(t.middle)
        pre, suf, mid = ids[1:i_suf], ids[i_suf + 1:i_mid], ids[i_mid + 1:-1]
        text = tokenizer.decode(pre) + tokenizer.decode(mid) + tokenizer.decode(suf)
        assert text in SNIPPETS


def test_spm_layout(tokenizer):
    s, t, eot = stream(tokenizer, fim_rate=1.0, spm_rate=1.0)
    ids = s.sample()
    assert ids[0] == t.suffix and ids.index(t.prefix) < ids.index(t.middle)


def test_cuts_fall_inside_tokens(tokenizer):
    s, t, _ = stream(tokenizer, fim_rate=1.0, spm_rate=0.0, unit_rate=0.0, short_rate=0.0)
    inside = 0
    for _ in range(200):
        ids = s.sample()
        pre = tokenizer.decode(ids[1:ids.index(t.suffix)])
        mid = tokenizer.decode(ids[ids.index(t.middle) + 1:-1])
        if pre and mid and (pre[-1].isalnum() and mid[0].isalnum()):
            inside += 1
    assert inside > 10


def test_plain_samples_and_batches(tokenizer):
    s, t, eot = stream(tokenizer, fim_rate=0.0)
    ids = s.sample()
    assert ids[-1] == eot and t.middle not in ids
    x, y = s.batch(3, 40)
    assert x.shape == y.shape == (3, 40)
    assert (x[:, 1:] == y[:, :-1]).all()


CODE = '''def f(x, y):
    if x:
        return g(x, h(y))

    return 0
print(f(1, 2))
'''


def test_units_are_the_spans_editors_ask_for():
    def middles(kind):
        return {CODE[a:b] for a, b in unit_spans(CODE, kind)}

    assert "        return g(x, h(y))\n" in middles("line")          # the cursor at column 0
    assert "return g(x, h(y))\n" in middles("line")                  # or after the indentation
    assert "(x, y):" in middles("rest-of-line") and "" not in middles("rest-of-line")
    assert "if x:\n        return g(x, h(y))\n" in middles("lines")
    assert "return g(x, h(y))\n" in middles("block-body")            # the body of `if x:`
    assert "if x:\n        return g(x, h(y))\n\n    return 0\n" in middles("block-body")
    assert {"x, y", "x, h(y)", "y", "1, 2", "f(1, 2)"} <= middles("arguments")
    for kind in UNITS:  # a whole-line unit ends with its newline: the suffix starts a line
        for a, b in unit_spans(CODE, kind):
            assert 0 <= a < b <= len(CODE)
            if kind in ("line", "lines", "block-body"):
                assert CODE[b - 1] == "\n" and (a == 0 or CODE[a - 1] in "\n ")


def test_unit_samples_end_the_middle_where_the_unit_ends(tokenizer):
    s, t, eot = stream(tokenizer, fim_rate=1.0, spm_rate=0.0, unit_rate=1.0)
    whole_lines = 0
    for _ in range(100):
        ids = s.sample()
        mid = tokenizer.decode(ids[ids.index(t.middle) + 1:-1])
        suf = tokenizer.decode(ids[ids.index(t.suffix) + 1:ids.index(t.middle)])
        whole_lines += mid.endswith("\n") and (suf == "" or not suf.startswith("\n"))
    assert whole_lines > 20


PACKAGE = {
    "shop-1.0/shop/pricing.py": 'def compute_total(prices, tax_rate):\n    """Sum with tax."""\n'
                                "    return sum(prices) * (1 + tax_rate)\n",
    "shop-1.0/shop/orders.py": "from shop.pricing import compute_total\n\n\n"
                               "def place_order(prices):\n    total = compute_total(prices, 0.2)\n"
                               "    return total\n",
    "other-2.0/other/secret.py": "def compute_total(x):\n    return 'not this package'\n",
}


def test_repository_samples_open_with_what_the_retriever_would_give(tokenizer):
    paths, docs = list(PACKAGE), list(PACKAGE.values())
    tokens = fim.detect(tokenizer)
    eot = tokenizer.token_id("<|endoftext|>")
    s = SampleStream(docs, tokenizer, tokens, eot, FimMix(fim_rate=1.0, spm_rate=0.0,
                                                          repo_rate=1.0), seed=0, paths=paths)
    with_context = 0
    for _ in range(60):
        ids = s.sample()
        pre = tokenizer.decode(ids[1:ids.index(tokens.suffix)])
        assert "not this package" not in pre                     # never another package
        if pre.startswith("# pricing.py\n"):                        # the path inside the package
            with_context += 1
            assert pre.startswith('# pricing.py\ndef compute_total(prices, tax_rate):\n'
                                  '    """Sum with tax."""\n\n')   # the signature, as served
    assert with_context >= 5
    for k, path in enumerate(paths):                               # never the file itself
        doc = docs[k]
        got = s.repos.pieces(k, doc[:len(doc) // 2], doc[len(doc) // 2:], random.Random(k), 400)
        assert all(not path.endswith(name) for name, _ in got)
    from tokenfill.context.index import chunk_spans

    kept = SampleStream(docs, tokenizer, tokens, eot, FimMix(fim_rate=1.0, repo_rate=1.0), seed=0,
                        paths=paths, spans=[chunk_spans(d) for d in docs])
    parsed = SampleStream(docs, tokenizer, tokens, eot, FimMix(fim_rate=1.0, repo_rate=1.0),
                          seed=0, paths=paths)
    assert [kept.sample() for _ in range(20)] == [parsed.sample() for _ in range(20)]
    plain = SampleStream(docs, tokenizer, tokens, eot, FimMix(fim_rate=1.0, spm_rate=0.0,
                                                              repo_rate=1.0), seed=0)
    assert all(not tokenizer.decode(plain.sample()[1:]).startswith("# ") for _ in range(20))
