"""Where a completion ends, decided token by token inside the decode loop.

The rule: when the cursor's line already has text before the cursor, complete that line only.
Otherwise complete a block: it ends before a blank line or before a line indented less than the
cursor's line. A block that ends at a line boundary keeps its last newline only when the text after
the cursor sits on the cursor's line (that text must then start on a line of its own).
"""

from __future__ import annotations

from .tokenizer import Tokenizer


def indent_width(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def valid_utf8_prefix(data: bytes) -> str:
    """The text of the longest prefix of `data` that is whole UTF-8 characters."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


class LineStop:
    """Feed it each generated token id; it says when to stop and what text to keep."""

    def __init__(self, tokenizer: Tokenizer, prefix: str, suffix: str):
        self.token_bytes = tokenizer.token_bytes
        self.cursor_line = prefix.rsplit("\n", 1)[-1]
        self.single_line = self.cursor_line.strip() != ""
        self.keep_newline = suffix.split("\n", 1)[0] != ""
        self.data = b""
        self.cut: int | None = None  # characters of the generated text to keep, once decided

    def __call__(self, token: int) -> bool:
        self.data += self.token_bytes[token]
        self.cut = self.find_cut(valid_utf8_prefix(self.data))
        return self.cut is not None

    def find_cut(self, text: str) -> int | None:
        if self.single_line:
            return text.find("\n") if "\n" in text else None
        lines = text.split("\n")
        first = self.cursor_line + lines[0]
        reference = indent_width(first) if first.strip() else indent_width(self.cursor_line)
        offset = len(lines[0]) + 1
        for k, line in enumerate(lines[1:], start=1):
            complete = k < len(lines) - 1
            blank_line = complete and not line.strip()
            dedent = line.strip() != "" and indent_width(line) < reference
            if blank_line or dedent:
                return offset if self.keep_newline else offset - 1
            offset += len(line) + 1
        return None

    def text(self) -> str:
        """The completion: cut where the rule stopped, or everything generated (whole characters)."""
        text = valid_utf8_prefix(self.data)
        return text if self.cut is None else text[:self.cut]
