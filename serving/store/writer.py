"""Write events to the event log from a background thread, in batches, so that routing never waits on a disk.

A Ray Serve replica serves requests on an asyncio loop; a synchronous commit there would stall every request
in flight. `BufferedWriter.submit` only puts the event on an in-memory queue; one thread takes batches off
it (after `flush_interval_ms`, or at once when `max_batch` events are waiting) and writes each batch in one
transaction.

What a crash can lose: the events still in the buffer, that is about one flush interval of traffic (more if
the store was failing and batches were waiting for a retry, at most `max_pending` events). `close()`, the
normal stop, drains everything first; an `atexit` hook calls it when the interpreter exits normally, and the
replica should call it from its shutdown hook.

A write that fails for a reason that can pass (a locked or full disk, an unopenable file, a lost connection) is
retried with backoff (tenacity), for as long as it takes: the batch stays in memory, `stats().failing` says so (as
it does while one write has been in flight longer than `stall_after_s`: a store that hangs), and
new events wait behind it up to `max_pending`. Beyond that `submit` refuses (returns False) and the router answers
503 instead of routing an email it cannot record. The store ignores request_ids it already holds, so retrying a
batch that did commit double counts nothing. Only a write that can never succeed (a shadow result whose prediction
is not in the log, an event the store rejects) is dropped: logged and counted in `stats().dropped`, which
`/metrics` exports. At `close()` a store that is still failing gets `close_retry_s` more, then what is left is
dropped and counted.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from serving.store.eventlog import EventLog, EventLogError, PredictionEvent, StoreUnavailableError, copy_shadow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterStats:
    submitted: int
    written: int
    dropped: int
    pending: int
    failing: bool = False  # the last write failed and is being retried
    refused: int = 0  # not taken (the buffer full): the caller was told, nothing acknowledged is lost


@dataclass(frozen=True)
class _Shadow:
    request_id: str
    shadow: dict[str, Any]


@dataclass(frozen=True)
class _Marker:
    """Queued by flush() and close(); the thread sets `done` once everything queued before it is written."""

    done: threading.Event
    stop: bool = False


class BufferedWriter:
    """Batches prediction events and shadow results into an `EventLog` from one background thread."""

    def __init__(
        self,
        log: EventLog,
        *,
        flush_interval_ms: int = 100,
        max_batch: int = 500,
        max_pending: int = 100_000,
        retry_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        close_retry_s: float = 10.0,
        stall_after_s: float = 10.0,
    ) -> None:
        if flush_interval_ms <= 0 or max_batch <= 0 or max_pending <= 0:
            raise EventLogError("BufferedWriter: interval, batch size and buffer size must be positive")
        self._log = log
        self._interval_s = flush_interval_ms / 1000
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._close_retry_s = close_retry_s
        self._give_up_at = float("inf")  # set by close(): how long a failing store still gets
        self._failing = False
        self._stall_after_s = stall_after_s
        self._writing_since: float | None = None  # monotonic start of the write in flight
        # Unbounded so that flush/close markers never block; `max_pending` bounds the events instead.
        self._queue: queue.Queue[PredictionEvent | _Shadow | _Marker] = queue.Queue()
        self._lock = threading.Lock()
        self._by_email_id: dict[tuple[str | None, str], PredictionEvent] = {}  # submitted, not yet written
        self._submitted = self._written = self._dropped = self._pending = self._refused = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(self, event: PredictionEvent) -> bool:
        """Queue a prediction for writing; False when the buffer is full and the event was refused."""
        with self._lock:
            if not self._accept():
                return False
            if event.email_id is not None:
                self._by_email_id.setdefault((event.client, event.email_id), event)
            self._queue.put(event)
        return True

    def submit_shadow(self, request_id: str, shadow: dict[str, Any]) -> bool:
        """Queue a shadow result; written after its prediction when that was submitted first."""
        item = _Shadow(request_id, copy_shadow(shadow) or {})
        with self._lock:
            if not self._accept():
                return False
            self._queue.put(item)
        return True

    def _accept(self) -> bool:
        # Called with the lock held.
        if self._closed:
            raise EventLogError("the event log writer is closed")
        self._submitted += 1
        if self._pending >= self._max_pending:
            self._refused += 1
            logger.warning("event log buffer full (%s events waiting): refusing an event", self._pending)
            return False
        self._pending += 1
        return True

    def waiting(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        """The first event submitted for this client's `email_id` that is not written yet."""
        with self._lock:
            return self._by_email_id.get((client, email_id))

    def find_by_email_id(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        """Like `EventLog.find_by_email_id`, but also sees events still waiting in the buffer."""
        waiting = self.waiting(email_id, client)
        stored = self._log.find_by_email_id(email_id, client)
        found = [e for e in (stored, waiting) if e is not None]
        return min(found, key=lambda e: e.ts) if found else None

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted before this call is written (or dropped); False on timeout."""
        marker = _Marker(threading.Event())
        with self._lock:
            if self._closed:
                return not self._thread.is_alive()
            self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write everything still buffered and stop the thread (the log itself stays open); True once done."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._give_up_at = time.monotonic() + self._close_retry_s
                self._queue.put(_Marker(threading.Event(), stop=True))
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        atexit.unregister(self.close)
        return True

    def stats(self) -> WriterStats:
        since = self._writing_since
        stalled = since is not None and time.monotonic() - since > self._stall_after_s  # a store that hangs
        with self._lock:
            return WriterStats(
                self._submitted, self._written, self._dropped, self._pending, self._failing or stalled, self._refused
            )

    def __enter__(self) -> BufferedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self._interval_s
            while not isinstance(batch[-1], _Marker) and len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._write(batch)

    def _write(self, batch: list[PredictionEvent | _Shadow | _Marker]) -> bool:
        events = [item for item in batch if isinstance(item, PredictionEvent)]
        write = partial(self._log.record_predictions, events)
        if events and self._attempt(write, len(events), alone=False) == "refused":
            for event in events:  # the store refused the batch: write each on its own, so one bad record costs one
                self._attempt(partial(self._log.record_predictions, [event]), 1)
        # After the predictions: a shadow result updates a row that must already be there.
        for item in batch:
            if isinstance(item, _Shadow):
                self._attempt(partial(self._log.record_shadow, item.request_id, item.shadow), 1)
        with self._lock:
            self._pending -= sum(not isinstance(item, _Marker) for item in batch)
            for event in events:
                if event.email_id is not None and self._by_email_id.get((event.client, event.email_id)) is event:
                    del self._by_email_id[(event.client, event.email_id)]
        markers = [item for item in batch if isinstance(item, _Marker)]
        for marker in markers:
            marker.done.set()
        return any(marker.stop for marker in markers)

    def _attempt(self, write: Callable[[], None], count: int, *, alone: bool = True) -> str:
        """Write, retrying while the failure may pass: "written", "refused" (the store refused the data; dropped and
        counted unless `alone` is False, when the caller writes the batch's records one by one) or "dropped" (the
        store still unavailable when close() gave up)."""
        retrying = Retrying(
            retry=retry_if_exception(_passing),
            wait=wait_exponential(multiplier=self._backoff_s, max=self._max_backoff_s),
            stop=lambda _: time.monotonic() > self._give_up_at,  # never, until close() gives a deadline
            before_sleep=self._failed,
            reraise=True,
        )
        self._writing_since = time.monotonic()
        try:
            retrying(write)
        except Exception as err:
            self._failing = False
            if not alone and not _passing(err):
                return "refused"
            why = "the store stayed unavailable past close()" if _passing(err) else "the store refused it"
            logger.error("event log: dropping %s event(s), %s: %s", count, why, err)
            with self._lock:
                self._dropped += count
            return "dropped"
        finally:
            self._writing_since = None
        with self._lock:
            self._written += count
        self._failing = False
        return "written"

    def _failed(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        if not self._failing or state.attempt_number % 10 == 0:
            logger.warning("event log write failed (%s), retrying (try %d)", err, state.attempt_number)
        self._failing = True


def _passing(err: BaseException) -> bool:
    """Whether a failed write may succeed later: the store unreachable, locked, out of space, an I/O error; not the
    store refusing the data itself (those are dropped, never retried forever)."""
    if isinstance(err, StoreUnavailableError | OSError | TimeoutError):
        return True
    if isinstance(err, EventLogError):
        return False
    return type(err).__name__ == "OperationalError"  # sqlite3's (locked, disk full, I/O) and the SQL drivers' alike
