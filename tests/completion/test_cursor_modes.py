"""The cursor modes registry: what each mode takes back from the end of the prefix."""

from __future__ import annotations

import pytest

from tokenfill.completion.cursor_modes import CURSOR_MODES


def test_the_registry_names_each_mode_once():
    assert list(CURSOR_MODES) == ["exact", "heal", "none"]
    assert all(name == mode.name for name, mode in CURSOR_MODES.items())


@pytest.mark.parametrize("name", list(CURSOR_MODES))
def test_ids_and_taken_bytes_spell_the_prefix_again(tokenizer, name):
    prefix = "value = self.resu"
    ids, taken = CURSOR_MODES[name].cut(tokenizer, prefix, tokenizer.encode)
    assert tokenizer.decode_bytes(ids) + taken == prefix.encode()
    if name == "none":
        assert taken == b""
    elif name == "exact":
        assert taken == b"resu"  # the partial word, the prefix's last pretokenizer piece
    else:
        assert taken and b"resu".endswith(taken)


def test_only_the_exact_cursor_reserves_room(tokenizer):
    assert CURSOR_MODES["none"].reserve(tokenizer, "x = abc", 32) == 0
    assert CURSOR_MODES["heal"].reserve(tokenizer, "x = abc", 32) == 0
    assert CURSOR_MODES["exact"].reserve(tokenizer, "x = abc", 32) >= 32 + len("abc")
