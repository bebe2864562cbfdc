"""Component log lines into the event log, so the dashboard shows every node's warnings, not one node's log files.

`StoreLogHandler` is a `logging.Handler` that keeps the records worth triaging — every WARNING and above, and the
INFO lines that name an email — and writes them in batches through `EventLog.record_logs` from one background
thread. `emit` only formats the record and appends it to a bounded buffer: a request never waits on the store,
and memory stays bounded. When the buffer is full, or the store fails twice in a row for a batch, records are
dropped and counted (`stats().dropped`), and the drop is logged once per batch to the process's other handlers
(the handler ignores records from its own thread, so a failing store cannot feed itself).

A log call names the email it is about with `extra=log_ids(request_id, email_id)`; those become the record's
`request_id`/`email_id` columns, which the dashboard's search reads. (Not `extra={"request_id": ...}`: Ray Serve's
context filter overwrites that attribute with its own HTTP request id.)

Where it is installed (`install_store_logging`, called from each process's entry point, never at import):
- router replicas: component "router", on the `serving` and `ray.serve` loggers, with the event writer's own
  logger mapped to component "event-writer";
- model replicas: component "arm-<name>" or "shadow" (the Serve deployment's name);
- monitoring jobs: `install_store_logging(log, "monitor", loggers=("monitoring",))` at the start of a run, and
  `handler.close()` at its end, so a drift job's warnings and failures appear in the same list.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from serving.store.eventlog import LOG_LEVELS, EventLog, LogRecord

logger = logging.getLogger(__name__)
IDS_ATTR = "mailroute_ids"  # the LogRecord attribute `log_ids` sets: (request_id, email_id)
MAX_MESSAGE_CHARS = 4000  # a traceback is kept, a runaway message is cut


def log_ids(request_id: str | None, email_id: str | None = None) -> dict[str, Any]:
    """`extra=` for a log call about one email: the store keeps its ids, and the search finds the line."""
    return {IDS_ATTR: (request_id, email_id)}


def record_ids(record: logging.LogRecord) -> tuple[str | None, str | None]:
    ids = getattr(record, IDS_ATTR, None)
    return (ids[0], ids[1]) if isinstance(ids, tuple) and len(ids) == 2 else (None, None)


def _level_name(levelno: int) -> str:
    # Custom levels (e.g. 25) are stored as the standard level just below them.
    return max((n for n in LOG_LEVELS.items() if n[1] <= levelno), key=lambda n: n[1], default=("DEBUG", 10))[0]


@dataclass(frozen=True)
class LogHandlerStats:
    accepted: int  # records put in the buffer
    written: int
    dropped: int  # buffer full, unformattable, or the store failed
    pending: int


class StoreLogHandler(logging.Handler):
    """Buffers WARNING+ records (and INFO records that name an email) and writes them to an `EventLog` in batches."""

    def __init__(
        self,
        log: EventLog,
        component: str,
        *,
        components: Mapping[str, str] | None = None,
        capacity: int = 10_000,
        max_batch: int = 500,
        flush_interval_s: float = 1.0,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if capacity < 1 or max_batch < 1 or flush_interval_s <= 0:
            raise ValueError("StoreLogHandler: capacity, max_batch and flush_interval_s must be positive")
        super().__init__(level=logging.INFO)
        self._log = log
        self.component = component
        # Logger-name prefixes that belong to another component of the same process, longest prefix first.
        self._components = sorted((components or {}).items(), key=lambda kv: -len(kv[0]))
        self._capacity, self._max_batch = capacity, max_batch
        self._interval_s, self._backoff_s = flush_interval_s, retry_backoff_s
        self._buffer: deque[LogRecord] = deque()
        self._cond = threading.Condition()
        self._accepted = self._handled = self._written = self._dropped = 0
        self._stopping = False
        self.setFormatter(logging.Formatter("%(message)s"))
        self._thread = threading.Thread(target=self._run, name=f"store-log-{component}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ---- the caller's side: never blocks on the store, never raises -------------------------------------------
    def keeps(self, record: logging.LogRecord) -> bool:
        """WARNING and above always; INFO only when the record names an email."""
        return record.levelno >= logging.WARNING or (
            record.levelno >= logging.INFO and record_ids(record) != (None, None)
        )

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() == self._thread.ident or not self.keeps(record):
            return
        try:
            request_id, email_id = record_ids(record)
            item = LogRecord(
                ts=datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
                component=self._component_of(record.name),
                level=_level_name(record.levelno),
                message=self.format(record)[:MAX_MESSAGE_CHARS],
                request_id=request_id,
                email_id=email_id,
            )
        except Exception:  # a bad format string or argument: count it, never raise into the caller
            with self._cond:
                self._dropped += 1
            return
        with self._cond:
            if self._stopping or len(self._buffer) >= self._capacity:
                self._dropped += 1
                return
            self._buffer.append(item)
            self._accepted += 1
            if len(self._buffer) >= self._max_batch:
                self._cond.notify_all()

    def _component_of(self, name: str) -> str:
        for prefix, component in self._components:
            if name == prefix or name.startswith(prefix + "."):
                return component
        return self.component

    # ---- control ----------------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 10.0) -> bool:  # type: ignore[override]
        """Block until every record accepted before the call is written or dropped; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._cond.notify_all()
            while self._handled < target and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._handled >= target

    def close(self) -> None:
        """Write what is buffered and stop the thread; later records are dropped. Idempotent."""
        with self._cond:
            already = self._stopping
            self._stopping = True
            self._cond.notify_all()
        if not already:
            self._thread.join(30.0)
            atexit.unregister(self.close)
        super().close()

    def stats(self) -> LogHandlerStats:
        with self._cond:
            return LogHandlerStats(self._accepted, self._written, self._dropped, len(self._buffer))

    # ---- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._buffer and not self._stopping:
                    self._cond.wait(self._interval_s)
                if not self._buffer and self._stopping:
                    return
                batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self._max_batch))]
            if batch:
                self._write(batch)

    def _write(self, batch: Sequence[LogRecord]) -> None:
        error: Exception | None = None
        for attempt in range(2):
            try:
                self._log.record_logs(batch)
                error = None
                break
            except Exception as err:  # the thread must outlive any store failure
                error = err
                if attempt == 0 and not self._stopping:
                    time.sleep(self._backoff_s)
        with self._cond:
            if error is None:
                self._written += len(batch)
            else:
                self._dropped += len(batch)
            self._handled += len(batch)
            dropped = self._dropped
            self._cond.notify_all()
        if error is not None:  # reaches the process's other handlers (Ray's log files), not this one
            logger.warning(
                "component log store failed (%s): dropped %s record(s), %s in all", error, len(batch), dropped
            )


def install_store_logging(
    log: EventLog,
    component: str,
    *,
    loggers: Sequence[str] = ("serving",),
    components: Mapping[str, str] | None = None,
    **options: Any,
) -> StoreLogHandler:
    """Attach one `StoreLogHandler` to `loggers` (an entry point's call). Logger levels are left as they are: an
    INFO line reaches the store only where its logger lets INFO through."""
    handler = StoreLogHandler(log, component, components=components, **options)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    return handler


def remove_store_logging(handler: StoreLogHandler, loggers: Sequence[str] = ("serving",)) -> None:
    """Detach and close a handler `install_store_logging` attached (a job's end, a replica's shutdown)."""
    for name in loggers:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
