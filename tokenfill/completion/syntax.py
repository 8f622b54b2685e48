"""Where the cursor is in incomplete Python: read from token types, since a syntax tree is rarely
available while someone types.

`analyze(prefix, suffix)` runs Python's own tokenizer (`tokenize`) over the prefix and recovers
from the errors incomplete code raises: an unterminated string is a string the cursor is inside,
an unfinished bracketed statement is an open-bracket stack. From the last tokens it reads whether
the cursor is in a comment, a string or f-string, an identifier or a number, after `.` or a
keyword, at the end of a block opener, or on a blank line, and from the suffix what it closes.
`decide` turns that into whether to complete and how much (one line or a block).

Limits: a single logical line is what the token types describe; the file's structure beyond it
(which block encloses the cursor) is read from indentation only. Only the last `WINDOW`
characters of the prefix are tokenized (tokenizing costs about 1 ms per kilobyte), from a line
that starts at the top level, where no bracket or string is open.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import textwrap
import tokenize
import warnings
from collections import Counter
from dataclasses import dataclass, field

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
BLOCK_KEYWORDS = frozenset({"def", "class", "if", "elif", "else", "for", "while", "with", "try",
                            "except", "finally", "async", "match", "case"})
STRING_START = re.compile(r"(?i)(?:[rbuf]|rb|br|fr|rf)?('''|\"\"\"|'|\")")
WINDOW = 8000
TOP_LEVEL_LINE = re.compile(r"\n(?=[A-Za-z_@])")
SKIP = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


@dataclass(frozen=True)
class Indentation:
    """How the file indents: one level is `unit` (a tab, or `width` spaces)."""
    unit: str = "    "

    @property
    def tabs(self) -> bool:
        return self.unit == "\t"

    @property
    def width(self) -> int:
        return 4 if self.tabs else len(self.unit)


@dataclass
class CursorContext:
    cursor_line: str                   # the prefix's last line (text before the cursor on its line)
    rest_of_line: str                  # the suffix up to its first newline
    in_comment: bool = False
    string: str | None = None          # the opening of the string the cursor is in: '"', "f'''", ...
    partial: str = ""                  # the identifier or number the cursor is inside (its start)
    in_number: bool = False
    after_dot: bool = False            # `name.` or `name.par|`: an attribute is being named
    receiver: str = ""                 # the expression before that dot, e.g. `self.items`
    after_keyword: str | None = None   # `return |`, `import |`: the keyword just before
    block_opener: bool = False         # the cursor ends a line such as `def f(x):`
    blank_line: bool = False           # nothing but indentation before and after the cursor
    indent: int = 0                    # columns of indentation of the cursor's line
    line_before: str = ""              # the last non-blank line before the cursor's
    line_after: str = ""               # the first non-blank line from the cursor on (its rest)
    open_brackets: list[str] = field(default_factory=list)  # innermost last
    suffix_closes: str = ""            # the open brackets (innermost first) the suffix closes
    indentation: Indentation = Indentation()

    @property
    def in_string(self) -> bool:
        return self.string is not None


def indent_width(line: str, tab: int = 4) -> int:
    ws = line[:len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(tab))


def detect_indentation(text: str) -> Indentation:
    """Tabs if lines indent with tabs more often than spaces; else the most common step in spaces."""
    tabs = spaces = 0
    steps: Counter[int] = Counter()
    previous = 0
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        ws = line[:len(line) - len(line.lstrip(" \t"))]
        tabs += ws.startswith("\t")
        spaces += ws.startswith(" ")
        width = len(ws.expandtabs(4))
        if width > previous and not ws.startswith("\t"):
            steps[width - previous] += 1
        previous = width
    if tabs > spaces:
        return Indentation("\t")
    step = next((s for s, _ in steps.most_common() if s in (2, 3, 4, 8)), 4)
    return Indentation(" " * step)


def _tokens(text: str) -> tuple[list[tokenize.TokenInfo], tokenize.TokenError | None]:
    """The tokens of `text` up to where tokenizing stopped, and the error that stopped it."""
    out: list[tokenize.TokenInfo] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            out.append(tok)
    except tokenize.TokenError as e:
        return out, e
    except (SyntaxError, ValueError):  # IndentationError and kin: what came before still counts
        return out, None
    return out, None


def _offsets(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _open_string(text: str, toks: list[tokenize.TokenInfo], error: tokenize.TokenError | None,
                 starts: list[int]) -> tuple[int, str] | None:
    """(offset, opening) of a string left open at the end of `text`, if any."""
    if error is not None and "string" in str(error.args[0]):  # a triple-quoted (or 3.12: any) string
        row, col = error.args[1]
        at = starts[row - 1] + col
        match = STRING_START.match(text, at)
        return (at, match.group(0)) if match else None
    last_line = text.rsplit("\n", 1)[-1]
    line_start = len(text) - len(last_line)
    for i, tok in enumerate(toks):  # 3.11: an unterminated quote is an ERRORTOKEN
        if tok.type == tokenize.ERRORTOKEN and tok.string in ("'", '"'):
            at = starts[tok.start[0] - 1] + tok.start[1]
            if at < line_start:
                continue  # a broken line above the cursor's: not the cursor's string
            before = toks[i - 1] if i else None
            if before is not None and before.type == tokenize.NAME and before.end == tok.start \
                    and re.fullmatch(r"(?i)[rbuf]|rb|br|fr|rf", before.string):
                at -= len(before.string)
            match = STRING_START.match(text, at)
            return (at, match.group(0)) if match else None
    return None


def _receiver(line: str) -> str:
    """The dotted expression that ends `line` (`self.items` in `x = self.items`), brackets kept."""
    depth, i = 0, len(line)
    while i > 0:
        c = line[i - 1]
        if c in ")]}":
            depth += 1
        elif c in "([{":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (c.isalnum() or c in "_."):
            break
        i -= 1
    return line[i:]


def analyze(prefix: str, suffix: str = "") -> CursorContext:
    """The cursor context at the end of `prefix`, with `suffix` after the cursor."""
    cursor_line = prefix.rsplit("\n", 1)[-1]
    rest = suffix.split("\n", 1)[0]
    before = prefix[:len(prefix) - len(cursor_line)].rstrip(" \t\n").rsplit("\n", 1)[-1]
    ctx = CursorContext(cursor_line=cursor_line, rest_of_line=rest,
                        indent=indent_width(cursor_line), line_before=before,
                        indentation=detect_indentation(prefix[-6000:] + suffix[:2000]))
    if len(prefix) > WINDOW:
        tail = prefix[-WINDOW:]
        top = TOP_LEVEL_LINE.search(tail)
        prefix = tail[top.end():] if top else tail[tail.find("\n") + 1:]
    starts = _offsets(prefix)
    toks, error = _tokens(prefix)
    string = _open_string(prefix, toks, error, starts)
    if string is not None:
        ctx.string = string[1]
        cut = string[0]
        toks = [t for t in toks if starts[t.start[0] - 1] + t.start[1] < cut]
    significant = [t for t in toks if t.type not in SKIP and t.type != tokenize.ERRORTOKEN
                   or (t.type == tokenize.ERRORTOKEN and t.string.strip())]
    ctx.open_brackets = _bracket_stack(significant)
    if string is None:
        _read_tail(ctx, prefix, significant, starts)
    ctx.blank_line = not cursor_line.strip() and not rest.strip() and string is None
    after = rest if rest.strip() else suffix.lstrip(" \t\n").split("\n", 1)[0]
    ctx.suffix_closes = _suffix_closes(ctx.open_brackets, after)
    ctx.line_after = rest if rest.strip() else next(
        (line for line in suffix.split("\n")[1:] if line.strip()), "")
    return ctx


def _bracket_stack(toks: list[tokenize.TokenInfo]) -> list[str]:
    stack: list[str] = []
    for t in toks:
        if t.type != tokenize.OP:
            continue
        if t.string in OPENERS:
            stack.append(t.string)
        elif t.string in CLOSERS and stack and stack[-1] == CLOSERS[t.string]:
            stack.pop()
    return stack


def _read_tail(ctx: CursorContext, prefix: str, toks: list[tokenize.TokenInfo],
               starts: list[int]) -> None:
    """What the last tokens of the prefix say about the cursor."""
    end = len(prefix)

    def offset_end(t: tokenize.TokenInfo) -> int:
        return starts[t.end[0] - 1] + t.end[1]

    if not toks:
        return
    last = toks[-1]
    touching = offset_end(last) == end
    if last.type == tokenize.COMMENT and "\n" not in prefix[starts[last.start[0] - 1]:]:
        ctx.in_comment = True
        return
    if touching and last.type == tokenize.NAME:
        ctx.partial = last.string
    elif touching and last.type == tokenize.NUMBER:
        ctx.partial, ctx.in_number = last.string, True
    # a partial identifier after a dot still names an attribute
    before = toks[-2] if ctx.partial and len(toks) > 1 else last if not ctx.partial else None
    if before is not None and before.type == tokenize.OP and before.string == "." \
            and (ctx.partial or touching) and not ctx.in_number:
        ctx.after_dot = True
        line = prefix[:starts[before.start[0] - 1] + before.start[1]].rsplit("\n", 1)[-1]
        ctx.receiver = _receiver(line)
    if not ctx.partial and last.type == tokenize.NAME and keyword.iskeyword(last.string):
        ctx.after_keyword = last.string
    # a block opener: the logical line starts with a compound keyword and ends with its colon
    if last.type == tokenize.OP and last.string == ":" and not ctx.open_brackets:
        line_toks = _logical_line(toks)
        if line_toks and line_toks[0].string in BLOCK_KEYWORDS and \
                not prefix[offset_end(last):].strip():
            ctx.block_opener = True


def _logical_line(toks: list[tokenize.TokenInfo]) -> list[tokenize.TokenInfo]:
    """The tokens since the last statement boundary (a NEWLINE at depth 0, or `;`)."""
    depth, start = 0, 0
    for i, t in enumerate(toks):
        if t.type == tokenize.OP and t.string in OPENERS:
            depth += 1
        elif t.type == tokenize.OP and t.string in CLOSERS:
            depth = max(depth - 1, 0)
        elif depth == 0 and t.type == tokenize.OP and t.string == ";":
            start = i + 1
        elif depth == 0 and i and t.start[0] > toks[i - 1].end[0] and \
                not toks[i - 1].line.rstrip().endswith("\\"):
            start = i
    return toks[start:]


def _suffix_closes(stack: list[str], rest: str) -> str:
    """The open brackets, innermost first, that the suffix's first line closes before it opens any."""
    closed, depth = [], len(stack)
    for c in rest:
        if c in " \t":
            continue
        if c in CLOSERS and depth and stack[depth - 1] == CLOSERS[c]:
            closed.append(c)
            depth -= 1
            continue
        if c in ",:" and closed:
            continue
        break
    return "".join(closed)


@dataclass(frozen=True)
class Decision:
    complete: bool
    mode: str          # "line" (the rest of the statement) or "block" (several lines)
    reason: str        # why not, or why this mode, in words


def decide(ctx: CursorContext, *, invoked: bool = False, lines_between: bool = True) -> Decision:
    """Whether to complete at this cursor, and how much. `invoked`: the person asked explicitly.
    `lines_between` off: a block wherever a line starts (only to measure what one line between
    statements changes)."""
    if ctx.in_comment and not invoked:
        return Decision(False, "line", "the cursor is in a comment")
    if ctx.partial and re.match(r"\w", ctx.rest_of_line) and not invoked:
        return Decision(False, "line", "the cursor is inside a word")
    if ctx.in_string:
        return Decision(True, "line", "inside a string: the rest of it")
    if ctx.block_opener and not ctx.rest_of_line.strip():
        return Decision(True, "block", "after a block opener: its body")
    at_line_start = not ctx.cursor_line.strip() and ctx.rest_of_line.strip()[:1] not in CLOSERS
    if (ctx.blank_line or at_line_start) and lines_between and between_statements(ctx):
        return Decision(True, "line", "between statements: one line")
    if ctx.blank_line:
        return Decision(True, "block", "on an empty line: the lines that belong here")
    if at_line_start:
        return Decision(True, "block", "at the start of a line: whole lines before its text")
    return Decision(True, "line", "the rest of the statement")


DEFINITION = re.compile(r"(?:async\s+def|def|class)\b|@")


def between_statements(ctx: CursorContext) -> bool:
    """Whether a line inserted at the cursor goes before code that carries on at its level or
    deeper: the next statement of the same block, or the body of a block the new line must then
    open. There a person adds a line to code that goes on, and a completion of several lines
    would write over what the next lines already do. At the end of a block, in an empty one, or
    before a new definition at the same level, several lines are welcome."""
    if not ctx.line_after.strip():
        return False
    opener = ctx.line_before.split("#", 1)[0].rstrip().endswith(":")
    level = indent_width(ctx.line_before) + (ctx.indentation.width if opener else 0)
    if ctx.cursor_line:  # the editor's indentation says where the new line goes
        if ctx.rest_of_line.strip():
            return False  # between indentation and text: what comes is not a line of its own
        level = ctx.indent
    after = indent_width(ctx.line_after)
    if after == level and DEFINITION.match(ctx.line_after.lstrip()):
        return False
    return after >= level


# Clauses that continue a compound statement: alone they do not parse, after their head they do.
CLAUSE_HEADS = {"elif": "if x:\n    pass\n", "else": "if x:\n    pass\n",
                "except": "try:\n    pass\n", "finally": "try:\n    pass\n"}


def statements_complete(code: str, *, opener_ok: bool = False) -> bool:
    """Whether `code`, whole lines at any common indentation, is one or more complete Python
    statements: every bracket and string closed, every block opener with a body (with
    `opener_ok`, a statement may also be one block opener's head, its body to come on later
    lines). A leading `elif`/`else`/`except`/`finally` clause or `case` counts as complete when
    its body is."""
    text = _dedent_first(code).strip("\n")
    if not text.strip():
        return False
    if opener_ok and text.rstrip().endswith(":"):
        text += "\n    pass"
    head = text.split(None, 1)[0].rstrip(":")
    attempts = [text]
    if head in CLAUSE_HEADS:
        attempts.append(CLAUSE_HEADS[head] + text)
    elif head == "case":
        attempts.append("match x:\n" + textwrap.indent(text, "    "))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in strings are not errors here
        for attempt in attempts:
            try:
                ast.parse(attempt)
                return True
            except (SyntaxError, ValueError):
                continue
    return False


def _dedent_first(code: str) -> str:
    """`code` moved left by its first non-blank line's indentation (lines inside brackets may sit
    further left: they lose what they have)."""
    lines = code.split("\n")
    first = next((line for line in lines if line.strip()), "")
    width = len(first) - len(first.lstrip(" \t"))
    return "\n".join(line[min(width, len(line) - len(line.lstrip(" \t"))):] for line in lines)


def fragment_closed(text: str) -> bool:
    """Whether `text`, a piece of a statement written inside brackets open before it, leaves no
    bracket or string of its own open."""
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.ERRORTOKEN and tok.string in ("'", '"'):
                return False  # an unterminated one-line string
            if tok.type == tokenize.OP and tok.string in OPENERS:
                depth += 1
            elif tok.type == tokenize.OP and tok.string in CLOSERS:
                depth -= 1
    except tokenize.TokenError as e:  # at the end: brackets not back to zero, or a string open
        return "string" not in str(e.args[0]) and depth <= 0
    except (SyntaxError, ValueError):
        return True   # indentation the fragment alone cannot judge: brackets decide
    return depth <= 0
