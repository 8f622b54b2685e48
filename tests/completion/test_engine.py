"""The engine: prompts fitted to the context, special-token text kept as text, results well formed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.completion.test_fim import family_tokenizer
from tokenfill.completion.engine import Engine
from tokenfill.completion.fim import FimUnsupportedError
from tokenfill.completion.request import CompletionRequest
from tokenfill.runtime.generate import Sampling
from tokenfill.runtime.slots import SlotPool
from tokenfill.train import ngrams


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, dtype="fp32")


def prompt_ids(engine: Engine, prefix: str, suffix: str, max_tokens: int,
               cursor_mode: str = "none") -> tuple[list[int], bytes]:
    made = engine.prompt(CompletionRequest(prefix=prefix, suffix=suffix, cursor_mode=cursor_mode),
                         max_tokens)
    return made.ids, made.forced


def test_completion_is_text_with_timings(engine):
    result = engine.complete(CompletionRequest(prefix="def add(a, b):\n    return ", suffix="\n",
                                               max_tokens=8))
    assert isinstance(result.text, str) and "\n" not in result.text
    assert 0 <= result.tokens <= 8
    assert result.finish_reason in ("stop", "length")
    assert result.prompt_tokens > 3 and result.total_ms > 0


def test_long_context_is_cut_to_fit(engine):
    prefix = "".join(f"value_{i} = {i}\n" for i in range(400))
    suffix = "".join(f"other_{i} = {i}\n" for i in range(400))
    prompt, _ = prompt_ids(engine, prefix, suffix, max_tokens=16)
    assert len(prompt) + 16 <= engine.context
    text = engine.tokenizer.decode(prompt)
    assert "value_399 = 399\n" in text and "other_0 = 0\n" in text      # nearest the cursor kept
    assert "value_0 = 0\n" not in text and "other_399" not in text       # farthest dropped
    result = engine.complete(CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=16))
    assert result.prompt_tokens + 16 <= engine.context


def test_context_from_other_files_keeps_its_share_of_a_long_file(engine):
    prefix = "".join(f"value_{i} = {i}\n" for i in range(400))
    extra = (("far.py", "def far_away():\n    pass\n"), ("near.py", "def nearest():\n    pass\n"))
    made = engine.prompt(CompletionRequest(prefix=prefix, suffix="\n", extra=extra,
                                           cursor_mode="none"), 16)
    text = engine.tokenizer.decode(made.ids)
    assert len(made.ids) + 16 <= engine.context
    assert "# far.py\ndef far_away():" in text and "# near.py\ndef nearest():" in text
    assert text.index("# near.py") < text.index("value_399 = 399")  # at the prefix's start
    assert text.index("# far.py") < text.index("# near.py")         # nearest the cursor last
    huge = (("huge.py", "x = 1\n" * 2000), *extra)                   # more than half the window
    text = engine.tokenizer.decode(engine.prompt(CompletionRequest(
        prefix=prefix, suffix="\n", extra=huge, cursor_mode="none"), 16).ids)
    assert "huge.py" not in text and "# near.py" in text and "value_399 = 399" in text


def test_encodings_kept_across_requests_give_the_same_prompts(model_dir, monkeypatch):
    """While a person types, the suffix's encodings come back request after request: an engine
    keeps the last ones (a bounded number), and the prompts are those of encoding afresh."""
    import tokenfill.completion.engine as completion

    monkeypatch.setattr(completion, "ENCODED_TEXTS", 8)
    engine = Engine.load(model_dir, dtype="fp32")
    suffix = "".join(f"other_{i} = {i}\n" for i in range(400))
    typed = "def total(values):\n    return sum(values)"
    for i in range(1, len(typed) + 1):
        prefix = "".join(f"value_{k} = {k}\n" for k in range(300)) + typed[:i]
        first = prompt_ids(engine, prefix, suffix, max_tokens=16, cursor_mode="exact")
        first[0].append(-1)  # a caller's change to its prompt reaches no later request
        kept = prompt_ids(engine, prefix, suffix, max_tokens=16, cursor_mode="exact")
        assert len(engine.encoded) <= 8
        engine.encoded.clear()
        afresh = prompt_ids(engine, prefix, suffix, max_tokens=16, cursor_mode="exact")
        assert kept == afresh and first[0][:-1] == afresh[0]


def test_special_token_text_in_the_file_is_not_a_control_token(engine):
    fim = engine.fim
    prompt, _ = prompt_ids(engine, "x = '<fim_middle>'\n<fim_suffix>", "<|endoftext|>", max_tokens=4)
    assert prompt.count(fim.middle) == 1 and prompt.count(fim.suffix) == 1
    assert engine.tokenizer.token_id("<|endoftext|>") not in prompt


def test_sampled_completions_are_reproducible(engine):
    s = Sampling(temperature=0.8, top_p=0.9, seed=3)
    a = engine.complete(CompletionRequest(prefix="import ", suffix="", max_tokens=10, sampling=s))
    b = engine.complete(CompletionRequest(prefix="import ", suffix="", max_tokens=10, sampling=s))
    assert a.text == b.text


def test_checkpoint_without_fim_tokens_is_refused(model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    family_tokenizer(["<s>", "</s>"]).save(tmp_path / "tokenizer.json")
    with pytest.raises(FimUnsupportedError, match="fill-in-the-middle"):
        Engine.load(tmp_path)


def test_bad_max_tokens(engine):
    with pytest.raises(ValueError, match="max_tokens"):
        engine.complete(CompletionRequest(prefix="x", suffix="", max_tokens=-1))


def test_slot_reuse_gives_the_same_completion_with_less_work(engine):
    from tokenfill.runtime.slots import SlotPool

    pool = SlotPool(engine.model, n_slots=2, max_seq=engine.context)
    prefix = "".join(f"name_{i} = {i}\n" for i in range(20)) + "def f(x):\n    return "
    fresh = engine.complete(CompletionRequest(prefix=prefix, suffix="\n", max_tokens=6))
    first = engine.complete(CompletionRequest(prefix=prefix, suffix="\n", max_tokens=6), slots=pool)
    typed = engine.complete(CompletionRequest(prefix=prefix + "x", suffix="\n", max_tokens=6),
                            slots=pool)   # one more keystroke
    again = engine.complete(CompletionRequest(prefix=prefix + "x", suffix="\n", max_tokens=6))
    assert first.text == fresh.text and typed.text == again.text
    assert first.prompt_evaluated == first.prompt_tokens
    assert typed.prompt_evaluated < typed.prompt_tokens // 4
    assert pool.stats.hits == 1
    off = engine.complete(CompletionRequest(prefix=prefix + "x", suffix="\n", max_tokens=6,
                                            reuse=False),
                          slots=pool)
    assert off.prompt_evaluated == off.prompt_tokens and off.text == again.text


def test_suffix_first_layout_reuses_the_suffix_while_typing(tmp_path, tiny_model, tokenizer):
    from tokenfill.runtime.checkpoint import save_model

    save_model(tiny_model, tmp_path, fim_layout="spm")
    tokenizer.save(tmp_path / "tokenizer.json")
    spm = Engine.load(tmp_path, dtype="fp32")
    assert spm.fim.layout == "spm"
    prompt, _ = prompt_ids(spm, "x = 1\n", "y = 2\n", max_tokens=4)
    assert prompt[:2] == [spm.fim.suffix, *tokenizer.encode("y = 2\n")][:2]
    assert prompt[-1] == spm.fim.middle
    suffix = "".join(f"name_{i} = {i}\n" for i in range(30))
    pool = SlotPool(spm.model, n_slots=1, max_seq=spm.context)
    spm.complete(CompletionRequest(prefix="def f(x):\n    return ", suffix=suffix, max_tokens=4,
                                   cursor_mode="none"),
                 slots=pool)
    typed = spm.complete(CompletionRequest(prefix="def f(x):\n    return x", suffix=suffix,
                                           max_tokens=4, cursor_mode="none"),
                         slots=pool)
    assert typed.prompt_evaluated <= 3 < len(tokenizer.encode(suffix))  # the suffix stayed cached
    fresh = spm.complete(CompletionRequest(prefix="def f(x):\n    return x", suffix=suffix,
                                           max_tokens=4, cursor_mode="none"))
    assert typed.text == fresh.text


def test_warm_up_fills_a_slot(engine):
    from tokenfill.runtime.slots import SlotPool

    pool = SlotPool(engine.model, n_slots=1, max_seq=engine.context)
    warm = engine.complete(CompletionRequest(prefix="import os\nimport sys\n", suffix="",
                                             max_tokens=0),
                           slots=pool)
    assert warm.text == "" and warm.tokens == 0
    after = engine.complete(CompletionRequest(prefix="import os\nimport sys\n", suffix="",
                                              max_tokens=4),
                            slots=pool)
    assert after.prompt_evaluated < after.prompt_tokens


def test_streamed_pieces_add_up_and_abort_stops(engine):
    pieces = []
    result = engine.complete(CompletionRequest(prefix="def f():\n    ", suffix="\n", max_tokens=20),
                             on_text=pieces.append)
    assert "".join(pieces) == result.text
    calls = []
    aborted = engine.complete(CompletionRequest(prefix="x = ", suffix="", max_tokens=20,
                                                single_line=False),
                              abort=lambda: calls.append(1) or len(calls) >= 2)
    assert aborted.finish_reason in ("aborted", "stop") and aborted.tokens <= 2


def test_model_vocab_larger_than_tokenizer_never_yields_unknown_ids(tiny_model):
    small = family_tokenizer(["<s>", "</s>"])
    assert small.vocab_size < tiny_model.config.vocab_size
    engine = Engine(tiny_model, small, require_fim=False)
    for seed in range(5):
        result = engine.complete(CompletionRequest(prefix="a = ", max_tokens=20,
                                                   sampling=Sampling(temperature=5.0, seed=seed)))
        assert isinstance(result.text, str)
    with pytest.raises(FimUnsupportedError, match="suffix"):
        engine.complete(CompletionRequest(prefix="a = ", suffix="b", max_tokens=2))
    empty = engine.complete(CompletionRequest(prefix="", max_tokens=2))  # an empty prompt is fine
    assert empty.finish_reason in ("stop", "length") and empty.prompt_tokens >= 1


def test_cursor_modes_take_back_the_end_of_the_prefix(engine):
    prefix = "def f(self):\n    return self.resu"
    plain, none = prompt_ids(engine, prefix, "\n", max_tokens=8, cursor_mode="none")
    exact, partial = prompt_ids(engine, prefix, "\n", max_tokens=8, cursor_mode="exact")
    healed, taken = prompt_ids(engine, prefix, "\n", max_tokens=8, cursor_mode="heal")
    assert none == b"" and partial == b"resu" and taken and b"resu".endswith(taken)
    text = engine.tokenizer.decode
    assert "self.resu" in text(plain) and "self.resu" not in text(exact) and "self." in text(exact)
    assert text(healed).replace("<fim_suffix>", taken.decode() + "<fim_suffix>", 1) == text(plain)
    with pytest.raises(ValueError, match="cursor_mode"):
        prompt_ids(engine, prefix, "", max_tokens=8, cursor_mode="fuzzy")


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_mode_streams_whole_text_within_limits(engine, mode, temperature):
    pieces = []
    result = engine.complete(CompletionRequest(prefix="x = {'key': 'val", suffix="}\n",
                                               max_tokens=12, cursor_mode=mode,
                                               sampling=Sampling(temperature=temperature, seed=1)),
                             on_text=pieces.append)
    assert "".join(pieces) == result.text and result.tokens <= 12
    assert "\ufffd" not in result.text
    assert (result.cursor_passes > 0) == (mode == "exact")


def test_exact_typing_a_word_reuses_the_whole_prompt(engine, monkeypatch):
    # after `os.` the monitor holds decoding to os's members: both runs must see its answer
    monkeypatch.setattr(engine.monitor, "timeout_s", 30.0)
    pool = SlotPool(engine.model, n_slots=1, max_seq=engine.context)
    engine.complete(CompletionRequest(prefix="import os\nprint(os.pa", suffix=")\n", max_tokens=4),
                    slots=pool)
    typed = engine.complete(CompletionRequest(prefix="import os\nprint(os.pat", suffix=")\n",
                                              max_tokens=4),
                            slots=pool)
    assert typed.prompt_evaluated == 1  # the partial word is not in the prompt: nothing changed
    fresh = engine.complete(CompletionRequest(prefix="import os\nprint(os.pat", suffix=")\n",
                                              max_tokens=4))
    assert typed.text == fresh.text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from(list("ab_ (=.\n\t\r0é✓日")), min_size=1, max_size=30),
       cut=st.integers(0, 30), mode=st.sampled_from(["exact", "heal", "none"]),
       temperature=st.sampled_from([0.0, 1.5]))
def test_any_cursor_gives_whole_characters(engine, text, cut, mode, temperature):
    """A cursor anywhere (after a multi-byte character, in CRLF or tab-indented text), a random
    model: the completion never holds a broken character."""
    cut = min(cut, len(text))
    result = engine.complete(CompletionRequest(prefix=text[:cut], suffix=text[cut:], max_tokens=10,
                                               cursor_mode=mode,
                                               sampling=Sampling(temperature=temperature, seed=cut)))
    assert "\ufffd" not in result.text


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
def test_speculative_completions_equal_plain_ones(engine, mode):
    """Greedy: the same text with or without speculation, in every cursor mode, with stop rules
    (a single line, a stop string) in the loop."""
    cases = [("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.", "\n", {}),
             ("for i in range(10):\n    pri", "\n", {"single_line": True}),
             ("def add(a, b):\n    return a + b\n\ndef add(", "", {"stop": (")",)}),
             ("x = {'key': 'val", "}\n", {})]
    for prefix, suffix, options in cases:
        plain = engine.complete(CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24,
                                                  cursor_mode=mode, speculative=False, **options))
        fast = engine.complete(CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24,
                                                 cursor_mode=mode, **options))
        assert fast.text == plain.text and fast.finish_reason == plain.finish_reason
        assert fast.by_drafter is not None and plain.by_drafter is None
        assert fast.accepted <= fast.drafted and fast.forwards <= plain.forwards


def test_syntax_declines_in_a_comment_unless_invoked(engine):
    skipped = engine.complete(CompletionRequest(prefix="x = 1  # the count of", suffix="\n",
                                                max_tokens=8))
    assert skipped.text == "" and skipped.tokens == 0 and "comment" in skipped.skipped
    asked = engine.complete(CompletionRequest(prefix="x = 1  # the count of", suffix="\n",
                                              max_tokens=8, invoked=True))
    assert not asked.skipped and asked.mode == "line" and "\n" not in asked.text
    raw = engine.complete(CompletionRequest(prefix="x = 1  # the count of", suffix="\n",
                                            max_tokens=8, syntax=False))
    assert not raw.skipped and raw.mode == ""
    warm = engine.complete(CompletionRequest(prefix="x = 1  # the count of", suffix="\n",
                                             max_tokens=0))  # warm-ups still fill
    assert not warm.skipped and warm.prompt_tokens > 0


def test_syntax_picks_a_block_after_an_opener_and_stops_early(engine, monkeypatch):
    monkeypatch.setattr(engine, "hold_end", False)  # raw decoding has no end guard either
    block = engine.complete(CompletionRequest(prefix="def add(a, b):", suffix="\n", max_tokens=24,
                                              cursor_mode="none"))
    assert block.mode == "block"
    raw = engine.complete(CompletionRequest(prefix="def add(a, b):", suffix="\n", max_tokens=24,
                                            cursor_mode="none", syntax=False))
    assert raw.text.startswith(block.text) and block.tokens <= raw.tokens


@pytest.mark.parametrize("speculative", [False, True])
def test_the_end_guard_holds_the_end_token_until_the_unit_can_be_complete(engine, monkeypatch,
                                                                          speculative):
    output = engine.model.output
    end = sorted(engine.end_ids)

    def eager_to_end(x, inference=False):  # the model would end the middle at once, everywhere
        logits = output(x, inference)
        logits[..., end] += 1000.0
        return logits

    monkeypatch.setattr(engine.model, "output", eager_to_end)

    def complete(prefix: str, suffix: str, syntax: bool = True):
        return engine.complete(CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=12,
                                                 cursor_mode="none", syntax=syntax,
                                                 speculative=speculative))

    assert complete("def add(a, b):", "\n", syntax=False).text == ""
    held = complete("def add(a, b):", "\n")  # a body is due: the end token waits
    assert held.text.strip() and held.tokens > 0
    assert complete("x = compute(1)", "\n").text == ""  # already a whole statement: it may end
    monkeypatch.setattr(engine, "hold_end", False)
    assert complete("def add(a, b):", "\n").text == ""


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
def test_the_monitor_gets_the_file_and_project_in_every_cursor_mode(engine, monkeypatch, mode):
    seen = []

    def members(prefix, suffix, context, path=None, project=None):
        seen.append((path, project))
        return ("path", "pardir")

    monkeypatch.setattr(engine.monitor, "members", members)
    result = engine.complete(CompletionRequest(prefix="import os\nos.pa", suffix="\n",
                                               max_tokens=4, cursor_mode=mode,
                                               path="/work/pkg/mod.py", project="/work"))
    assert seen == [("/work/pkg/mod.py", "/work")]
    assert result.members == 2


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
def test_a_very_long_word_at_the_cursor_is_completed_not_refused(engine, mode):
    """A 40,000-character word once asked the exact cursor for more room than the context has."""
    result = engine.complete(CompletionRequest(prefix="x = " + "ab" * 20_000, max_tokens=4,
                                               cursor_mode=mode))
    assert result.finish_reason in ("stop", "length") and result.prompt_tokens <= engine.context


def test_a_workspace_table_drafts_for_the_requests_that_name_its_workspace(engine, tokenizer):
    code = "def add(a, b):\n    return a + b\n\n\nresult = add(1, 2)\n" * 4
    table = ngrams.count([tokenizer.encode(code)], min_count=2, min_share=0.3)
    request = CompletionRequest(prefix="def add(a, b):\n    return", suffix="\n", max_tokens=16,
                                cursor_mode="none", project="/work/ws")
    plain = engine.complete(request)
    engine.workspace_tables["/work/ws"] = table
    try:
        drafted = engine.complete(request)
        elsewhere = engine.complete(replace(request, project="/work/other"))
    finally:
        engine.workspace_tables.clear()
    assert drafted.text == plain.text == elsewhere.text  # lossless, whatever is drafted
    assert "workspace" in (drafted.by_drafter or {})
    assert "workspace" not in (elsewhere.by_drafter or {})
