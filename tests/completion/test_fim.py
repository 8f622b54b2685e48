"""FIM format detection for each family, refusal without FIM tokens, prompts, context fitting."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tests.conftest import SNIPPETS
from tokenfill.completion import fim
from tokenfill.runtime.tokenizer import Tokenizer


def family_tokenizer(specials: list[str]) -> Tokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SNIPPETS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(tok)


FAMILIES = {
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
    "qwen2.5-coder": ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                      "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|im_end|>"],
    "deepseek-coder": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
                       "<｜fim▁begin｜>", "<｜fim▁end｜>"],
    "codellama": ["<s>", "</s>", "▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"],
    "codegemma": ["<bos>", "<eos>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                  "<|file_separator|>"],
    "codestral": ["<s>", "</s>", "[PREFIX]", "[SUFFIX]"],
}


PIECES = (("util.py", "def helper(x):\n    return x\n"), ("core.py", "class Core:\n    pass\n"))


def test_qwen_context_takes_the_repository_layout_before_the_fim_tokens():
    tok = family_tokenizer(FAMILIES["qwen2.5-coder"])
    tokens = fim.detect(tok)
    ctx = fim.context_ids(tokens, PIECES, tok.encode, 10_000, project="/src/shop",
                          path="/src/shop/app/main.py")
    assert ctx.before_fim and ctx.pieces == 2
    assert tok.decode(ctx.ids) == ("<|repo_name|>shop\n<|file_sep|>util.py\ndef helper(x):\n"
                                   "    return x\n<|file_sep|>core.py\nclass Core:\n    pass\n"
                                   "<|file_sep|>app/main.py\n")
    prompt = tokens.prompt(tok.encode("x = "), tok.encode("\n"), ctx)
    assert prompt[:len(ctx.ids)] == ctx.ids and prompt[len(ctx.ids)] == tokens.prefix


def test_starcoder_context_without_a_file_separator_is_commented_at_the_prefix_start():
    tok = family_tokenizer(FAMILIES["starcoder"])       # no <file_sep>: the bundled model's kind
    tokens = fim.detect(tok)
    ctx = fim.context_ids(tokens, PIECES, tok.encode, 10_000)
    assert not ctx.before_fim
    assert tok.decode(ctx.ids) == ("# util.py\ndef helper(x):\n    return x\n\n"
                                   "# core.py\nclass Core:\n    pass\n\n")
    prompt = tokens.prompt(tok.encode("x = "), tok.encode("\n"), ctx)
    assert prompt[0] == tokens.prefix and prompt[1:1 + len(ctx.ids)] == ctx.ids
    bare = fim.context_ids(tokens, PIECES, tok.encode, 10_000, layout="bare")
    assert tok.decode(bare.ids).startswith("def helper(x):")
    with_sep = family_tokenizer([*FAMILIES["starcoder"], "<file_sep>", "<repo_name>"])
    ctx = fim.context_ids(fim.detect(with_sep), PIECES, with_sep.encode, 10_000, project="/a/b")
    assert ctx.before_fim and with_sep.decode(ctx.ids).startswith("<repo_name>b<file_sep>util.py\n")


def test_context_keeps_the_pieces_nearest_the_cursor_within_its_room():
    tok = family_tokenizer(FAMILIES["starcoder"])
    tokens = fim.detect(tok)
    whole = fim.context_ids(tokens, PIECES, tok.encode, 10_000)
    last = tok.encode("# core.py\nclass Core:\n    pass\n\n")
    assert fim.context_ids(tokens, PIECES, tok.encode, len(whole.ids) - 1).ids == last
    assert fim.context_ids(tokens, PIECES, tok.encode, len(last) - 1).ids == []


@pytest.mark.parametrize("family", FAMILIES)
def test_format_is_detected_from_special_tokens(family):
    tok = family_tokenizer(FAMILIES[family])
    found = fim.detect(tok)
    assert found.format.name == family
    fmt = fim.FORMATS[family]
    prompt = found.prompt(tok.encode("a = 1\n"), tok.encode("\nb = 2"))
    expected_head = [tok.token_id(fmt.bos)] if fmt.bos else []
    first = fmt.suffix if fmt.layout == "spm" else fmt.prefix  # a family trained on one layout
    assert prompt[:len(expected_head) + 1] == expected_head + [tok.token_id(first)]
    if fmt.middle is not None:
        assert prompt[-1] == tok.token_id(fmt.middle)
    else:  # Codestral: the prefix's text runs into the middle
        assert prompt[-len(tok.encode("a = 1\n")):] == tok.encode("a = 1\n")
    assert prompt.count(tok.token_id(fmt.suffix)) == 1
    assert found.stops and all(isinstance(i, int) for i in found.stops)
    assert len(prompt) == found.overhead + len(tok.encode("a = 1\n")) + len(tok.encode("\nb = 2"))


def test_suffix_prefix_middle_layout_puts_the_prefix_last(tokenizer):
    psm, spm = fim.detect(tokenizer), fim.detect(tokenizer, "spm")
    pre, suf = tokenizer.encode("a = 1\n"), tokenizer.encode("\nb = 2")
    assert psm.prompt(pre, suf) == [psm.prefix, *pre, psm.suffix, *suf, psm.middle]
    assert spm.prompt(pre, suf) == [spm.suffix, *suf, spm.prefix, *pre, spm.middle]
    with pytest.raises(ValueError, match="unknown FIM layout 'mps'"):
        fim.detect(tokenizer, "mps")


def test_tokenizer_without_fim_tokens_is_refused():
    tok = family_tokenizer(["<s>", "</s>"])
    with pytest.raises(fim.FimUnsupportedError, match="no fill-in-the-middle tokens"):
        fim.detect(tok)


def test_fim_text_inside_user_code_is_not_a_control_token(tokenizer):
    tokens = fim.detect(tokenizer)
    prefix = "s = '<fim_middle><fim_suffix>'\n"
    suffix = "t = '<|endoftext|><fim_prefix>'\n"
    prompt = tokens.prompt(tokenizer.encode(prefix), tokenizer.encode(suffix))
    assert prompt.count(tokens.middle) == 1 and prompt.count(tokens.suffix) == 1
    assert prompt.count(tokens.prefix) == 1
    assert tokenizer.token_id("<|endoftext|>") not in prompt


lines = st.lists(st.text(alphabet="abc xyz()=\t", max_size=30), min_size=0, max_size=25)


@settings(max_examples=150, deadline=None)
@given(lines, lines, st.integers(min_value=0, max_value=120))
def test_fit_context_keeps_text_nearest_the_cursor(tokenizer, pre_lines, suf_lines, budget):
    prefix, suffix = "\n".join(pre_lines), "\n".join(suf_lines)
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    p, s = fim.fit_context(prefix, suffix, count, budget)
    assert count(p) + count(s) <= budget
    assert prefix.endswith(p) and suffix.startswith(s)
    if count(prefix) + count(suffix) <= budget:
        assert (p, s) == (prefix, suffix)
    cursor_line = prefix.rsplit("\n", 1)[-1]
    if p != prefix and len(p) > len(cursor_line):
        assert prefix[len(prefix) - len(p) - 1] == "\n"  # cut at a line start
    first_line = suffix.split("\n", 1)[0]
    if s != suffix and len(s) > len(first_line):
        assert s.endswith("\n")  # cut at a line end


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=20, max_value=200))
def test_fit_context_favours_the_prefix(tokenizer, budget):
    prefix = "".join(f"line_{i} = {i}\n" for i in range(200))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(200))
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    p, s = fim.fit_context(prefix, suffix, count, budget)
    assume(count(p) > 0)
    assert count(s) <= budget - int(budget * 0.75)
    assert count(p) >= count(s)


def test_fit_context_gives_unused_suffix_budget_to_the_prefix(tokenizer):
    prefix = "".join(f"line_{i} = {i}\n" for i in range(100))
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    p, s = fim.fit_context(prefix, "", count, 100)
    assert s == "" and count(p) > 75


def reference_fit(prefix: str, suffix: str, count, budget: int, share: float = 0.75):
    """Slow and plain: whole texts counted, every line boundary tried from the cursor outwards."""
    if count(prefix) + count(suffix) <= budget:
        return prefix, suffix
    suffix_budget = min(max(budget - int(budget * share), budget - count(prefix)), count(suffix))
    ends = [i + 1 for i, c in enumerate(suffix) if c == "\n"][::-1]
    s = next((suffix[:e] for e in ends if count(suffix[:e]) <= suffix_budget), None)
    if s is None:
        s = next(suffix[:i] for i in range(len(suffix), -1, -1) if count(suffix[:i]) <= suffix_budget)
    room = budget - count(s)
    starts = [i + 1 for i, c in enumerate(prefix) if c == "\n"]
    p = next((prefix[i:] for i in starts if count(prefix[i:]) <= room), None)
    if p is None:
        p = next(prefix[i:] for i in range(len(prefix) + 1) if count(prefix[i:]) <= room)
    return p, s


@settings(max_examples=12, deadline=None)
@given(st.integers(min_value=1, max_value=4000), st.integers(min_value=0, max_value=4000),
       st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=10**6))
def test_windowed_fit_equals_the_reference_on_long_files(tokenizer, n_pre, n_suf, budget, seed):
    import random

    rng = random.Random(seed)
    words = ["x", "value", "(", ")", " = ", "\n", "\n    ", "123", "é", "\t", "# note"]
    prefix = "".join(rng.choice(words) for _ in range(n_pre))
    suffix = "".join(rng.choice(words) for _ in range(n_suf))
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    assert fim.fit_context(prefix, suffix, count, budget) == \
        reference_fit(prefix, suffix, count, budget)
