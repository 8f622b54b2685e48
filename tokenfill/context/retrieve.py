"""What the workspace index puts in the prompt for one cursor, within a token budget.

Two kinds of context, in this order of priority:
1. Definitions of the names the code around the cursor uses that the workspace defines (the
   functions, classes and methods it imports or calls: the API it is writing against, as LANCE
   found most useful): their signatures and docstring's first line, or a whole small class.
2. Chunks like the code around the cursor: BM25 over identifiers (FTS5), re-ranked by Jaccard
   similarity of identifier sets with the cursor's window, recently used files first; a chunk
   nearly equal to one already taken is passed over.
The file being completed is never retrieved (its live text is the prompt). Chunks are given to
the engine as (path, text) pairs (`CompletionRequest.extra`), which it places before the prefix
under `# path` headers and cuts first when the context window is short.
"""

from __future__ import annotations

import builtins
import keyword
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenfill.context.index import IDENTIFIER, Chunk, WorkspaceIndex

WINDOW_BEFORE, WINDOW_AFTER = 40, 10     # lines around the cursor that make the query
COMMON = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "cls", "args", "kwargs"}
SMALL_CLASS_LINES = 25                   # a class this short goes in whole, not as a signature
NEAR_DUPLICATE = 0.8


@dataclass(frozen=True)
class Retrieved:
    pieces: tuple[tuple[str, str], ...] = ()   # (path, text), in prompt order
    tokens: int = 0
    ms: float = 0.0
    definitions: int = 0
    similar: int = 0

    @property
    def chunks(self) -> int:
        return len(self.pieces)


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

    def touch(self, path: str) -> None:
        """A file was opened or edited: its chunks rank first among equals."""
        rel = self.index.relative(path)
        if rel is not None:
            self.recent = [rel, *[p for p in self.recent if p != rel]][:20]

    def retrieve(self, prefix: str, suffix: str, path: str | None = None) -> Retrieved:
        start = time.perf_counter()
        exclude = self.index.relative(path) if path else None
        before = "\n".join(prefix.split("\n")[-WINDOW_BEFORE:])
        after = "\n".join(suffix.split("\n")[:WINDOW_AFTER])
        window = identifiers(before + "\n" + after)
        pieces: list[tuple[str, str]] = []
        taken: list[set[str]] = []
        chunks_taken: set[tuple[str, int]] = set()
        used = 0

        def take(chunk: Chunk, text: str) -> bool:
            nonlocal used
            ids = identifiers(text)
            key = (chunk.path, chunk.start_line)
            if key in chunks_taken or any(jaccard(ids, t) >= NEAR_DUPLICATE for t in taken):
                return False
            cost = self.count_tokens(f"# {chunk.path}\n{text}\n\n")
            if used + cost > self.budget:
                return False
            pieces.append((chunk.path, text))
            taken.append(ids)
            chunks_taken.add(key)
            used += cost
            return True

        defined = self.index.definitions(sorted(window), exclude=exclude)
        definitions = 0
        for chunk in sorted(defined, key=lambda c: self._rank(c)):
            small = chunk.kind == "class" and chunk.end_line - chunk.start_line < SMALL_CLASS_LINES
            text = chunk.text if small or not chunk.signature else chunk.signature
            definitions += take(chunk, text)
        similar = 0
        hits = self.index.search(sorted(window), exclude=exclude, limit=self.candidates)
        scored = sorted(hits, key=lambda hit: (-jaccard(identifiers(hit[0].text), window),
                                               self._rank(hit[0])))
        for chunk, _ in scored:
            if used >= self.budget:
                break
            similar += take(chunk, chunk.text)
        # the prompt reads top to bottom: the most relevant piece nearest the cursor
        pieces.reverse()
        return Retrieved(tuple(pieces), used, (time.perf_counter() - start) * 1000,
                         definitions, similar)

    def _rank(self, chunk: Chunk) -> int:
        return self.recent.index(chunk.path) if chunk.path in self.recent else len(self.recent)


def budgeted(retriever: Retriever | None, prefix: str, suffix: str, path: str | None,
             extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[tuple[str, str], ...], Retrieved]:
    """The request's extra context with what the workspace adds (none without a retriever)."""
    if retriever is None:
        return tuple(extra), Retrieved()
    got = retriever.retrieve(prefix, suffix, path)
    return (*got.pieces, *extra), got
