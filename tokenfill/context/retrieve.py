"""What the workspace index puts in the prompt for one cursor, within a token budget.

Two kinds of context, in this order of priority:
1. Definitions of the names the code around the cursor uses that the workspace defines (the
   functions, classes and methods it imports or calls: the API it is writing against, as LANCE
   found most useful): their signatures and docstring's first line, or a whole small class.
2. Chunks like the code around the cursor: BM25 over identifiers (FTS5), re-ranked by Jaccard
   similarity of identifier sets with the cursor's window, recently used files first; a chunk
   nearly equal to one already taken is passed over.
The file being completed is never retrieved (its live text is the prompt), nor a chunk the
prompt already holds (a request that does not name its file). Chunks are given to the engine as
(path, text) pairs (`CompletionRequest.extra`), which it places before the prefix in its model
family's layout and cuts first when the context window is short.

While a person types, the identifiers around the cursor barely change; when they are nearly the
same as at the last retrieval for that file (`STICKY`) and the index has not changed since, the
same pieces are given again, so the prompt's head stays the same and its KV cache is reused.
"""

from __future__ import annotations

import builtins
import keyword
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tokenfill.context.index import IDENTIFIER, Chunk, WorkspaceIndex

WINDOW_BEFORE, WINDOW_AFTER = 40, 10     # lines around the cursor that make the query
COMMON = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "cls", "args", "kwargs"}
SMALL_CLASS_LINES = 25                   # a class this short goes in whole, not as a signature
NEAR_DUPLICATE = 0.8
PARTIAL_WORD = re.compile(r"[A-Za-z0-9_]+\Z")
MAX_REMEMBERED = 64                      # files whose last retrieval is kept
STICKY = 0.9                             # window similarity at which the last pieces are kept


@dataclass(frozen=True)
class Retrieved:
    pieces: tuple[tuple[str, str], ...] = ()   # (path, text), in prompt order
    tokens: int = 0
    ms: float = 0.0
    definitions: int = 0
    similar: int = 0
    reused: bool = False                 # the same pieces as the last retrieval for this file

    @property
    def chunks(self) -> int:
        return len(self.pieces)


def query_window(prefix: str, suffix: str) -> set[str]:
    """The names around a cursor that make the query: lines before it and after it, less the
    word being typed (not a name yet; leaving it out keeps the query still while typing)."""
    before = PARTIAL_WORD.sub("", "\n".join(prefix.split("\n")[-WINDOW_BEFORE:]))
    after = "\n".join(suffix.split("\n")[:WINDOW_AFTER])
    return identifiers(before + "\n" + after)


def assemble(defined: Sequence[Chunk], similar: Sequence[Chunk], count_tokens: Callable[[str], int],
             budget: int, prompt: str | None = None) -> tuple[list[tuple[str, str]], int, int, int]:
    """The pieces for a prompt from ranked candidates: definitions first (a signature, or a small
    class whole), then similar chunks whole, within `budget` tokens, passing over a chunk taken
    already, one nearly equal to a piece taken, and one whose text `prompt` holds. Returns the
    pieces in prompt order (the most relevant last, nearest the cursor), the tokens they take,
    and how many of each kind were taken. Training builds its samples' context with it too."""
    pieces: list[tuple[str, str]] = []
    taken: list[set[str]] = []
    seen: set[tuple[str, int]] = set()
    used = 0

    def take(chunk: Chunk, text: str) -> bool:
        nonlocal used
        ids = identifiers(text)
        key = (chunk.path, chunk.start_line)
        if key in seen or any(jaccard(ids, t) >= NEAR_DUPLICATE for t in taken):
            return False
        if prompt is not None and text.strip() in prompt:
            return False
        cost = count_tokens(f"# {chunk.path}\n{text}\n\n")
        if used + cost > budget:
            return False
        pieces.append((chunk.path, text))
        taken.append(ids)
        seen.add(key)
        used += cost
        return True

    definitions = 0
    for chunk in defined:
        small = chunk.kind == "class" and chunk.end_line - chunk.start_line < SMALL_CLASS_LINES
        definitions += take(chunk, chunk.text if small or not chunk.signature else chunk.signature)
    similar_n = 0
    for chunk in similar:
        if used >= budget:
            break
        similar_n += take(chunk, chunk.text)
    pieces.reverse()
    return pieces, used, definitions, similar_n


def identifiers(text: str) -> set[str]:
    return {w for w in IDENTIFIER.findall(text) if w not in COMMON and len(w) > 1}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


@dataclass
class Retriever:
    index: WorkspaceIndex
    count_tokens: Callable[[str], int]
    budget: int = 512                    # prompt tokens the context may take
    candidates: int = 24                 # BM25 hits re-ranked
    recent: list[str] = field(default_factory=list)  # relative paths, most recent first
    # per file: the index's version, the window's identifiers and what was retrieved, last time
    last: dict[str, tuple[int, set[str], Retrieved]] = field(default_factory=dict)

    def touch(self, path: str) -> None:
        """A file was opened or edited: its chunks rank first among equals."""
        rel = self.index.relative(path)
        if rel is not None:
            self.recent = [rel, *[p for p in self.recent if p != rel]][:20]

    def retrieve(self, prefix: str, suffix: str, path: str | None = None) -> Retrieved:
        start = time.perf_counter()
        exclude = self.index.relative(path) if path else None
        window = query_window(prefix, suffix)
        version = self.index.version
        previous = self.last.get(exclude or "")
        if previous is not None and previous[0] == version and jaccard(previous[1], window) >= STICKY:
            return replace(previous[2], ms=(time.perf_counter() - start) * 1000, reused=True)
        defined = sorted(self.index.definitions(sorted(window), exclude=exclude),
                         key=self._rank)
        hits = self.index.search(sorted(window), exclude=exclude, limit=self.candidates)
        similar = sorted((chunk for chunk, _ in hits),
                         key=lambda c: (-jaccard(identifiers(c.text), window), self._rank(c)))
        pieces, used, definitions, similar_n = assemble(
            defined, similar, self.count_tokens, self.budget,
            prompt=prefix + suffix if exclude is None else None)
        got = Retrieved(tuple(pieces), used, (time.perf_counter() - start) * 1000, definitions,
                        similar_n)
        if len(self.last) >= MAX_REMEMBERED:
            self.last.pop(next(iter(self.last)))
        self.last[exclude or ""] = (version, window, got)
        return got

    def _rank(self, chunk: Chunk) -> int:
        return self.recent.index(chunk.path) if chunk.path in self.recent else len(self.recent)

