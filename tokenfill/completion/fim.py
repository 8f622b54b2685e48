"""Fill-in-the-middle prompt formats, detected from a tokenizer's special tokens, and context fitting.

A format is a row in FORMATS: the token strings that mark prefix, suffix and middle, the tokens
that end a middle, and whether the prompt opens with the tokenizer's BOS. The prompt is built in
ids: control tokens are placed by id, user text is encoded as plain text, so `<fim_middle>` typed
in a file is just text.

Two layouts: prefix-suffix-middle (`psm`, what published checkpoints expect) and
suffix-prefix-middle (`spm`: `<suffix> S <prefix> P <middle>`, as tokenfill's recipe also trains).
A checkpoint picks one with `"fim_layout"` in its config.json; the bundled model uses `spm`, where
the prefix runs straight into the middle (measured in BENCHMARKS.md). It also suits typing: the
text that changes is at the end of the prompt, so a cached prompt is reused up to the cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenfill.runtime.tokenizer import Tokenizer


class FimUnsupportedError(ValueError):
    """The tokenizer has no fill-in-the-middle tokens of any known family."""


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix: str
    suffix: str
    middle: str | None              # None: the middle follows the last part directly (Codestral)
    stops: tuple[str, ...]          # tokens that end the middle (those missing from a vocab are skipped)
    bos: str | None = None          # token that opens every prompt, if the family uses one
    file_sep: str | None = None     # the family's token before each file of a repository
    repo_name: str | None = None    # the family's token before the repository's name
    requires: tuple[str, ...] = ()  # more tokens the vocabulary must hold for the format to match
    layout: str | None = None       # the only layout the family was trained on, if it has one


# Checked in this order; the first whose prefix, suffix and middle tokens all exist wins.
FORMATS: dict[str, FimFormat] = {f.name: f for f in [
    # CodeGemma shares Qwen2.5-Coder's three FIM tokens; its file separator tells them apart
    FimFormat("codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
              ("<|file_separator|>", "<eos>", "<|fim_prefix|>", "<|fim_suffix|>",
               "<|fim_middle|>"), bos="<bos>", requires=("<|file_separator|>",)),
    FimFormat("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
              ("<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|im_end|>",
               "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
              file_sep="<|file_sep|>", repo_name="<|repo_name|>"),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
              ("<|endoftext|>", "<fim_pad>", "<file_sep>", "<fim_prefix>", "<fim_suffix>",
               "<fim_middle>"), file_sep="<file_sep>", repo_name="<repo_name>"),
    FimFormat("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
              ("<｜end▁of▁sentence｜>", "<|EOT|>"), bos="<｜begin▁of▁sentence｜>"),
    FimFormat("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>", "</s>"), bos="<s>"),
    # Codestral: `[SUFFIX] suffix [PREFIX] prefix`, and the middle straight after
    FimFormat("codestral", "[PREFIX]", "[SUFFIX]", None, ("</s>",), bos="<s>", layout="spm"),
]}


LAYOUTS = ("psm", "spm")


@dataclass(frozen=True)
class FimTokens:
    """A format resolved against one tokenizer: the ids to build prompts with and to stop on."""
    format: FimFormat
    prefix: int
    suffix: int
    middle: int | None
    stops: frozenset[int]
    bos: int | None
    layout: str = "psm"
    file_sep: int | None = None
    repo_name: int | None = None

    def prompt(self, prefix_ids: list[int], suffix_ids: list[int],
               context: ContextIds | None = None) -> list[int]:
        """The prompt in this layout; the model writes the middle after it. Context from other
        files goes where `context` says: before the FIM tokens, or at the prefix's start."""
        head = [self.bos] if self.bos is not None else []
        if context is not None and context.ids:
            if context.before_fim:
                head = [*head, *context.ids]
            else:
                prefix_ids = [*context.ids, *prefix_ids]
        middle = [self.middle] if self.middle is not None else []
        if self.layout == "spm":
            return [*head, self.suffix, *suffix_ids, self.prefix, *prefix_ids, *middle]
        return [*head, self.prefix, *prefix_ids, self.suffix, *suffix_ids, *middle]

    @property
    def overhead(self) -> int:
        return 2 + (self.middle is not None) + (self.bos is not None)


def detect(tokenizer: Tokenizer, layout: str = "psm") -> FimTokens:
    """The FIM format the tokenizer's special tokens belong to; FimUnsupportedError if none."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown FIM layout {layout!r}; choose {' or '.join(LAYOUTS)}")
    for fmt in FORMATS.values():
        ids = [tokenizer.token_id(t) for t in (fmt.prefix, fmt.suffix)]
        ids.append(tokenizer.token_id(fmt.middle) if fmt.middle else None)
        needed = [*ids[:2], *(ids[2:] if fmt.middle else []),
                  *map(tokenizer.token_id, fmt.requires)]
        if None in needed:
            continue
        stops = frozenset(i for i in map(tokenizer.token_id, fmt.stops) if i is not None)
        bos = tokenizer.token_id(fmt.bos) if fmt.bos else None
        file_sep = tokenizer.token_id(fmt.file_sep) if fmt.file_sep else None
        repo_name = tokenizer.token_id(fmt.repo_name) if fmt.repo_name else None
        return FimTokens(fmt, *ids, stops=stops, bos=bos, layout=fmt.layout or layout,
                         file_sep=file_sep, repo_name=repo_name)
    looked_for = "; ".join(f"{f.name}: {f.prefix} {f.suffix} {f.middle or ''}".rstrip()
                           for f in FORMATS.values())
    raise FimUnsupportedError(
        "this checkpoint's tokenizer has no fill-in-the-middle tokens, so it cannot complete at a "
        f"cursor with a suffix. tokenfill needs a FIM-trained code model (looked for {looked_for})")


# How context from other files is laid out:
# - "auto": the family's repository layout where its tokenizer has a file separator (Qwen2.5-Coder:
#   `<|repo_name|>name\n<|file_sep|>path\ntext\n ... <|file_sep|>current path\n` before the FIM
#   tokens; StarCoder2: `<repo_name>name<file_sep>path\ntext ... <file_sep>`), else "comment";
# - "comment": each piece under a `# path` comment, at the prefix's start, as if the file began
#   with it (a model trained on single files has seen such text);
# - "bare": the pieces' text alone at the prefix's start (only to measure what the headers add).
CONTEXT_LAYOUTS = ("auto", "comment", "bare")


@dataclass(frozen=True)
class ContextIds:
    ids: list[int]
    before_fim: bool     # the family's repository layout: before the FIM tokens
    pieces: int = 0      # how many of the pieces given fitted


def context_ids(tokens: FimTokens | None, pieces: Sequence[tuple[str, str]],
                encode: Callable[[str], list[int]], room: int, *, layout: str = "auto",
                project: str | None = None, path: str | None = None) -> ContextIds:
    """The pieces (path, text), in prompt order, as ids in the layout, within `room` tokens:
    the pieces nearest the cursor (the last) are kept, those before them dropped first."""
    if layout not in CONTEXT_LAYOUTS:
        raise ValueError(f"unknown context layout {layout!r}; choose {', '.join(CONTEXT_LAYOUTS)}")
    family = (tokens.format.name if tokens is not None and tokens.file_sep is not None
              and layout == "auto" else None)
    open_ids: list[int] = []
    close_ids: list[int] = []
    if family is not None:
        newline = "\n" if family == "qwen2.5-coder" else ""
        if tokens.repo_name is not None and project:
            open_ids = [tokens.repo_name, *encode(Path(project).name + newline)]
        blocks = [[tokens.file_sep, *encode(f"{name}\n{text.rstrip()}{newline}")]
                  for name, text in pieces]
        current = _relative(path, project) if family == "qwen2.5-coder" and path else ""
        close_ids = [tokens.file_sep, *encode(f"{current}\n")] if current else [tokens.file_sep]
    elif layout == "bare":
        blocks = [encode(f"{text.rstrip()}\n\n") for _, text in pieces]
    else:
        blocks = [encode(f"# {name}\n{text.rstrip()}\n\n") for name, text in pieces]
    used = len(open_ids) + len(close_ids)
    kept: list[list[int]] = []
    for block in reversed(blocks):
        if used + len(block) > room:
            break
        kept.append(block)
        used += len(block)
    if not kept:
        return ContextIds([], family is not None)
    ids = [*open_ids, *(i for block in reversed(kept) for i in block), *close_ids]
    return ContextIds(ids, family is not None, len(kept))


def _relative(path: str, project: str | None) -> str:
    if project:
        try:
            return Path(path).relative_to(project).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()


def fit_context(prefix: str, suffix: str, count: Callable[[str], int], budget: int,
                prefix_share: float = 0.75) -> tuple[str, str]:
    """Cut prefix and suffix so that count(prefix) + count(suffix) <= budget.

    Keeps the text nearest the cursor, cut at line boundaries: whole lines are dropped from the
    start of the prefix and the end of the suffix. The prefix gets `prefix_share` of the budget and
    the suffix the rest; whatever one side does not need goes to the other. A single line longer
    than its side's budget is cut at characters as a last resort. Long texts are counted from the
    cursor outwards, a window at a time, so a large file costs about what its used part costs.
    """
    budget = max(budget, 0)
    n_pre = _count_upto(prefix, count, budget, from_end=True)
    n_suf = _count_upto(suffix, count, budget, from_end=False)
    if n_pre + n_suf <= budget:
        return prefix, suffix
    suffix_budget = max(budget - int(budget * prefix_share), budget - n_pre)
    suffix_budget = min(suffix_budget, n_suf)
    suffix = _keep_head(suffix, count, suffix_budget)
    prefix = _keep_tail(prefix, count, budget - count(suffix))
    return prefix, suffix


CHARS_PER_TOKEN = 4  # a first window's guess; windows double until they hold enough tokens


def _windows(text: str, budget: int):
    """Growing windows of `text`'s length, the last one the whole text."""
    window = max(64, budget * CHARS_PER_TOKEN)
    while window < len(text):
        yield window
        window *= 2
    yield len(text)


def _count_upto(text: str, count: Callable[[str], int], limit: int, from_end: bool) -> int:
    """count(text) when it is at most `limit`; otherwise a count over `limit` of a part of it."""
    for window in _windows(text, limit):
        n = count(text[len(text) - window:] if from_end else text[:window])
        if n > limit or window == len(text):
            return n
    return 0  # unreachable: the last window is the whole text


def _keep_tail(text: str, count: Callable[[str], int], budget: int) -> str:
    """The longest tail of `text` starting at a line start (or, failing that, any char) that fits."""
    for window in _windows(text, budget):  # the answer lies in the first window that overflows
        if window < len(text) and count(text[len(text) - window:]) <= budget:
            continue
        base = len(text) - window
        if window == len(text) and count(text) <= budget:
            return text
        starts = [i + 1 for i, c in enumerate(text) if c == "\n" and i >= base]  # line starts
        fits = _first_fit(starts, lambda i: count(text[i:]) <= budget)
        if fits is not None:
            return text[fits:]
        break
    # The cursor's own line is too long: cut inside it.
    last = text.rfind("\n") + 1
    chars = list(range(last, len(text) + 1))
    return text[_first_fit(chars, lambda i: count(text[i:]) <= budget):]


def _keep_head(text: str, count: Callable[[str], int], budget: int) -> str:
    """The longest head of `text` ending at a line end (or, failing that, any char) that fits."""
    for window in _windows(text, budget):
        if window < len(text) and count(text[:window]) <= budget:
            continue
        if window == len(text) and count(text) <= budget:
            return text
        ends = [i + 1 for i, c in enumerate(text[:window]) if c == "\n"][::-1]  # longest first
        fits = _first_fit(ends, lambda i: count(text[:i]) <= budget)
        if fits is not None:
            return text[:fits]
        break
    first_end = text.find("\n") + 1 or len(text)
    chars = list(range(first_end, -1, -1))
    return text[:_first_fit(chars, lambda i: count(text[:i]) <= budget)]


def _first_fit(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first candidate that fits, given that fitting is monotone along the list (binary search)."""
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo] if lo < len(candidates) else None
