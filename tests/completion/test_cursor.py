"""The cursor inside a token: exact next-byte masses against brute-force enumeration on a toy
language model, the byte phase reproducing what a sure model knows, healing, the model scorer."""

from __future__ import annotations

import codecs

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokenfill.completion import cursor, utf8
from tokenfill.completion.cursor import Constraint, ExactCursor, ModelScorer
from tokenfill.runtime.generate import Sampling, restrict
from tokenfill.runtime.model import reference_logits

END_IDS = frozenset({0})


class ToyLM:
    """A token trigram model with random peaked logits: any sequence gets some probability."""

    def __init__(self, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(vocab + 1, vocab, generator=g, dtype=torch.float64) * 3
        self.b = torch.randn(vocab + 1, vocab, generator=g, dtype=torch.float64)
        self.vocab = vocab
        self.passes = 0

    def __call__(self, seq: tuple[int, ...]) -> torch.Tensor:
        last = seq[-1] if seq else self.vocab
        before = seq[-2] if len(seq) > 1 else self.vocab
        return torch.log_softmax(self.a[last] + self.b[before], dim=-1)

    def logprobs(self, seqs):
        self.passes += 1
        return [self(s) for s in seqs]


class SureLM:
    """Puts all its mass on the canonical tokens of one text, then on the end token."""

    def __init__(self, ids: list[int], vocab: int):
        self.ids, self.vocab, self.passes = ids, vocab, 0

    def logprobs(self, seqs):
        self.passes += 1
        out = []
        for s in seqs:
            lp = torch.full((self.vocab,), -1e9, dtype=torch.float64)
            on_path = tuple(self.ids[:len(s)]) == s
            lp[(self.ids[len(s)] if len(s) < len(self.ids) else 0) if on_path else 1] = 0.0
            out.append(lp)
        return out


def normalised(mass: torch.Tensor, y: bytes) -> torch.Tensor:
    mass = mass * utf8.allowed_bytes(y)
    return mass / mass.sum()


def test_prefix_index_finds_exactly_the_tokens_that_start_with_some_bytes(tokenizer):
    table, index = tokenizer.token_bytes, tokenizer.prefix_index
    for prefix in [b"", b"s", b"se", b"self", b" ", b"\n ", b"\xe6", b"\xff", b"zzzz"]:
        want = {i for i, data in enumerate(table)
                if data and data.startswith(prefix) and i not in tokenizer.special_ids}
        assert set(index.starting_with(prefix)) == want
    assert [table[i] for i in index.prefixes_of(b"self.x")] == [
        table[i] for i in sorted(index.prefixes_of(b"self.x"), key=lambda i: len(table[i]))]


def test_split_partial_takes_the_last_pretokenizer_piece(tokenizer):
    assert cursor.split_partial(tokenizer, "if self.resu") == ("if self.", "resu")
    assert cursor.split_partial(tokenizer, "x = 12") == ("x =", " 12")
    assert cursor.split_partial(tokenizer, "def f():\n    ") == ("def f():", "\n    ")
    assert cursor.split_partial(tokenizer, "") == ("", "")


def test_a_word_longer_than_the_cap_gives_only_its_end(tokenizer):
    word = "a" * 40_000
    head, partial = cursor.split_partial(tokenizer, "x = " + word)
    assert partial == "a" * cursor.MAX_PARTIAL and head + partial == "x = " + word


def test_only_the_prefixs_tail_is_pretokenized(tokenizer, monkeypatch):
    read = []
    pretokenize = tokenizer.pretokenize
    monkeypatch.setattr(tokenizer, "pretokenize", lambda text: read.append(len(text))
                        or pretokenize(text))
    big = "value = 1\n" * 100_000 + "if self.resu"
    assert cursor.split_partial(tokenizer, big) == (big[:-4], "resu")
    assert read == [cursor.TAIL]


WORDS = [b"self", b"resu", b"sel", b" x", b" ==", b"\n   ", b"12", b"print", b"(a", b"x"]


def assert_exact_masses(tokenizer, lm, words) -> None:
    """At the start of each partial word, exact masses equal brute-force enumeration."""
    for y in words:
        exact = ExactCursor(tokenizer, lm, y, END_IDS, floor=0.0)
        exact.resolve_all()
        got = exact.masses()
        want = cursor.reference_masses(tokenizer, lm, y, END_IDS)
        torch.testing.assert_close(normalised(got, y), normalised(want, y), rtol=1e-9, atol=1e-12,
                                   msg=f"partial word {y!r}")


def test_exact_masses_equal_brute_force_enumeration(tokenizer):
    assert_exact_masses(tokenizer, ToyLM(tokenizer.vocab_size), WORDS)


def test_exact_masses_with_another_pretokenizer():
    """GPT-2's pretokenizer (a family tokenizer) splits differently; the masses stay exact."""
    from tests.completion.test_fim import FAMILIES, family_tokenizer

    tok = family_tokenizer(FAMILIES["starcoder"])
    assert_exact_masses(tok, ToyLM(tok.vocab_size, seed=4), [b"self", b" resu", b"  ", b"12", b"x"])


def test_masses_stay_exact_as_bytes_are_added(tokenizer):
    lm = ToyLM(tokenizer.vocab_size, seed=1)
    for start, more in [(b"re", b"sult "), (b"se", b"lf.x"), (b" ", b"  print"), (b"1", b"23")]:
        exact = ExactCursor(tokenizer, lm, start, END_IDS, floor=0.0)
        y = start
        for b in more:
            exact.resolve_all()
            exact.advance(b)
            y += bytes([b])
            exact.resolve_all()
            got = exact.masses()
            want = cursor.reference_masses(tokenizer, lm, y, END_IDS)
            torch.testing.assert_close(normalised(got, y), normalised(want, y), rtol=1e-9,
                                       atol=1e-12, msg=f"after {y!r}")


def test_greedy_takes_the_most_probable_first_path(tokenizer):
    """Every continuation passes through one first path: brute force over the toy model agrees."""
    lm = ToyLM(tokenizer.vocab_size, seed=3)
    table = tokenizer.token_bytes
    for y in WORDS:
        begun = ExactCursor(tokenizer, lm, y, END_IDS, floor=0.0).run(
            Sampling(), None, on_byte=lambda b: False)
        best, best_logp = None, -float("inf")

        def walk(seq, text, logp):
            nonlocal best, best_logp
            if text == y:  # a path that spells y exactly (it counts as for the masses)
                valid = cursor.canonical(tokenizer, seq[:-1], table_text(seq[:-1]), seq[-1:])[0]
                if valid and logp > best_logp:
                    best, best_logp = seq, logp
                return
            lp = lm(seq)
            for t in tokenizer.prefix_index.starting_with(b""):
                grown = text + table[t]
                fits = y.startswith(grown) if len(grown) <= len(y) else grown.startswith(y)
                if not fits:
                    continue
                if len(grown) > len(y):
                    if cursor.canonical(tokenizer, seq, text, [t])[0] and logp + float(lp[t]) > best_logp:
                        best, best_logp = seq + (t,), logp + float(lp[t])
                else:
                    walk(seq + (t,), grown, logp + float(lp[t]))

        def table_text(seq):
            return b"".join(table[i] for i in seq)

        walk((), b"", 0.0)
        assert begun.seq == best, y


TEXT = st.text(st.sampled_from(list("abcdefghijklmnopqrstuvwxyz_ ().=:\r\n\t0123456789é✓日")),
               min_size=1, max_size=24)


def finish(tokenizer, lm, begun: cursor.ByteStart, limit: int = 40) -> bytes:
    """Greedy token decoding after the byte phase, as the engine does it (with the constraint)."""
    seq, text = list(begun.seq), begun.text
    constraint, skip = Constraint(tokenizer, begun.need), len(begun.need)
    for _ in range(limit):
        lp = restrict(lm.logprobs([tuple(seq)])[0], constraint.allowed())
        token = int(lp.argmax())
        constraint.advance(token)
        if token in END_IDS:
            break
        data = tokenizer.token_bytes[token]
        taken = min(skip, len(data))
        text, skip = text + data[taken:], skip - taken
        seq.append(token)
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, cut=st.integers(min_value=0, max_value=24),
       temperature=st.sampled_from([0.0, 1.0]))
@example(text="00日日", cut=3, temperature=0.0)  # a token cuts the character after the cursor
def test_exact_reproduces_the_text_a_sure_model_knows(tokenizer, text, cut, temperature):
    """Cursor at any character: the partial word is the last piece before it; a model sure of
    the whole middle must get exactly the rest back, and every byte stays valid UTF-8."""
    cut = min(cut, len(text))
    head, partial = cursor.split_partial(tokenizer, text[:cut])
    if not partial:
        return
    middle = (partial + text[cut:]).encode()
    lm = SureLM(tokenizer.encode(middle.decode()), tokenizer.vocab_size)
    begun = ExactCursor(tokenizer, lm, partial.encode(), END_IDS).run(
        Sampling(temperature=temperature, seed=0), torch.Generator().manual_seed(0),
        on_byte=lambda b: False)
    got = begun.text if begun.ended else finish(tokenizer, lm, begun)
    assert got == text[cut:].encode()
    (text[:cut].encode() + got).decode()  # valid UTF-8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, seed=st.integers(0, 3), temperature=st.sampled_from([0.5, 1.0]))
def test_bytes_chosen_one_at_a_time_are_always_valid_utf8(tokenizer, text, seed, temperature):
    head, partial = cursor.split_partial(tokenizer, text)
    if not partial:
        return
    lm = ToyLM(tokenizer.vocab_size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    begun = ExactCursor(tokenizer, lm, partial.encode(), END_IDS).run(
        Sampling(temperature=temperature), generator, on_byte=lambda b: False, max_bytes=12)
    data = partial.encode() + begun.text
    if begun.ended:
        data.decode()  # whole characters
    else:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)  # a valid beginning
        assert begun.need and (begun.text or partial.encode()).endswith(begun.need[-1:])


def test_heal_takes_back_tokens_while_they_could_start_a_longer_one(tokenizer):
    ids = tokenizer.encode("if self.resu")
    k = cursor.heal_rollback(tokenizer, ids)
    removed = tokenizer.decode_bytes(ids[len(ids) - k:])
    assert k >= 1 and removed.endswith(tokenizer.token_bytes[ids[-1]])
    assert tokenizer.prefix_index.starting_with(removed)
    longer = tokenizer.decode_bytes(ids[len(ids) - k - 1:])
    assert k == len(ids) or not tokenizer.prefix_index.starting_with(longer)
    indent = tokenizer.encode("def f():\n    ")
    taken = tokenizer.decode_bytes(indent[len(indent) - cursor.heal_rollback(tokenizer, indent):])
    assert taken.strip(b" ") in (b"\n", b"") or taken.endswith(b" ")  # the indentation is kept


def test_constraint_spells_what_was_taken_back(tokenizer):
    need = b"resu"
    c = Constraint(tokenizer, need)
    table = tokenizer.token_bytes
    allowed = c.allowed().nonzero().flatten().tolist()
    assert allowed
    for i in range(len(table)):
        fits = bool(table[i]) and i not in tokenizer.special_ids and (
            table[i].startswith(need) or need.startswith(table[i]))
        assert (i in allowed) == fits
    first = tokenizer.prefix_index.prefixes_of(need)[0]
    c.advance(first)
    assert c.need == need[len(table[first]):]
    spelled = table[first]
    while (mask := c.allowed()) is not None:
        shortest = min(mask.nonzero().flatten().tolist(), key=lambda i: len(table[i]))
        c.advance(shortest)
        spelled += table[shortest]
    assert spelled.startswith(need)


@torch.inference_mode()
def test_model_scorer_tree_and_lay_agree_with_full_recompute(tokenizer, tiny_model):
    prompt = tokenizer.encode("def add(a, b):\n    return")
    cache = tiny_model.new_cache(1, 128)
    tiny_model(torch.tensor([prompt[:5]]), 0, cache)  # part of the prompt already cached
    scorer = ModelScorer(tiny_model, cache, prompt, 5, tokenizer.vocab_size)
    paths = [tuple(tokenizer.encode(s)) for s in [" a", " a +", " add", " b"]]
    more = [tuple(tokenizer.encode(s)) for s in [" a + b", " b -", " c"]]

    def check(path, lp):
        want = reference_logits(tiny_model, torch.tensor([prompt + list(path)]))[0, -1]
        torch.testing.assert_close(lp, torch.log_softmax(want.double(), -1), atol=1e-4, rtol=1e-4)

    for path, lp in zip([(), *paths], scorer.logprobs([(), *paths])):
        check(path, lp)
    assert scorer.passes == 1  # the rest of the prompt and every path in one pass
    for path, lp in zip(more, scorer.logprobs(more)):  # new nodes, on top of the first ones
        check(path, lp)
    assert scorer.passes == 2
    path = more[0]
    logits = scorer.lay(path)  # moved into place, not run again
    assert scorer.passes == 2
    nxt = int(logits.argmax())
    after = tiny_model(torch.tensor([[nxt]]), len(prompt) + len(path), cache)[0, -1]
    want = reference_logits(tiny_model, torch.tensor([prompt + list(path) + [nxt]]))[0, -1]
    torch.testing.assert_close(after, want, atol=1e-4, rtol=1e-4)
