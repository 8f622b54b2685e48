"""FIM training samples: layouts, cuts at arbitrary characters, rows starting at sample starts."""

from __future__ import annotations

from tests.conftest import SNIPPETS
from tokenfill.completion import fim
from tokenfill.train.training_data import FimMix, SampleStream


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
    s, t, _ = stream(tokenizer, fim_rate=1.0, spm_rate=0.0, short_rate=0.0)
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
