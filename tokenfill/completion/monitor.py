"""Monitor-guided identifiers: after `name.`, decoding is held to the attributes `name` has.

`Monitor.members` asks jedi (static analysis on the buffer, with the project's root on its path
when known) for the completions right after the dot. Answers are cached per document version (the
text up to the dot and the text after the cursor), and a lookup that outlasts its time budget
leaves decoding free while it finishes in the background, so the next keystroke finds it cached.

`MemberConstraint` then allows only the tokens that keep the identifier after the dot a prefix of
some member, or that finish a member and go on with a character that cannot be part of a name
(the constraint is then done). When jedi finds nothing, or what the cursor already holds matches
no member, decoding is free: the monitor only ever narrows the choice when it knows the answer.
"""

from __future__ import annotations

import functools
import keyword
import logging
import queue
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch
from torch import Tensor

from tokenfill.completion.syntax import CursorContext
from tokenfill.runtime.tokenizer import Tokenizer

IDENT_TAIL = re.compile(rb"[A-Za-z0-9_\x80-\xff]*\Z")


def is_name_byte(b: int) -> bool:
    return b == 0x5F or 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or b >= 0x80


@functools.lru_cache(maxsize=8)
def name_breaks(tokenizer: Tokenizer) -> Tensor:
    """(vocab,) bool: the tokens that cannot continue a name (the special ones among them),
    worked out once per tokenizer."""
    return torch.tensor([not (b and is_name_byte(b[0])) or i in tokenizer.special_ids
                         for i, b in enumerate(tokenizer.token_bytes)])


def lookup(code: str, line: int, column: int, path: str | None, project: str | None) -> tuple[str, ...]:
    """The names jedi completes at (line, column) of `code`: the members after a dot there."""
    import jedi

    script = jedi.Script(code=code, path=path,
                         project=jedi.Project(project) if project else None)
    names = {c.name for c in script.complete(line, column)}  # (asking each one's type is slow)
    return tuple(sorted(n for n in names if n.isidentifier() and not keyword.iskeyword(n)))


class DaemonWorker:
    """Runs submitted calls one at a time on a daemon thread: a lookup still running when the
    process exits is dropped, never waited for (a thread pool's workers are joined at exit)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[Future, object, tuple]] = queue.Queue()
        threading.Thread(target=self._run, name="monitor", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(e)


log = logging.getLogger("tokenfill.monitor")


def line_of(head: str) -> int:
    return head.count("\n") + 1


class Monitor:
    def __init__(self, timeout_s: float = 0.2, max_documents: int = 64):
        self.timeout_s = timeout_s
        self.max_documents = max_documents
        self.cache: OrderedDict[tuple, tuple[str, ...]] = OrderedDict()
        self.pending: dict[tuple, Future] = {}
        self.pool = DaemonWorker()  # one thread: jedi is not thread-safe
        self.lock = threading.RLock()  # a done future runs its callback at once, lock held
        self.lookups = self.timeouts = self.hits = 0

    def warm_up(self) -> None:
        """Load jedi and its stubs in the background (the first lookup takes seconds)."""
        self.pool.submit(lookup, "import os\nos.", 2, 3, None, None)

    def members(self, prefix: str, suffix: str, ctx: CursorContext, path: str | None = None,
                project: str | None = None) -> tuple[str, ...]:
        """The attributes that can follow the dot before the cursor; () when unknown in time."""
        if not ctx.after_dot:
            return ()
        head = prefix[:len(prefix) - len(ctx.partial)]  # the text up to and including the dot
        key = (path, project, hash(head), hash(suffix))
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                self.hits += 1
                return self.cache[key]
            future = self.pending.get(key)
            if future is None:
                line = head.count("\n") + 1
                column = len(head) - (head.rfind("\n") + 1)
                future = self.pool.submit(lookup, head + suffix, line, column, path, project)
                future.add_done_callback(functools.partial(self._store, key))
                self.pending[key] = future
                self.lookups += 1
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.timeouts += 1
            return ()
        except Exception as e:  # noqa: BLE001 - jedi fails on some code; decoding then goes free
            log.warning("member lookup failed at line %d of %s: %s: %s", line_of(head),
                        path or "the document", type(e).__name__, e)
            return ()

    def _store(self, key: tuple, future: Future) -> None:
        with self.lock:
            self.pending.pop(key, None)
            if future.exception() is not None:
                return
            self.cache[key] = future.result()
            while len(self.cache) > self.max_documents:
                self.cache.popitem(last=False)


class NameSpelling:
    """The name after the dot as decoding spells it: the bytes so far (`typed`, from the text
    `before` decoding), and `done` once a token leaves the name."""

    def __init__(self, tokenizer: Tokenizer, before: bytes):
        self.tokenizer = tokenizer
        self.index, self.table = tokenizer.prefix_index, tokenizer.token_bytes
        self.special = tokenizer.special_ids
        self.typed = IDENT_TAIL.search(before).group(0)  # the name's bytes so far
        self.done = False

    def toward(self, rest: bytes) -> list[int]:
        """The tokens that spell on towards a name whose untyped `rest` is not empty: a prefix
        of it, or all of it followed by bytes that cannot be part of a name."""
        return self.index.prefixes_of(rest) + [
            i for i in self.index.starting_with(rest)
            if len(self.table[i]) > len(rest) and not is_name_byte(self.table[i][len(rest)])]

    def advance(self, token: int) -> None:
        data = self.table[token]
        if token in self.special or any(not is_name_byte(b) for b in data):
            self.done = True
        else:
            self.typed += data


class MemberConstraint(NameSpelling):
    """Decoding constraint (generate.choose): the name after the dot must be one of `members`."""

    def __init__(self, tokenizer: Tokenizer, members: tuple[str, ...], before: bytes):
        super().__init__(tokenizer, before)
        self.members = [m.encode() for m in members]

    def allowed(self) -> Tensor | None:
        """(vocab,) bool: the tokens the next one may be, or None once the name is settled."""
        if self.done:
            return None
        typed = self.typed
        candidates = [m for m in self.members if m.startswith(typed)]
        if not candidates:  # the text already left the members: say nothing
            self.done = True
            return None
        mask = torch.zeros(len(self.table), dtype=torch.bool)
        ids: list[int] = []
        for m in candidates:
            rest = m[len(typed):]
            if not rest:  # a whole member: anything that is not more name may follow
                mask |= name_breaks(self.tokenizer)
                continue
            ids += self.toward(rest)
        mask[ids] = True
        return mask
