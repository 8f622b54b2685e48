"""Where a completion ends, decided token by token inside the decode loop.

The line rule: when the cursor's line already has text before the cursor, complete that line
only. Otherwise complete a block: it ends before a blank line or before a line indented less than
the cursor's line (or less than `n_indent`, llama.cpp's option). A block that ends at a line
boundary keeps its last newline only when the text after the cursor sits on the cursor's line
(that text must then start on a line of its own). Stop strings end the completion where they
first occur (the string itself is dropped).

`committed()` is the part of the text no later token can take back, which is what a stream may
send: a cut only ever happens at a line start or at a stop string.
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


class StopRule:
    """Feed it each generated token id; it says when to stop and what text to keep."""

    def __init__(self, tokenizer: Tokenizer, prefix: str, suffix: str, *,
                 stop_strings: tuple[str, ...] = (), n_indent: int = 0, single_line: bool = False):
        self.token_bytes = tokenizer.token_bytes
        self.cursor_line = prefix.rsplit("\n", 1)[-1]
        self.single_line = single_line or self.cursor_line.strip() != ""
        self.keep_newline = suffix.split("\n", 1)[0] != ""
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.n_indent = n_indent
        self.data = b""
        self.cut: int | None = None  # characters of the generated text to keep, once decided
        self.matched = ""            # the stop string that ended the completion, if one did

    def __call__(self, token: int) -> bool:
        self.data += self.token_bytes[token]
        text = valid_utf8_prefix(self.data)
        line_cut, (string_cut, matched) = self.line_cut(text), self.string_cut(text)
        if string_cut is not None and (line_cut is None or string_cut < line_cut):
            self.cut, self.matched = string_cut, matched
        else:
            self.cut = line_cut
        return self.cut is not None

    def string_cut(self, text: str) -> tuple[int | None, str]:
        found = [(i, s) for s in self.stop_strings if (i := text.find(s)) >= 0]
        return min(found) if found else (None, "")

    def line_cut(self, text: str) -> int | None:
        if self.single_line:
            return text.find("\n") if "\n" in text else None
        lines = text.split("\n")
        first = self.cursor_line + lines[0]
        reference = indent_width(first) if first.strip() else indent_width(self.cursor_line)
        reference = max(reference, self.n_indent)
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

    def committed(self) -> str:
        """The longest head of text() that no later token can remove."""
        text = self.text()
        if self.cut is not None:
            return text
        safe = len(text)
        if not self.single_line and "\n" in text:
            safe = text.rindex("\n")  # the last line may still be cut, newline included
        for s in self.stop_strings:  # a stop string may be starting at the end
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return text[:safe]
