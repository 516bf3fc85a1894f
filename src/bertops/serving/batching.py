"""Adaptive batching: a request that finds the model idle runs at once; requests that arrive while a model call
runs wait and go together in the next call.

Ray Serve's ``@serve.batch`` holds every first request of a batch for ``batch_wait_timeout_s``, so a lone
request always pays the window; with a window of 0 it forms one-request batches that queue behind each other
(Ray 2.60 forms the next batch before the running one ends). Here the running model call *is* the window::

    batcher = AdaptiveBatcher(run_batch, max_size=32, size_fn=lambda item: len(item[1]))
    answer = await batcher.submit(("bert-sentiment", ["a fine film"]))

- idle replica: the request is dispatched in the same event-loop turn (no wait);
- busy replica: requests queue; when the call ends, the next one takes the queued requests, oldest first, up to
  ``max_size`` (counted by ``size_fn``; a request larger than ``max_size`` is a call of its own);
- ``extra_wait_s`` > 0: when requests were already queued (the replica was busy) and they fill less than
  ``max_size``, wait at most that long for more before the call. A lone request on an idle replica never waits.

``run_batch(items)`` returns one result per item, in order; a result that is an ``Exception`` is raised to that
item's caller only (the other requests of the batch are answered). Pure asyncio: no Ray, unit-tested alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class AdaptiveBatcher(Generic[Item]):
    """One queue of items and at most one running batch call (see the module docstring)."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[list[Any]]],
        max_size: int,
        size_fn: Callable[[Item], int] = lambda item: 1,
        extra_wait_s: float = 0.0,
    ) -> None:
        self._run_batch = run_batch
        self.max_size = max_size
        self._size = size_fn
        self.extra_wait_s = extra_wait_s
        self._queue: deque[tuple[Item, asyncio.Future[Any]]] = deque()
        self._arrived = asyncio.Event()
        self._draining = False
        self._task: asyncio.Task[None] | None = None  # held so the running drain is not garbage-collected
        self.idle_since = 0.0  # event-loop time the last batch ended (0: none ran yet)

    @property
    def busy(self) -> bool:
        """A batch is running or queued (what background work, e.g. a shadow model call, waits out)."""
        return self._draining

    async def submit(self, item: Item) -> Any:
        """Queue ``item`` and return its result once its batch has run."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        if not self._draining:
            self._draining = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Item, asyncio.Future[Any]]]:
        """The oldest queued items that fit in ``max_size`` (always at least one); cancelled ones dropped."""
        batch, size = [], 0
        while self._queue:
            item, future = self._queue[0]
            if future.done():  # the caller went away (client disconnect): nothing to answer
                self._queue.popleft()
                continue
            if batch and size + self._size(item) > self.max_size:
                break
            self._queue.popleft()
            batch.append((item, future))
            size += self._size(item)
        return batch

    def _queued_size(self) -> int:
        return sum(self._size(item) for item, future in self._queue if not future.done())

    async def _drain(self) -> None:
        first = True
        try:
            while self._queue:
                if not first and self.extra_wait_s > 0:
                    await self._gather_more()
                first = False
                batch = self._take()
                if not batch:
                    continue
                await self._run(batch)
        finally:
            # No await between the loop's last check and this line: a submit cannot slip in between.
            self._draining = False
            self.idle_since = asyncio.get_running_loop().time()

    async def _gather_more(self) -> None:
        """Wait up to ``extra_wait_s`` for more items while the queued ones fill less than a batch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.extra_wait_s
        while self._queued_size() < self.max_size and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch call returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # the callers of this batch get the error; the queue goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
