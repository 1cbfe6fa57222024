"""Batching inside one service: concurrent requests share one model call, with no second HTTP hop.

BentoML batches only the API of a dependency service (``bentoml.depends``), reached over HTTP from the
public one: each request then crosses two Python HTTP servers, which on 2 cores costed more than
the model (``make bench-serve``: 202 req/s against a 1,745 rows/s ceiling). A batchable public API
would take the batch as the request body, which is not the endpoint's contract (one request, one
answer). So the public service batches itself, the way BentoML's dispatcher does it in its model
service: requests queue; one worker thread takes everything queued (up to ``max_batch`` rows),
runs the model once, and answers each request from its rows. While the model runs, the next batch
gathers, so batches grow with the load and a lone request waits for nothing (``wait_ms`` 0), or
for at most ``wait_ms`` to be joined by others.

A request that waited longer than ``max_latency_ms`` before its batch started gets a 503 (the
server is overloaded: a client or load balancer retries elsewhere), as BentoML's dispatcher does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """A request waited past the batching deadline."""


@dataclass
class BatchStats:
    """Counters for the metadata and the benchmark: batches run, rows, largest batch, rejections."""

    batches: int = 0
    rows: int = 0
    largest: int = 0
    overloaded: int = 0
    model_seconds: float = 0.0
    after_failed: int = 0

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "rows": self.rows,
            "largest": self.largest,
            "overloaded": self.overloaded,
            "after_failed": self.after_failed,
            "mean_batch": self.rows / self.batches if self.batches else 0.0,
            "model_seconds": round(self.model_seconds, 3),
        }


@dataclass
class _Pending:
    request: Any
    size: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """``await batcher(request)`` -> ``fn([request, ...])[i]``: one call of ``fn`` for the requests
    queued meanwhile.

    ``fn`` takes a list of requests and returns one result per request, in order; it runs on one
    worker thread (the model's own threads do the parallel work), never on the event loop. A
    batch holds at most ``max_batch`` rows, ``size(request)`` each (1 by default; a request is never
    split, so one larger than ``max_batch`` runs alone). Before a batch starts, the event loop gets
    up to ``settle`` turns to bring requests it has already read to their model call, for as long
    as each turn adds some (nothing is waited for when none arrive). An exception from ``fn``
    fails the requests of that batch only. ``after(requests, results)``, when given, runs on the
    same thread once the batch's answers are sent and before the next batch's call: work the next
    batch must see (e.g. remembering what was scored) that need not delay this one's answers.
    ``inline``: ``fn`` runs on the event loop itself, for a model call of well under a millisecond
    that holds the GIL throughout (a thread then only adds handoffs); the event loop reads no
    request meanwhile, and the requests that arrive join the next batch.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch: int = 64,
        wait_ms: float = 0.0,
        max_latency_ms: float = 1000.0,
        size: Callable[[Any], int] = lambda request: 1,
        settle: int = 0,
        after: Callable[[list[Any], Sequence[Any]], None] | None = None,
        inline: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.fn, self.max_batch, self.wait_s, self.max_latency_s = fn, max_batch, wait_ms / 1000, max_latency_ms / 1000
        self.size, self.settle, self.after, self.inline = size, settle, after, inline
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()  # a new one with each batch loop
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self._task: asyncio.Task | None = None

    async def __call__(self, request: Any) -> Any:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        pending = _Pending(request, self.size(request), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            batch = [carry or await self._queue.get()]
            carry = None
            size = batch[0].size
            deadline = time.perf_counter() + self.wait_s
            spins, grew = 0, True
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    if spins < self.settle and self._queue.qsize() == 0 and grew:
                        # Let the event loop run the requests it has already read up to their
                        # model call before the batch starts: they join it, at no cost when idle.
                        before = size
                        await asyncio.sleep(0)
                        spins += 1
                        grew = self._queue.qsize() > 0 or size > before
                        continue
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if size + nxt.size > self.max_batch:
                    carry = nxt  # starts the next batch; a request is never split
                    break
                batch.append(nxt)
                size += nxt.size
            now = time.perf_counter()
            live = []
            for p in batch:
                if p.future.cancelled():
                    continue
                if now - p.queued_at > self.max_latency_s:
                    self.stats.overloaded += 1
                    p.future.set_exception(
                        Overloaded(
                            f"waited {1000 * (now - p.queued_at):.0f} ms for the model, "
                            f"over the {1000 * self.max_latency_s:.0f} ms deadline"
                        )
                    )
                else:
                    live.append(p)
            if not live:
                continue
            try:
                if self.inline:
                    results = self._run(live)
                else:
                    results = await loop.run_in_executor(self._pool, self._run, live)
            except Exception as exc:
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
            if self.after is not None and self.inline:
                await asyncio.sleep(0)  # the answered requests send their answers first
                self._after([p.request for p in live], results)
            elif self.after is not None:
                # On the batch thread, after the answers and before the next batch's call.
                self._pool.submit(self._after, [p.request for p in live], results)

    def _after(self, requests: list[Any], results: Sequence[Any]) -> None:
        try:
            self.after(requests, results)  # type: ignore[misc]
        except Exception:
            self.stats.after_failed += 1
            logger.exception("the batch's follow-up failed; its answers were already sent")

    def _run(self, batch: list[_Pending]) -> Sequence[Any]:
        start = time.perf_counter()
        results = self.fn([p.request for p in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"the batch function answered {len(results)} results for {len(batch)} requests")
        rows = sum(p.size for p in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, rows)
        self.stats.model_seconds += time.perf_counter() - start
        return results
