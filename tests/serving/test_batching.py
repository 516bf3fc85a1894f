"""The adaptive batch queue (pure asyncio): a lone request is not held, requests that queue behind a running
call go together, size limits hold, errors reach only their callers."""

from __future__ import annotations

import asyncio

import pytest

from bertops.serving.batching import AdaptiveBatcher


class Recorder:
    """A batch function that records its batches and can be held on a gate."""

    def __init__(self, results=None) -> None:
        self.batches: list[list] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.results = results

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await self.gate.wait()
        return self.results(items) if self.results else [f"ok:{item}" for item in items]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_lone_request_is_dispatched_at_once_even_with_a_long_extra_wait() -> None:
    async def run() -> None:
        rec = Recorder()
        batcher = AdaptiveBatcher(rec, max_size=32, extra_wait_s=3600)
        task = asyncio.create_task(batcher.submit("a"))
        await _turns()
        # Within a few event-loop turns, without any timer firing: the model was called with it alone.
        assert rec.batches == [["a"]]
        assert await task == "ok:a"

    asyncio.run(run())


def test_requests_that_queue_behind_a_running_call_go_together() -> None:
    async def run() -> None:
        rec = Recorder()
        batcher = AdaptiveBatcher(rec, max_size=32)
        rec.gate.clear()  # the first call holds the model
        first = asyncio.create_task(batcher.submit("first"))
        await _turns()
        later = [asyncio.create_task(batcher.submit(f"r{i}")) for i in range(5)]
        await _turns()
        assert rec.batches == [["first"]]
        rec.gate.set()
        assert await first == "ok:first"
        assert await asyncio.gather(*later) == [f"ok:r{i}" for i in range(5)]
        assert rec.batches == [["first"], [f"r{i}" for i in range(5)]]

    asyncio.run(run())


def test_batches_are_cut_at_max_size_counted_by_size_fn_and_big_items_run_alone() -> None:
    async def run() -> None:
        rec = Recorder()
        batcher = AdaptiveBatcher(rec, max_size=4, size_fn=len)
        rec.gate.clear()
        hold = asyncio.create_task(batcher.submit("x"))
        await _turns()
        items = ["ab", "cd", "e", "fghijk", "l"]
        tasks = [asyncio.create_task(batcher.submit(i)) for i in items]
        await _turns()
        rec.gate.set()
        await asyncio.gather(hold, *tasks)
        # Oldest first, at most 4 characters per batch; the 6-character item is a batch of its own.
        assert rec.batches == [["x"], ["ab", "cd"], ["e"], ["fghijk"], ["l"]]

    asyncio.run(run())


def test_a_returned_exception_fails_only_its_own_request() -> None:
    async def run() -> None:
        rec = Recorder(results=lambda items: [ValueError(i) if i == "bad" else i for i in items])
        batcher = AdaptiveBatcher(rec, max_size=8)
        rec.gate.clear()
        hold = asyncio.create_task(batcher.submit("hold"))
        await _turns()
        good, bad = asyncio.create_task(batcher.submit("good")), asyncio.create_task(batcher.submit("bad"))
        await _turns()
        rec.gate.set()
        assert await hold == "hold" and await good == "good"
        with pytest.raises(ValueError, match="bad"):
            await bad

    asyncio.run(run())


def test_a_failing_batch_fails_its_requests_and_the_queue_goes_on() -> None:
    async def run() -> None:
        calls = []

        async def flaky(items: list) -> list:
            calls.append(items)
            if len(calls) == 1:
                raise RuntimeError("model call failed")
            return items

        batcher = AdaptiveBatcher(flaky, max_size=8)
        with pytest.raises(RuntimeError, match="model call failed"):
            await batcher.submit("a")
        assert await batcher.submit("b") == "b"

    asyncio.run(run())


def test_a_cancelled_request_is_not_sent_to_the_model() -> None:
    async def run() -> None:
        rec = Recorder()
        batcher = AdaptiveBatcher(rec, max_size=8)
        rec.gate.clear()
        hold = asyncio.create_task(batcher.submit("hold"))
        await _turns()
        gone, kept = asyncio.create_task(batcher.submit("gone")), asyncio.create_task(batcher.submit("kept"))
        await _turns()
        gone.cancel()
        await _turns()
        rec.gate.set()
        await asyncio.gather(hold, kept)
        assert rec.batches == [["hold"], ["kept"]]

    asyncio.run(run())


def test_extra_wait_gathers_more_only_after_a_busy_call() -> None:
    async def run() -> None:
        rec = Recorder()
        batcher = AdaptiveBatcher(rec, max_size=3, extra_wait_s=3600)
        rec.gate.clear()
        hold = asyncio.create_task(batcher.submit("hold"))
        await _turns()
        a = asyncio.create_task(batcher.submit("a"))
        await _turns()
        rec.gate.set()
        await hold
        await _turns()
        # The replica was busy: "a" waits for more (up to 3 items) instead of running alone.
        assert rec.batches == [["hold"]]
        b, c = asyncio.create_task(batcher.submit("b")), asyncio.create_task(batcher.submit("c"))
        await asyncio.gather(a, b, c)
        assert rec.batches == [["hold"], ["a", "b", "c"]]

    asyncio.run(run())


def test_idle_since_is_when_the_last_batch_ended_not_when_it_started() -> None:
    async def run() -> tuple[float, float, float, bool]:
        rec = Recorder()
        rec.gate.clear()
        batcher = AdaptiveBatcher(rec, max_size=4)
        loop = asyncio.get_running_loop()
        before = batcher.idle_since
        task = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0.05)
        busy_while_running = batcher.busy and batcher.idle_since == before
        released = loop.time()
        rec.gate.set()
        await task
        return before, released, batcher.idle_since, busy_while_running and not batcher.busy

    before, released, idle_since, ok = asyncio.run(run())
    assert before == 0.0 and ok
    assert idle_since >= released
