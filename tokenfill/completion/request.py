"""One completion request, typed and checked once, where it is built.

Every way in (the HTTP protocols, the language server, the command line, the eval harness) builds
a `CompletionRequest`; the worker's job carries it and `Engine.complete` reads it. A value that
cannot be right raises `RequestError`, which names the field, so a server answers 400 with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from tokenfill.completion.cursor_modes import CURSOR_MODES
from tokenfill.runtime.generate import Sampling

UNLIMITED_TOKENS = 256  # what a client's "no limit" (-1) means: the longest completion made
MAX_STOP_STRINGS = 16


class RequestError(ValueError):
    """A request field holds a value the engine cannot use; `field` names it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"field '{name}' {message}")
        self.field = name


def max_tokens_of(value: int) -> int:
    """A client's token limit: a negative one (llama.cpp's and Ollama's -1) means no limit of its
    own, which is `UNLIMITED_TOKENS`."""
    return UNLIMITED_TOKENS if value < 0 else value


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    prefix: str                                   # the text before the cursor
    suffix: str = ""                              # the text after it (needs a FIM model)
    path: str | None = None                       # the file's path, for resolving its imports
    project: str | None = None                    # the workspace root, likewise
    extra: tuple[tuple[str, str], ...] = ()       # (filename, text) from other files, as context
    max_tokens: int = 64                          # 0: only fill a KV slot (a warm-up)
    time_budget_ms: float | None = None           # end generation after this long
    min_confidence: float | None = None           # show at this gate score or more (None: the
                                                  # model's gate's threshold; 0: show all)
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()                    # stop strings, not part of the completion
    n_indent: int = 0                             # end at a line indented less than this
    single_line: bool = False                     # end at the first newline
    cursor_mode: str = "exact"                    # a cursor inside a token (cursor_modes.py)
    speculative: bool = True                      # decode by verified draft trees
    syntax: bool = True                           # syntax-aware decisions and stops
    invoked: bool = False                         # the person asked (complete in a comment too)
    reuse: bool = True                            # reuse a KV slot's cached prompt

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in _TEXT:
                value = getattr(self, f.name)
                if value is not None and not isinstance(value, str):
                    raise RequestError(f.name, "must be a string")
            elif f.name in _SWITCHES and not isinstance(getattr(self, f.name), bool):
                raise RequestError(f.name, "must be true or false")
        for name in ("prefix", "suffix", "path", "project"):
            _check_text(name, getattr(self, name))
        if not _is_int(self.max_tokens) or self.max_tokens < 0:
            raise RequestError("max_tokens", "must be an integer >= 0")
        if not _is_int(self.n_indent) or self.n_indent < 0:
            raise RequestError("n_indent", "must be an integer >= 0")
        budget = self.time_budget_ms
        if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool)
                                   or not math.isfinite(budget) or budget <= 0):
            raise RequestError("time_budget_ms", "must be a number > 0")
        confidence = self.min_confidence
        if confidence is not None and (not isinstance(confidence, (int, float))
                                       or isinstance(confidence, bool)
                                       or not math.isfinite(confidence)
                                       or not 0 <= confidence <= 1):
            raise RequestError("min_confidence", "must be a number from 0 to 1")
        if not isinstance(self.sampling, Sampling):
            raise RequestError("sampling", "must be a Sampling")
        if self.cursor_mode not in CURSOR_MODES:
            raise RequestError("cursor_mode", f"must be one of {', '.join(CURSOR_MODES)}, not "
                                              f"{self.cursor_mode!r}")
        if (not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS
                or not all(isinstance(s, str) and s for s in self.stop)):
            raise RequestError("stop", f"must be at most {MAX_STOP_STRINGS} non-empty strings")
        for s in self.stop:
            _check_text("stop", s)
        if not isinstance(self.extra, tuple):
            raise RequestError("extra", "must be a tuple of (filename, text) pairs")
        for i, chunk in enumerate(self.extra):
            if not (isinstance(chunk, tuple) and len(chunk) == 2
                    and all(isinstance(part, str) for part in chunk)):
                raise RequestError(f"extra[{i}]", "must be a (filename, text) pair of strings")
            _check_text(f"extra[{i}]", chunk[0] + chunk[1])


_TEXT = {"prefix", "suffix", "path", "project"}
_SWITCHES = {"single_line", "speculative", "syntax", "invoked", "reuse"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(name: str, value: str | None) -> None:
    """Text must be encodable: a lone surrogate (JSON's "\\ud800") is no character."""
    if value is None:
        return
    try:
        value.encode()
    except UnicodeEncodeError:
        raise RequestError(name, "holds a lone surrogate (not valid Unicode text)") from None
