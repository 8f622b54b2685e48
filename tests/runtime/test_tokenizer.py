"""Plain-text encoding of special-token strings, exact token bytes, the bundled pretokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfill.runtime.tokenizer import STARCODER_SPECIALS, Tokenizer, first_char


@pytest.mark.parametrize("special", STARCODER_SPECIALS)
def test_special_token_text_in_code_is_plain_text(tokenizer, special):
    special_id = tokenizer.token_id(special)
    assert special_id is not None
    code = f'marker = "{special}"  # {special}\n'
    ids = tokenizer.encode(code)
    assert special_id not in ids
    assert tokenizer.decode(ids) == code


def test_special_tokens_have_starcoder_ids(tokenizer):
    assert [tokenizer.token_id(t) for t in STARCODER_SPECIALS] == [0, 1, 2, 3, 4]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_decode_inverts_encode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")
    assert tokenizer.decode(ids) == text


def test_token_bytes_agree_with_the_library(tokenizer):
    for i in range(5, tokenizer.vocab_size):
        library = tokenizer._tok.decode([i], skip_special_tokens=False)
        ours = tokenizer.token_bytes[i]
        assert ours.decode("utf-8", errors="replace") == library or "\ufffd" in library


def test_pretokenizer_keeps_identifiers_and_indentation_whole(tokenizer):
    text = "    return self.resu_lt + 123456\n\n    x"
    pieces = [text[a:b] for a, b in tokenizer.pretokenize(text)]
    assert pieces == ["   ", " return", " self", ".", "resu_lt", " +", " 123", "456", "\n\n   ", " x"]


def test_save_and_load_round_trip(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path)
    text = "def f(<fim_middle>): pass"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.token_id("<fim_middle>") == tokenizer.token_id("<fim_middle>")


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_file(tmp_path)


def test_encode_piece_takes_raw_bytes_as_one_piece(tokenizer):
    for piece in ["self", " result", "\n    ", "日日", "123"]:
        assert tokenizer.encode_piece(piece.encode()) == tokenizer.encode(piece)
    cut = "日".encode()[:2]  # half a character: the library cannot encode it as text
    ids = tokenizer.encode_piece(cut)
    assert ids and tokenizer.decode_bytes(ids) == cut


def test_first_chars_name_each_tokens_first_character(tokenizer):
    assert first_char("é1".encode()) == "é" and first_char(b"\xa9x") is None and first_char(b"") is None
    table = tokenizer.token_bytes
    for t, c in enumerate(tokenizer.first_chars):
        data = table[t]
        if c is None:  # empty, or starting with bytes that are no whole character
            assert not data or data[0] >= 0x80
        else:
            assert data.startswith(c.encode())
    assert any(c is None for c in tokenizer.first_chars[5:])  # byte-level tokens cut characters
