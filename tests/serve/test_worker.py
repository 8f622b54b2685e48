"""The model worker: jobs run one at a time, newer ones supersede older ones of the same client,
a job cancelled while queued spends no model time, and a failing job stays contained."""

from __future__ import annotations

import asyncio
import threading

from tests.serve.fakes import FakeEngine
from tokenfill.completion.request import CompletionRequest
from tokenfill.serve.worker import Job, Worker


async def finish(job: Job) -> tuple[str, object, list[str]]:
    """The job's last event and the text pieces before it."""
    pieces = []
    while True:
        kind, value = await asyncio.wait_for(job.events.get(), 10)
        if kind == "text":
            pieces.append(value)
        else:
            return kind, value, pieces


def request(prefix: str = "x = ") -> CompletionRequest:
    return CompletionRequest(prefix=prefix, max_tokens=8)


def test_a_job_streams_its_pieces_then_its_completion():
    async def main():
        worker = Worker(FakeEngine("abcdef", pieces=3), n_slots=1)
        job = Job(request=request())
        worker.submit(job)
        kind, result, pieces = await finish(job)
        worker.close()
        return kind, result, pieces, worker.stats

    kind, result, pieces, stats = asyncio.run(main())
    assert kind == "done" and result.text == "abcdef" and "".join(pieces) == "abcdef"
    assert len(pieces) == 3 and stats.completed == 1


def test_a_newer_job_of_the_same_client_supersedes_the_queued_one():
    async def main():
        engine = FakeEngine()
        engine.gate = threading.Event()
        worker = Worker(engine, n_slots=1)
        running = Job(request=request("first"), key="other")
        worker.submit(running)
        await asyncio.to_thread(engine.started.wait, 5)
        older, newer = Job(request=request("older"), key="me"), Job(request=request("newer"),
                                                                        key="me")
        worker.submit(older)
        worker.submit(newer)
        engine.gate.set()
        results = [await finish(job) for job in (running, older, newer)]
        worker.close()
        return engine, results, worker.stats, older

    engine, results, stats, older = asyncio.run(main())
    (_, first, _), (_, superseded, _), (_, latest, _) = results
    assert first.finish_reason == "length" and latest.finish_reason == "length"
    assert superseded.finish_reason == "aborted" and older.cancel_reason == "superseded"
    assert [r.prefix for r in engine.requests] == ["first", "newer"]  # no model time for it
    assert stats.superseded == 1 and stats.aborted == 1 and stats.completed == 2


def test_a_job_cancelled_while_queued_never_reaches_the_engine():
    async def main():
        engine = FakeEngine()
        engine.gate = threading.Event()
        worker = Worker(engine, n_slots=1)
        running, queued = Job(request=request("first")), Job(request=request("queued"))
        worker.submit(running)
        await asyncio.to_thread(engine.started.wait, 5)
        worker.submit(queued)
        queued.cancel("client disconnected")
        engine.gate.set()
        results = [await finish(job) for job in (running, queued)]
        worker.close()
        return engine, results

    engine, results = asyncio.run(main())
    assert results[1][1].finish_reason == "aborted"
    assert [r.prefix for r in engine.requests] == ["first"]


def test_a_failing_job_is_answered_with_an_error_and_the_worker_goes_on():
    async def main():
        worker = Worker(FakeEngine("ok"), n_slots=1)
        bad, good = Job(request=request("boom")), Job(request=request("fine"))
        worker.submit(bad)
        worker.submit(good)
        results = [await finish(job) for job in (bad, good)]
        worker.close()
        return results, worker.stats

    (bad, good), stats = asyncio.run(main())
    assert bad[0] == "error" and "the model fell over" in bad[1]
    assert good[0] == "done" and good[1].text == "ok"
    assert stats.failed == 1 and stats.completed == 1


def test_a_worker_without_reuse_turns_reuse_off_for_every_job():
    async def main():
        engine = FakeEngine()
        worker = Worker(engine, n_slots=1, reuse=False)
        job = Job(request=request())
        worker.submit(job)
        await finish(job)
        worker.close()
        return engine

    assert asyncio.run(main()).requests[0].reuse is False


def test_remote_engines_run_jobs_side_by_side_in_process_ones_one_at_a_time():
    """Several threads only where the model runs elsewhere: in-process jobs share one model."""
    async def started_together(remote: bool) -> int:
        engine = FakeEngine()
        engine.remote = object() if remote else None
        engine.gate = threading.Event()
        worker = Worker(engine, n_slots=1, threads=3)
        jobs = [Job(request=request(f"job{i}"), key=f"client{i}") for i in range(3)]
        for job in jobs:
            worker.submit(job)
        await asyncio.sleep(0.3)
        running = len(engine.requests)
        engine.gate.set()
        results = [await finish(job) for job in jobs]
        worker.close()
        assert all(kind == "done" for kind, _, _ in results)
        assert worker.stats.completed == 3
        return running

    assert asyncio.run(started_together(remote=True)) == 3
    assert asyncio.run(started_together(remote=False)) == 1
