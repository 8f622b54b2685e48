"""The model worker: a thread that runs queued completion jobs, one at a time (several threads
when the model runs on remote engines, which batch what they are sent).

Who runs next is the queue's business (first in, first out); how it runs is the engine's. A job
is aborted between two decode steps when its client goes away or when a newer job with the same
key arrives (the newer one supersedes it). Events go back to the asyncio loop that submitted the
job: ("text", piece) as text becomes final, then ("done", Completion) or ("error", message).
With workspaces (context/workspace.py), each job's request gets its workspace's context just
before it runs, so a job superseded while queued costs no retrieval either.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tokenfill.completion.engine import Completion, Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.context.retrieve import Retrieved
from tokenfill.context.workspace import Workspaces
from tokenfill.runtime.slots import SlotPool

log = logging.getLogger("tokenfill.worker")
_ids = itertools.count(1)


@dataclass
class Job:
    request: CompletionRequest
    key: str | None = None                   # jobs with the same key supersede each other
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    submitted: float = field(default_factory=time.perf_counter)
    queue_ms: float = 0.0
    retrieved: Retrieved | None = None       # the workspace context the request was given

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    def emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


@dataclass
class WorkerStats:
    completed: int = 0
    aborted: int = 0
    superseded: int = 0
    failed: int = 0
    declined: dict[str, int] = field(default_factory=dict)  # none made or shown, by the reason


class Worker:
    def __init__(self, engine: Engine, *, n_slots: int = 4, reuse: bool = True,
                 context: Workspaces | None = None, threads: int = 1):
        self.engine = engine
        self.context = context
        # remote engines keep their own prefix caches
        self.slots = (SlotPool(engine.model, n_slots, engine.context) if engine.model is not None
                      else None)
        self.reuse = reuse
        self.stats = WorkerStats()
        engine.monitor.warm_up()  # jedi's first lookup takes seconds: not on a person's keystroke
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._latest: dict[str, Job] = {}
        self._lock = threading.Lock()
        # one in-process model runs one job at a time; remote engines batch what they are sent
        # at once, so a worker for them runs `threads` jobs side by side
        self._retrieval = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"tokenfill-worker-{i}",
                                          daemon=True)
                         for i in range(threads if engine.remote is not None else 1)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        if job.key is not None:
            with self._lock:
                older = self._latest.get(job.key)
                self._latest[job.key] = job
            if older is not None and not older.cancelled.is_set():
                older.cancel("superseded")
                self._count("superseded")
        self._queue.put(job)

    def _count(self, outcome: str) -> None:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            job.queue_ms = (time.perf_counter() - job.submitted) * 1000
            try:
                if job.cancelled.is_set():  # cancelled while queued: no model time spent
                    self._count("aborted")
                    result = Completion.aborted()
                    log_job(job, result)
                    job.emit("done", result)
                    continue
                request = job.request if self.reuse else replace(job.request, reuse=False)
                if self.context is not None:
                    with self._retrieval:
                        request, job.retrieved = self.context.augment(request)
                result = self.engine.complete(request, slots=self.slots,
                                              abort=job.cancelled.is_set,
                                              on_text=lambda piece: job.emit("text", piece))
                if result.finish_reason == "aborted":
                    self._count("aborted")
                else:
                    self._count("completed")
                if result.skipped:
                    with self._lock:
                        declined = self.stats.declined
                        declined[result.skipped] = declined.get(result.skipped, 0) + 1
                log_job(job, result)
                job.emit("done", result)
            except Exception as e:  # contained: one bad job never stops the worker
                self._count("failed")
                log.exception("%s failed", job.id)
                job.emit("error", f"{type(e).__name__}: {e}")
            finally:
                if job.key is not None:
                    with self._lock:
                        if self._latest.get(job.key) is job:
                            del self._latest[job.key]
                if self._queue.empty():
                    release_memory()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the OS while idle. Requests free tensors of every size, and
    glibc keeps the freed pages: without this a busy server's resident memory creeps up."""
    if _TRIM is not None:
        _TRIM(0)


def log_job(job: Job, result: Completion) -> None:
    score = (f" confidence={result.confidence:.3f}{' (cut)' if result.cut else ''}"
             if result.confidence is not None else "")
    if result.skipped:
        log.info("%s completion: none, %s:%s queue=%.1fms engine=%.1fms (%d tokens)", job.id,
                 result.skipped, score, job.queue_ms, result.total_ms, result.tokens)
        return
    got = job.retrieved
    context = (f" context={got.chunks} chunks/{got.tokens} tokens ({got.definitions} definitions, "
               f"{got.similar} similar{', kept' if got.reused else ''}) {got.ms:.1f}ms"
               if got is not None else "")
    mode = job.request.cursor_mode
    cursor = (f" cursor={mode}" + (f" ({result.cursor_ms:.1f}ms, {result.cursor_passes} passes, "
                                   "prompt included)" if result.cursor_passes else ""))
    drafts = (f", {result.forwards} passes, drafts {result.accepted}/{result.drafted} accepted, "
              f"{result.mean_accepted:.2f} per pass"
              if result.by_drafter is not None else f", {result.forwards} passes")
    log.info("%s completion: queue=%.1fms%s prompt=%.1fms (%d of %d tokens evaluated)%s "
             "generation=%.1fms (%d tokens%s)%s engine=%.1fms %s%s", job.id, job.queue_ms,
             context, result.prefill_ms, result.prompt_evaluated, result.prompt_tokens, cursor,
             result.decode_ms, result.tokens, drafts,
             (f" syntax={result.mode}" + (f" ({result.members} members)" if result.members else ""))
             + score if result.mode else score, result.total_ms, result.finish_reason,
             f" ({job.cancel_reason})" if job.cancel_reason else "")
