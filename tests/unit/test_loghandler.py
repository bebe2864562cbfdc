"""StoreLogHandler: component log lines into the event log, in batches, bounded, never raising into the caller."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from serving.store.eventlog import LogRecord
from serving.store.loghandler import StoreLogHandler, install_store_logging, log_ids, remove_store_logging
from serving.store.memory import MemoryEventLog

pytestmark = pytest.mark.unit


class RecordingStore(MemoryEventLog):
    """A memory store that remembers each batch, and can be made to fail or to block."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def record_logs(self, records: Sequence[LogRecord]) -> None:
        self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append(len(records))
        super().record_logs(records)


def bare_logger(name: str) -> logging.Logger:
    """A logger outside the logging tree, so pytest's capture handlers (which re-raise format errors) never see it."""
    return logging.Logger(name, logging.DEBUG)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = bare_logger("test_loghandler.component")
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_keeps_warnings_and_email_lines_with_their_ids(logger: logging.Logger) -> None:
    store = RecordingStore()
    handler = install_store_logging(store, "router", loggers=["test_loghandler.installed"])
    logger = logging.getLogger("test_loghandler.installed")
    logger.setLevel(logging.DEBUG)
    logger.debug("noise")
    logger.info("replica started")  # INFO without an email: not kept
    logger.info("sent to triage", extra=log_ids("r1", "m1"))
    logger.warning("arm %s failed", "transformer", extra=log_ids("r2"))
    try:
        raise ValueError("bad row")
    except ValueError:
        logger.exception("batch failed")
    assert handler.flush()
    records = store.logs(min_level="DEBUG")
    assert [(r.level, r.message.splitlines()[0], r.request_id, r.email_id) for r in records] == [
        ("ERROR", "batch failed", None, None),
        ("WARNING", "arm transformer failed", "r2", None),
        ("INFO", "sent to triage", "r1", "m1"),
    ]
    assert "ValueError: bad row" in records[0].message  # the traceback is kept with the message
    assert {r.component for r in records} == {"router"}
    assert handler.stats().written == 3 and handler.stats().dropped == 0
    remove_store_logging(handler, ["test_loghandler.installed"])
    assert handler not in logger.handlers


def test_writes_in_batches_off_the_callers_thread(logger: logging.Logger) -> None:
    store = RecordingStore()
    store.gate.clear()  # the store is slow: the caller must not notice
    handler = StoreLogHandler(store, "arm-linear", max_batch=10, flush_interval_s=0.05)
    logger.addHandler(handler)
    started = time.perf_counter()
    for i in range(35):
        logger.warning("w%s", i)
    assert time.perf_counter() - started < 0.5
    store.gate.set()
    assert handler.flush()
    assert sum(store.batches) == 35 and max(store.batches) <= 10
    assert [r.message for r in store.logs(limit=3)] == ["w34", "w33", "w32"]


def test_component_of_a_logger_prefix(logger: logging.Logger) -> None:
    store = RecordingStore()
    handler = StoreLogHandler(store, "router", components={"test_loghandler.component.writer": "event-writer"})
    logger.addHandler(handler)
    writer = bare_logger("test_loghandler.component.writer")
    writer.addHandler(handler)
    writer.warning("write failed")
    logger.warning("router line")
    handler.flush()
    assert {r.message: r.component for r in store.logs()} == {
        "write failed": "event-writer",
        "router line": "router",
    }


def test_a_full_buffer_drops_with_a_count(logger: logging.Logger) -> None:
    store = RecordingStore()
    store.gate.clear()
    handler = StoreLogHandler(store, "router", capacity=5, max_batch=5, flush_interval_s=0.01)
    logger.addHandler(handler)
    logger.warning("first")  # taken off the buffer by the thread, which then waits on the store
    time.sleep(0.1)
    for i in range(20):
        logger.warning("w%s", i)
    stats = handler.stats()
    assert stats.pending == 5 and stats.dropped == 15
    store.gate.set()
    assert handler.flush()
    assert len(store.logs(limit=100)) == 6


def test_a_failing_store_drops_with_a_count_and_never_raises(logger: logging.Logger) -> None:
    store = RecordingStore()
    store.fail = True
    handler = StoreLogHandler(store, "router", flush_interval_s=0.01, retry_backoff_s=0.01)
    logger.addHandler(handler)
    for i in range(3):
        logger.warning("w%s", i)  # must not raise
    logger.warning("bad %d", "not a number")  # a broken format string: counted, not raised
    assert handler.flush()
    assert handler.stats().dropped == 4 and handler.stats().written == 0
    store.fail = False  # the store recovers: the thread is still alive and writes again
    logger.warning("after")
    assert handler.flush()
    assert [r.message for r in store.logs()] == ["after"]


def test_serves_request_id_attribute_is_not_taken_for_ours(logger: logging.Logger) -> None:
    # Ray Serve's context filter sets `record.request_id` to its own HTTP request id.
    store = RecordingStore()
    handler = StoreLogHandler(store, "router")
    logger.addHandler(handler)
    logger.warning("from serve", extra={"request_id": "serve-http-id"})
    handler.flush()
    assert store.logs()[0].request_id is None


def test_close_writes_what_is_buffered_and_later_records_are_dropped(logger: logging.Logger) -> None:
    store = RecordingStore()
    handler = StoreLogHandler(store, "monitor", flush_interval_s=60)
    logger.addHandler(handler)
    logger.warning("last words")
    handler.close()
    assert [r.message for r in store.logs()] == ["last words"]
    logger.warning("too late")
    assert handler.stats().dropped == 1
