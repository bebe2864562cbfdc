"""BufferedWriter: batches land exactly once, close() drains, failures are retried or counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serving.store.eventlog import EventLogError, PredictionEvent
from serving.store.memory import MemoryEventLog
from serving.store.sqlite import SQLiteEventLog
from serving.store.writer import BufferedWriter

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def event(request_id: str, at: float = 0.0, **fields: Any) -> PredictionEvent:
    values: dict[str, Any] = {
        "request_id": request_id,
        "ts": (T0 + timedelta(seconds=at)).isoformat(),
        "user_key": "0" * 32,
        "arm": "linear",
        "model_name": "linear",
        "model_version": "1",
        "queue": "billing",
        "confidence": 0.9,
        "fallback": False,
        "reason": "confident",
        "latency_ms": 3.0,
    }
    values.update(fields)
    return PredictionEvent(**values)


class GatedLog(MemoryEventLog):
    """A memory log whose writes wait for `gate` and fail the first `failures` times."""

    def __init__(self, failures: int = 0, gate_open: bool = True) -> None:
        super().__init__()
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.failures = failures
        self.calls = 0

    def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
        self.gate.wait(timeout=10)
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("disk I/O error")
        super().record_predictions(events)


def test_close_drains_everything_without_waiting_for_the_interval() -> None:
    log = MemoryEventLog()
    writer = BufferedWriter(log, flush_interval_ms=60_000, max_batch=10_000)
    for i in range(300):
        assert writer.submit(event(f"r{i}"))
    began = time.perf_counter()
    assert writer.close(timeout=10)
    assert time.perf_counter() - began < 2
    assert log.stats().predictions == 300
    assert writer.stats().written == 300 and writer.stats().pending == 0
    with pytest.raises(EventLogError, match="closed"):
        writer.submit(event("late"))
    assert writer.close()  # a second close is harmless


def test_flush_writes_what_was_submitted_and_keeps_the_writer_open() -> None:
    log = MemoryEventLog()
    with BufferedWriter(log, flush_interval_ms=60_000) as writer:
        writer.submit(event("r1"))
        assert log.get_prediction("r1") is None  # still buffered
        assert writer.flush(timeout=5)
        assert log.get_prediction("r1") is not None
        writer.submit(event("r2"))
    assert log.stats().predictions == 2


def test_batches_are_written_after_the_interval() -> None:
    log = MemoryEventLog()
    with BufferedWriter(log, flush_interval_ms=20) as writer:
        writer.submit(event("r1"))
        deadline = time.monotonic() + 5
        while log.get_prediction("r1") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.get_prediction("r1") is not None


def test_shadow_results_follow_their_prediction() -> None:
    log = MemoryEventLog()
    with BufferedWriter(log, flush_interval_ms=60_000) as writer:
        writer.submit(event("r1"))
        writer.submit_shadow("r1", {"queue": "sales", "confidence": 0.4})
        writer.submit_shadow("ghost", {"queue": "sales"})  # unknown request: dropped and counted
    stored = log.get_prediction("r1")
    assert stored is not None and stored.shadow == {"queue": "sales", "confidence": 0.4}
    assert writer.stats().written == 2 and writer.stats().dropped == 1


def test_ten_thousand_events_from_four_threads_land_exactly_once(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "ev.db")
    writer = BufferedWriter(log, flush_interval_ms=20, max_batch=500)

    def produce(thread: int) -> None:
        for i in range(2500):
            writer.submit(event(f"t{thread}-{i}", at=i))
            if i == 1000:
                writer.submit(event(f"t{thread}-0", at=0))  # a client retry: must not double count

    began = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.close(timeout=30)
    elapsed = time.perf_counter() - began
    frame = log.predictions_frame()
    assert len(frame) == 10_000 and frame["request_id"].is_unique
    assert set(frame["request_id"]) == {f"t{t}-{i}" for t in range(4) for i in range(2500)}
    assert writer.stats().dropped == 0 and writer.stats().written == 10_004
    print(f"\nBufferedWriter, 4 threads -> SQLite: {10_004 / elapsed:,.0f} events/s end to end")
    log.close()


def test_batch_inserts_reach_thousands_per_second(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "ev.db")
    events = [event(f"r{i}", at=i, subject="Refund please", body="I was charged twice. " * 20) for i in range(10_000)]
    began = time.perf_counter()
    for first in range(0, len(events), 500):
        log.record_predictions(events[first : first + 500])
    rate = len(events) / (time.perf_counter() - began)
    print(f"\nSQLite batch insert (500 per transaction): {rate:,.0f} events/s")
    assert log.stats().predictions == 10_000
    assert rate > 2_000
    log.close()


def test_failed_writes_are_retried() -> None:
    log = GatedLog(failures=2)
    with BufferedWriter(log, flush_interval_ms=60_000, retry_backoff_s=0.001) as writer:
        writer.submit(event("r1"))
    assert log.get_prediction("r1") is not None and log.calls == 3
    assert writer.stats().written == 1 and writer.stats().dropped == 0


def test_a_store_that_keeps_failing_keeps_the_records_until_it_is_back() -> None:
    # Before issue 9 the batch was dropped after 3 tries: a store down for a second lost every record in flight.
    log = GatedLog(failures=40)
    with BufferedWriter(log, flush_interval_ms=1, retry_backoff_s=0.001, max_backoff_s=0.01) as writer:
        writer.submit(event("r1"))
        writer.submit(event("r2"))
        deadline = time.monotonic() + 5
        while not writer.stats().failing and time.monotonic() < deadline:
            time.sleep(0.001)
        assert writer.stats().failing  # what /readyz and /metrics report
        writer.submit(event("r3"))  # waits behind the failing batch
        assert writer.flush(timeout=10)
    assert all(log.get_prediction(r) is not None for r in ("r1", "r2", "r3"))
    assert writer.stats().dropped == 0 and writer.stats().written == 3 and not writer.stats().failing


def test_an_unopenable_store_is_retried_not_dropped() -> None:
    # Before issue 9 a store error wrapped as EventLogError (an unopenable file) skipped the retries.
    from serving.store.eventlog import StoreUnavailableError

    class Unopenable(GatedLog):
        def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
            self.calls += 1
            if self.calls <= 3:
                raise StoreUnavailableError("cannot open event log /gone/events.db: unable to open database file")
            MemoryEventLog.record_predictions(self, events)

    log = Unopenable()
    with BufferedWriter(log, flush_interval_ms=1, retry_backoff_s=0.001) as writer:
        writer.submit(event("r1"))
    assert log.get_prediction("r1") is not None and writer.stats().dropped == 0


def test_a_store_still_failing_at_close_is_given_up_counted_and_said() -> None:
    log = GatedLog(failures=10**9)
    writer = BufferedWriter(log, flush_interval_ms=1, retry_backoff_s=0.001, max_backoff_s=0.01, close_retry_s=0.2)
    writer.submit(event("r1"))
    assert writer.close(timeout=10)
    assert writer.stats().dropped == 1 and writer.stats().written == 0


def test_a_full_buffer_drops_instead_of_blocking() -> None:
    log = GatedLog(gate_open=False)  # the store hangs: nothing leaves the buffer
    writer = BufferedWriter(log, flush_interval_ms=1, max_pending=5)
    accepted = [writer.submit(event(f"r{i}")) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    log.gate.set()
    assert writer.close(timeout=10)
    assert log.stats().predictions == 5
    assert writer.stats() == type(writer.stats())(submitted=8, written=5, dropped=0, pending=0, refused=3)


def test_find_by_email_id_sees_buffered_events() -> None:
    log = GatedLog(gate_open=False)
    writer = BufferedWriter(log, flush_interval_ms=1)
    writer.submit(event("r1", email_id="m1"))
    writer.submit(event("r2", at=5, email_id="m1"))  # a second answer to the same email is not the first one
    assert log.find_by_email_id("m1") is None
    found = writer.find_by_email_id("m1")
    assert found is not None and found.request_id == "r1"
    log.gate.set()
    assert writer.close(timeout=10)
    found = writer.find_by_email_id("m1")
    assert found is not None and found.request_id == "r1"
    assert writer.find_by_email_id("m2") is None


def test_bad_settings_and_shadows_are_refused_at_once() -> None:
    with pytest.raises(EventLogError):
        BufferedWriter(MemoryEventLog(), max_batch=0)
    with BufferedWriter(MemoryEventLog()) as writer, pytest.raises(EventLogError, match="JSON"):
        writer.submit_shadow("r1", {"bad": {1, 2}})


def test_one_record_the_store_refuses_costs_that_record_alone() -> None:
    # Found in review: any error that was not an EventLogError was retried forever (one bad record would stall the
    # writer and fill the buffer), and a refused batch dropped every good record in it.
    class Picky(MemoryEventLog):
        def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
            if any(e.request_id == "bad" for e in events):
                raise ValueError("the store cannot take this one")
            super().record_predictions(events)

    log = Picky()
    with BufferedWriter(log, flush_interval_ms=60_000, retry_backoff_s=0.001) as writer:
        for request_id in ("r1", "bad", "r2"):
            writer.submit(event(request_id))
    assert log.get_prediction("r1") is not None and log.get_prediction("r2") is not None
    assert writer.stats().written == 2 and writer.stats().dropped == 1


def test_dropped_and_refused_records_reach_the_metrics_page() -> None:
    """Found in review: only a zero count was ever checked on /metrics. What the writer counts, summed over the
    replicas' snapshots (as /metrics merges them), is what Prometheus reads."""
    from dataclasses import asdict

    from serving.metrics import RouterMetrics, merge, render

    log = GatedLog(gate_open=False)
    writer = BufferedWriter(log, flush_interval_ms=1, max_pending=2)
    taken = [writer.submit(event(f"r{i}")) for i in range(4)]  # two refused: the buffer is full
    writer.submit_shadow("ghost", {"queue": "sales"})  # refused too, or dropped once the gate opens
    log.gate.set()
    assert writer.close(timeout=10) and taken == [True, True, False, False]
    stats = asdict(writer.stats())
    assert stats["refused"] + stats["dropped"] == 3
    replica = {**RouterMetrics().snapshot(), "writer": stats}
    text = render(merge([replica, replica]), "exp")  # two replicas with the same counts
    assert f"mailroute_events_refused_total {2 * stats['refused']}" in text
    assert f"mailroute_events_dropped_total {2 * stats['dropped']}" in text
    assert f"mailroute_events_written_total {2 * stats['written']}" in text


def test_a_write_that_hangs_is_said_to_be_failing_until_it_returns() -> None:
    """Found in review: a store that hangs (a database server that stopped answering without closing the
    connection) kept `failing` false for as long as the write hung, so /readyz and /metrics said all was well."""
    log = GatedLog(gate_open=False)
    writer = BufferedWriter(log, flush_interval_ms=10, stall_after_s=0.2)
    writer.submit(event("r1"))
    time.sleep(0.6)
    assert writer.stats().failing and writer.stats().pending == 1
    log.gate.set()
    assert writer.flush(timeout=5)
    assert not writer.stats().failing and writer.stats().written == 1
    writer.close()
