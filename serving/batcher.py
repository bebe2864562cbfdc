"""Opportunistic batching of the router's calls to the arms, apart from Ray.

Each handle call between Serve replicas has a fixed cost (a gRPC round trip, request routing, metrics on both
sides) that on a small machine is several times what the linear model spends on one email. A `CallBatcher`
coalesces the single-email calls that arrive while earlier calls to the same arm are in flight into one batch call:
an idle arm gets each email at once (no added wait at low load), a busy one gets batches as large as the backlog.
An item is whatever the batch call takes per email (the router sends each email's text with its ids, so that the
arm's log lines can name the email); it defaults to a string.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from typing_extensions import TypeVar as DefaultTypeVar

T = TypeVar("T")
Item = DefaultTypeVar("Item", default=str)  # PEP 696 default: CallBatcher[T] takes string items


class CallBatcher(Generic[T, Item]):
    """`await call(key, item)` returns the result for `item` of `call_batch(key, [..., item, ...])`.

    At most `max_in_flight` batch calls per key run at once, each of at most `max_batch` items. A batch call that
    raises, returns the wrong number of results or takes longer than `timeout_s` fails every caller in it with that
    error; a caller that gives up (is cancelled) before its batch is sent is left out of the batch.
    """

    def __init__(
        self,
        call_batch: Callable[[str, list[Item]], Awaitable[Sequence[T]]],  # (key, items) -> one result per item
        *,
        max_batch: int,
        max_in_flight: int,
        timeout_s: float,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or timeout_s <= 0:
            raise ValueError("max_batch and max_in_flight must be at least 1 and timeout_s positive")
        self._call_batch = call_batch
        self.max_batch, self.max_in_flight, self.timeout_s = max_batch, max_in_flight, timeout_s
        self._waiting: dict[str, deque[tuple[Item, asyncio.Future[T]]]] = defaultdict(deque)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batch calls started, for the metrics and the tests
        self.items = 0

    async def call(self, key: str, item: Item) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting[key].append((item, future))
        if self._in_flight[key] < self.max_in_flight:
            self._send(key)
        return await future

    def _send(self, key: str) -> None:
        waiting = self._waiting[key]
        batch: list[tuple[Item, asyncio.Future[T]]] = []
        while waiting and len(batch) < self.max_batch:
            item, future = waiting.popleft()
            if not future.done():  # a cancelled caller (it timed out) is not sent
                batch.append((item, future))
        if not batch:
            return
        self._in_flight[key] += 1
        self.batches += 1
        self.items += len(batch)
        task = asyncio.get_running_loop().create_task(self._run(key, batch))
        self._tasks.add(task)  # keep a reference until done, or the task may be collected mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str, batch: list[tuple[Item, asyncio.Future[T]]]) -> None:
        try:
            results = await asyncio.wait_for(self._call_batch(key, [item for item, _ in batch]), self.timeout_s)
            if len(results) != len(batch):
                raise RuntimeError(f"{key} returned {len(results)} results for {len(batch)} items")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
        finally:
            self._in_flight[key] -= 1
            if self._waiting[key]:
                self._send(key)
