"""Tokenizers from `tokenizer.json` (the `tokenizers` library), and training the bundled one.

Text in, ids out, and back. User text is always encoded as plain text: special-token strings such
as `<fim_middle>` or `<|endoftext|>` inside code become ordinary tokens, never control tokens.
Control tokens are only ever added by id (see fim.py). `token_bytes` gives the exact bytes of
every token, for UTF-8-safe streaming and byte-level work.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from functools import cache, cached_property
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

# Pretokenizer of the bundled tokenizer: identifiers (underscores included) with one leading space,
# numbers in runs of up to 3 digits, punctuation runs, and whitespace (a newline and the following
# indentation stay one piece, and the last space before a word joins the word).
PRETOKENIZE_PATTERN = r" ?[\p{L}_][\p{L}\p{N}_]*| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+"
STARCODER_SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
# StarCoder2's repository tokens (fim.py lays out other files' context with them), appended after
# the trained vocabulary so that adding them to a trained tokenizer moves no other id
REPOSITORY_SPECIALS = ["<file_sep>", "<repo_name>"]


def _bytelevel_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes, inverted: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


@cache
def _bytelevel_encoder() -> dict[int, str]:
    return {b: c for c, b in _bytelevel_decoder().items()}


class Tokenizer:
    """A `tokenizers.Tokenizer` that keeps user text plain and knows each token's bytes."""

    def __init__(self, tok: HFTokenizer):
        self._tok = tok
        self._tok.encode_special_tokens = True  # special-token text in user input stays text
        self._decoder_kind = self._detect_decoder(json.loads(tok.to_str()).get("decoder"))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}: a checkpoint directory needs one")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self._tok.encode_special_tokens = False  # not a property of the saved file
        self._tok.save(str(path))
        self._tok.encode_special_tokens = True

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled exactly `text` (special tokens included), or None."""
        return self._tok.token_to_id(text)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as plain text: no BOS/EOS added, special-token strings not recognised."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_piece(self, data: bytes) -> list[int] | None:
        """Ids of raw bytes taken as one pretokenizer piece, even where they end inside a character
        (a byte-level BPE can cut one); None for tokenizers without byte-level pieces."""
        if self._decoder_kind != "bytelevel":
            return None
        chars = _bytelevel_encoder()
        return [t.id for t in self._tok.model.tokenize("".join(chars[b] for b in data))]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (invalid UTF-8, e.g. half a character, becomes U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.token_bytes
        return b"".join(table[i] for i in ids)

    def pretokenize(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character spans of the pieces the pretokenizer cuts `text` into."""
        pre = self._tok.pre_tokenizer
        if pre is None:
            return [(0, len(text))]
        return [span for _, span in pre.pre_tokenize_str(text)]

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (special tokens: their text)."""
        vocab = self._tok.get_vocab(with_added_tokens=True)
        table = [b""] * (max(vocab.values()) + 1)
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        byte_of = _bytelevel_decoder()
        for piece, i in vocab.items():
            if piece in added:
                table[i] = piece.encode()
            elif self._decoder_kind == "bytelevel":
                table[i] = bytes(byte_of[c] for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                table[i] = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
            else:
                table[i] = piece.replace("\u2581", " ").encode()
        return table

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of added (control) tokens: never part of a text's encoding."""
        return frozenset(self._tok.get_added_tokens_decoder())

    @cached_property
    def whole_pieces(self) -> list[bool | None]:
        """Per token: is its text one pretokenizer piece that encodes as this token alone?
        (None where the text is not whole UTF-8 characters, or for special tokens.)"""
        table, out = self.token_bytes, [None] * len(self.token_bytes)
        texts = {}
        for i, data in enumerate(table):
            if data and i not in self.special_ids:
                try:
                    texts[i] = data.decode()
                except UnicodeDecodeError:
                    continue
        ids = list(texts)
        for i, enc in zip(ids, self.encode_batch([texts[i] for i in ids])):
            out[i] = enc == [i] and len(self.pretokenize(texts[i])) == 1
        return out

    @cached_property
    def first_chars(self) -> list[str | None]:
        """Per token: the first character its bytes spell (None where they start inside one)."""
        return [first_char(data) for data in self.token_bytes]

    @cached_property
    def prefix_index(self) -> PrefixIndex:
        """Ordinary tokens sorted by their bytes, to find every token that starts with some bytes."""
        table = self.token_bytes
        return PrefixIndex([(table[i], i) for i in range(len(table))
                            if table[i] and i not in self.special_ids])

    @staticmethod
    def _detect_decoder(spec: dict | None) -> str:
        """'bytelevel' (GPT-2 style byte stand-ins) or 'metaspace' (sentencepiece style)."""
        return "metaspace" if spec and "ByteLevel" not in json.dumps(spec) else "bytelevel"


def first_char(data: bytes) -> str | None:
    """The character that `data` starts with, or None when it starts inside one (or is empty)."""
    for n in range(1, min(4, len(data)) + 1):
        try:
            return data[:n].decode()
        except UnicodeDecodeError:
            continue
    return None


class PrefixIndex:
    """Tokens sorted as byte strings: those starting with `p` are one contiguous run."""

    def __init__(self, entries: list[tuple[bytes, int]]):
        entries.sort()
        self.keys = [b for b, _ in entries]
        self.ids = [i for _, i in entries]
        self.by_bytes = dict(entries)

    def starting_with(self, prefix: bytes) -> list[int]:
        """Ids of the tokens whose bytes start with `prefix` (every token for b"")."""
        lo = bisect.bisect_left(self.keys, prefix)
        stripped = prefix.rstrip(b"\xff")
        if stripped:  # the first string past the run: the last byte that can grow, grown
            hi = bisect.bisect_left(self.keys, stripped[:-1] + bytes([stripped[-1] + 1]), lo)
        else:  # b"" or all 0xff: the run goes to the end
            hi = len(self.keys)
        return self.ids[lo:hi]

    def prefixes_of(self, data: bytes) -> list[int]:
        """Ids of the tokens whose bytes are a non-empty prefix of `data` (shortest first)."""
        return [i for k in range(1, len(data) + 1) if (i := self.by_bytes.get(data[:k])) is not None]


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = True,
              repository_tokens: bool = False) -> Tokenizer:
    """A byte-level BPE tokenizer for code with StarCoder-style FIM tokens (ids 0-4), and with
    `repository_tokens` StarCoder2's `<file_sep>` and `<repo_name>` after the vocabulary."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=STARCODER_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=progress)
    tok.train_from_iterator(texts, trainer)
    if repository_tokens:
        with_repository_tokens(tok)
    return Tokenizer(tok)


def with_repository_tokens(tok: HFTokenizer) -> HFTokenizer:
    """`tok` with REPOSITORY_SPECIALS appended (those it lacks), in place."""
    missing = [t for t in REPOSITORY_SPECIALS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok
