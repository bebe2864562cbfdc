"""The event log contract, run on every store, and what only the SQLite file must do (processes, reopen)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.store.eventlog import (
    JOINED_COLUMNS,
    PREDICTION_COLUMNS,
    EventLog,
    EventLogError,
    FeedbackEvent,
    LabelledEmail,
    LogRecord,
    MonitorVerdict,
    PredictionEvent,
    StoreUnavailableError,
    UnknownRequestError,
    open_event_log,
    user_key,
)
from serving.store.memory import MemoryEventLog
from serving.store.postgres import PostgresEventLog
from serving.store.sqlite import SCHEMA_VERSION, SQLiteEventLog

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def event(request_id: str, at: float = 0.0, **fields: Any) -> PredictionEvent:
    values: dict[str, Any] = {
        "request_id": request_id,
        "ts": ts(at),
        "user_key": user_key("test-salt", f"user-{request_id}"),
        "arm": "linear",
        "model_name": "linear",
        "model_version": "3",
        "queue": "billing",
        "confidence": 0.9,
        "fallback": False,
        "reason": "confident",
        "latency_ms": 4.5,
    }
    values.update(fields)
    return PredictionEvent(**values)


def feedback(request_id: str, true_queue: str = "billing", **fields: Any) -> FeedbackEvent:
    return FeedbackEvent(request_id=request_id, ts=ts(600), true_queue=true_queue, **fields)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    store: EventLog
    if request.param == "memory":
        store = MemoryEventLog()
    elif request.param == "sqlite":
        store = SQLiteEventLog(tmp_path / "ev.db")
    else:  # a real server, a new database for each test
        store = PostgresEventLog(request.getfixturevalue("postgres").fresh_url())
    yield store
    store.close()


# --- the contract, on every store ---


def test_round_trip_keeps_every_field(log: EventLog) -> None:
    full = event(
        "r1",
        experiment="exp-1",
        in_experiment=True,
        secondary_queue="shipping",
        email_id="mail-1",
        subject="Refund",
        body="Please refund order 12",
        shadow={"model_version": "7", "queue": "billing", "confidence": 0.8, "latency_ms": 30.0},
        proba={"billing": 0.9, "shipping": 0.075, "sales": 0.025},
    )
    log.record_predictions([full, event("r2", fallback=True, subject=None, body=None)])
    assert log.get_prediction("r1") == full
    assert log.get_prediction("r2") == event("r2", fallback=True)
    assert log.get_prediction("missing") is None


def test_duplicate_request_id_is_ignored(log: EventLog) -> None:
    log.record_predictions([event("r1"), event("r2"), event("r2", queue="sales")])
    log.record_predictions([event("r1", queue="technical"), event("r3")])
    assert log.stats().predictions == 3
    assert log.get_prediction("r1") == event("r1")  # the first write wins
    assert log.get_prediction("r2") == event("r2")


def test_record_shadow_updates_once(log: EventLog) -> None:
    log.record_predictions([event("r1")])
    log.record_shadow("r1", {"queue": "technical", "confidence": 0.6})
    log.record_shadow("r1", {"queue": "sales", "confidence": 0.1})  # a retry must not overwrite
    stored = log.get_prediction("r1")
    assert stored is not None and stored.shadow == {"queue": "technical", "confidence": 0.6}
    with pytest.raises(UnknownRequestError):
        log.record_shadow("nope", {"queue": "sales"})
    with pytest.raises(EventLogError, match="JSON"):
        log.record_shadow("r1", {"queue": object()})


def test_stored_events_are_detached_from_the_callers_dict(log: EventLog) -> None:
    shadow = {"queue": "sales"}
    log.record_predictions([event("r1", shadow=shadow)])
    shadow["queue"] = "changed"
    stored = log.get_prediction("r1")
    assert stored is not None and stored.shadow == {"queue": "sales"}


def test_one_record_per_email_id(log: EventLog) -> None:
    # Two replicas raced on the same idempotency key: the record written first stands, the other is dropped,
    # and both replicas answer with the stored one.
    log.record_predictions([event("r-first", at=5, email_id="m1", queue="sales"), event("r-other", email_id="m2")])
    log.record_predictions([event("r-second", at=1, email_id="m1")])
    found = log.find_by_email_id("m1")
    assert found is not None and found.request_id == "r-first"
    assert log.get_prediction("r-second") is None
    assert log.stats().predictions == 2
    assert log.find_by_email_id("unknown") is None


def test_an_email_id_is_one_clients_key(log: EventLog) -> None:
    # Two clients may use the same email_id (their own numbering): each keeps its own record and answer, and one
    # client's key never reaches the other's record.
    log.record_predictions([event("r-a", email_id="m1", client="gateway-a", queue="sales")])
    log.record_predictions(
        [event("r-b", email_id="m1", client="gateway-b"), event("r-a2", email_id="m1", client="gateway-a")]
    )
    found_a, found_b = log.find_by_email_id("m1", "gateway-a"), log.find_by_email_id("m1", "gateway-b")
    assert found_a is not None and found_a.request_id == "r-a" and found_a.client == "gateway-a"
    assert found_b is not None and found_b.request_id == "r-b"
    assert log.find_by_email_id("m1", "gateway-c") is None and log.get_prediction("r-a2") is None
    assert log.find_by_email_id("m1") is not None  # a search without a client finds either


def test_feedback_is_idempotent(log: EventLog) -> None:
    log.record_predictions([event("r1")])
    first = log.record_feedback(feedback("r1", "billing", handling_seconds=42.0, agent_id="a7"))
    assert first.created and first.event == feedback("r1", "billing", handling_seconds=42.0, agent_id="a7")
    again = log.record_feedback(feedback("r1", "sales", agent_id="a9"))
    assert not again.created
    assert again.event == first.event  # the stored (first) feedback, not the repeat
    assert log.stats().feedback == 1


def test_feedback_for_unknown_request_is_a_clear_error(log: EventLog) -> None:
    with pytest.raises(UnknownRequestError, match="unknown request_id 'ghost'") as info:
        log.record_feedback(feedback("ghost"))
    assert isinstance(info.value, ValueError)
    assert log.stats().feedback == 0


def test_stats_counts(log: EventLog) -> None:
    assert log.stats().predictions == 0 and log.stats().feedback_accuracy is None
    log.record_predictions(
        [
            event("a1", arm="linear", queue="billing"),
            event("a2", arm="linear", queue="shipping"),
            event("a3", arm="linear", queue="triage", fallback=True, reason="arm_error"),
            event("b1", arm="transformer", queue="billing"),
            event("b2", arm="transformer", queue="triage", fallback=True, reason="timeout"),
            event("b3", arm="transformer", queue="triage", reason="low_confidence"),
        ]
    )
    log.record_feedback(feedback("a1", "billing"))
    log.record_feedback(feedback("a2", "shipping"))
    log.record_feedback(feedback("b1", "sales"))
    stats = log.stats()
    assert stats.predictions == 6 and stats.feedback == 3
    assert stats.by_arm == {"linear": 3, "transformer": 3}
    assert stats.by_queue == {"billing": 2, "shipping": 1, "triage": 3}
    assert stats.by_fallback_reason == {"arm_error": 1, "timeout": 1}
    assert stats.feedback_accuracy == pytest.approx(2 / 3)


def test_predictions_frame_orders_and_filters_by_time(log: EventLog) -> None:
    # +02:00 local time: 10:00:30 there is 08:00:30 UTC, before everything else.
    log.record_predictions([event("r3", at=30), event("r1", at=10), event("r0", ts="2026-01-05T10:00:30+02:00")])
    log.record_predictions([event("r2", at=20)])
    df = log.predictions_frame()
    assert list(df.columns) == PREDICTION_COLUMNS
    assert list(df["request_id"]) == ["r0", "r1", "r2", "r3"]
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert df["fallback"].dtype == bool and df["confidence"].dtype == float
    window = log.predictions_frame(since=ts(10), until=ts(30))  # since inclusive, until exclusive
    assert list(window["request_id"]) == ["r1", "r2"]
    assert list(log.predictions_frame(since="2026-01-05T11:00:20+02:00")["request_id"]) == ["r2", "r3"]


def test_joined_frame_is_a_left_join(log: EventLog) -> None:
    log.record_predictions([event("r1", at=1), event("r2", at=2, queue="sales")])
    log.record_feedback(feedback("r2", "technical", handling_seconds=90.0, agent_id="a1"))
    df = log.joined_frame()
    assert list(df.columns) == JOINED_COLUMNS
    assert len(df) == 2
    no_fb, with_fb = df.iloc[0], df.iloc[1]
    assert pd.isna(no_fb["true_queue"]) and pd.isna(no_fb["feedback_ts"]) and pd.isna(no_fb["handling_seconds"])
    assert (with_fb["queue"], with_fb["true_queue"], with_fb["agent_id"]) == ("sales", "technical", "a1")
    assert with_fb["handling_seconds"] == 90.0
    assert with_fb["feedback_ts"] == pd.Timestamp(ts(600))
    assert list(log.joined_frame(since=ts(2))["request_id"]) == ["r2"]


def test_empty_frames_have_the_columns(log: EventLog) -> None:
    assert list(log.predictions_frame().columns) == PREDICTION_COLUMNS
    assert list(log.joined_frame().columns) == JOINED_COLUMNS
    assert log.joined_frame().empty


def test_both_stores_produce_the_same_frames(tmp_path: Path) -> None:
    stores: list[EventLog] = [MemoryEventLog(), SQLiteEventLog(tmp_path / "same.db")]
    for store in stores:
        store.record_predictions(
            [event(f"r{i}", at=i, shadow={"q": i} if i % 2 else None, email_id=f"m{i}") for i in range(5)]
        )
        store.record_feedback(feedback("r1", "sales", handling_seconds=3.5))
    pd.testing.assert_frame_equal(stores[0].joined_frame(), stores[1].joined_frame())
    pd.testing.assert_frame_equal(stores[0].predictions_frame(), stores[1].predictions_frame())


# --- values ---


def test_events_validate_and_normalise_timestamps() -> None:
    assert event("r", ts="2026-01-05T10:00:00+01:00").ts == "2026-01-05T09:00:00.000000+00:00"
    with pytest.raises(EventLogError, match="no time zone"):
        event("r", ts="2026-01-05T10:00:00")
    with pytest.raises(EventLogError, match="not ISO 8601"):
        event("r", ts="yesterday")
    with pytest.raises(EventLogError, match="confidence"):
        event("r", confidence=1.5)
    with pytest.raises(EventLogError, match="experiment"):
        event("r", in_experiment=True)
    with pytest.raises(EventLogError, match="handling_seconds"):
        feedback("r", handling_seconds=-1.0)


def test_user_key_is_a_salted_pseudonym() -> None:
    # Golden value: changing the hash would split every user's history in two.
    assert user_key("s3cret-salt", "alice@example.com") == "0dc859b0059c78f1553022c99cfe6a48"
    assert user_key("other-salt", "alice@example.com") != user_key("s3cret-salt", "alice@example.com")
    assert user_key("s3cret-salt", "bob@example.com") != user_key("s3cret-salt", "alice@example.com")
    for raw in ["alice@example.com", "user-12345", "550e8400-e29b-41d4-a716-446655440000", "x" * 40]:
        key = user_key("s3cret-salt", raw)
        assert len(key) == 32 and int(key, 16) >= 0
        assert key != raw and raw not in key and raw.lower() not in key
    with pytest.raises(EventLogError, match="salt"):
        user_key("", "alice@example.com")


# --- opening a store by URL ---


def test_open_event_log_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_event_log("memory://"), MemoryEventLog)
    monkeypatch.chdir(tmp_path)
    for url, path in [
        ("sqlite:///rel/events.db", tmp_path / "rel" / "events.db"),
        (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),
        (str(tmp_path / "bare.db"), tmp_path / "bare.db"),
    ]:
        store = open_event_log(url)
        assert isinstance(store, SQLiteEventLog)
        store.close()
        assert path.exists(), url
    with pytest.raises(StoreUnavailableError, match="unavailable") as refused:  # nothing listens on port 9
        open_event_log("postgresql://mr:s3cret-pw@127.0.0.1:9/mailroute")
    assert "s3cret-pw" not in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(EventLogError, match="driver 'postgresql\\+asyncpg' is not supported"):
        open_event_log("postgresql+asyncpg://mr@127.0.0.1:9/mailroute")
    with pytest.raises(EventLogError, match="unknown scheme 'mysql'"):
        open_event_log("mysql://db/mailroute")
    with pytest.raises(EventLogError, match="names no file"):
        open_event_log("sqlite://")
    with pytest.raises(EventLogError, match="memory://"):
        open_event_log(":memory:")


# --- what only the SQLite file must do ---


def test_sqlite_persists_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "ev.db"
    store = SQLiteEventLog(path)
    store.record_predictions([event("r1")])
    store.record_feedback(feedback("r1"))
    store.close()
    with pytest.raises(EventLogError, match="closed"):
        store.get_prediction("r1")
    reopened = SQLiteEventLog(path)
    assert reopened.get_prediction("r1") == event("r1") and reopened.stats().feedback == 1
    reopened.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indices = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"predictions_ts", "predictions_client_email_id", "predictions_arm"} <= indices


def test_sqlite_refuses_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "ev.db"
    SQLiteEventLog(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(EventLogError, match="schema version 99"):
        SQLiteEventLog(path)


def _write_from_process(path: str, worker: int, start: Any) -> None:
    start.wait(timeout=30)  # both processes open (and create) the file at the same moment
    store = SQLiteEventLog(path)
    events = [event(f"p{worker}-{i}", at=i, arm=f"arm{worker}") for i in range(2000)]
    for first in range(0, len(events), 20):  # 100 short transactions, interleaved with the other process
        store.record_predictions(events[first : first + 20])
        if first % 400 == 0:
            store.stats()  # readers in between the writers
    store.record_predictions(events[:50])  # a retry of early batches: must not double count
    store.close()


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "shared.db")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_from_process, args=(path, w, start)) for w in (0, 1)]
    began = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = SQLiteEventLog(path)
    stats = store.stats()
    assert stats.predictions == 4000
    assert stats.by_arm == {"arm0": 2000, "arm1": 2000}
    assert store.predictions_frame()["request_id"].is_unique
    store.close()
    assert time.perf_counter() - began < 30


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(EventLogError, match="cannot open event log"):
        SQLiteEventLog(path)


def _write_with_inherited_log(store: SQLiteEventLog, parent_conn: sqlite3.Connection) -> None:
    store.record_predictions([event("from-child")])
    # SQLite forbids using a connection across fork(); the child must have opened its own.
    raise SystemExit(0 if store._conn() is not parent_conn else 3)


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteEventLog(tmp_path / "ev.db")
    store.record_predictions([event("from-parent")])  # the parent holds a connection when it forks
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_write_with_inherited_log, args=(store, store._conn()))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.stats().predictions == 2
    store.close()


# --- schema 2: feedback source, component logs, monitoring verdicts ---


def test_feedback_source_is_stored_and_checked(log: EventLog) -> None:
    log.record_predictions([event("r1"), event("r2")])
    log.record_feedback(feedback("r1", source="audit"))
    log.record_feedback(feedback("r2"))
    frame = log.joined_frame()
    assert frame.set_index("request_id")["feedback_source"].to_dict() == {"r1": "audit", "r2": "agent"}
    assert log.record_feedback(feedback("r1")).event.source == "audit"  # the first record stands
    with pytest.raises(EventLogError, match="source 'robot'"):
        feedback("r1", source="robot")


def test_logs_filter_by_level_component_and_email(log: EventLog) -> None:
    log.record_logs(
        [
            LogRecord(ts(1), "router", "INFO", "routed", request_id="r1"),
            LogRecord(ts(2), "arm-linear", "WARNING", "slow batch", request_id="r1", email_id="m1"),
            LogRecord(ts(3), "event-writer", "ERROR", "disk full"),
            LogRecord(ts(4), "router", "WARNING", "arm failed", email_id="m1"),
        ]
    )
    assert [r.message for r in log.logs()] == ["arm failed", "disk full", "slow batch"]  # newest first, WARNING+
    assert [r.message for r in log.logs(min_level="info", request_id="r1")] == ["slow batch", "routed"]
    assert [r.component for r in log.logs(request_id="r1", email_id="m1")] == ["router", "arm-linear"]
    assert [r.message for r in log.logs(component="event-writer")] == ["disk full"]
    assert [r.message for r in log.logs(since=ts(3), limit=1)] == ["arm failed"]
    with pytest.raises(EventLogError, match="level 'LOUD'"):
        log.logs(min_level="LOUD")
    assert log.prune_logs(ts(3)) == 2  # retention: the two oldest go
    assert [r.message for r in log.logs(min_level="INFO")] == ["arm failed", "disk full"]


def test_verdicts_round_trip(log: EventLog) -> None:
    rows = [
        MonitorVerdict("run1", ts(60), "drift", "all", "text_drift", True, ts(0), ts(50), 0.8, 0.55, "a.html"),
        MonitorVerdict("run1", ts(60), "drift", "linear", "prediction_drift", False, ts(0), ts(50), 0.01, 0.1),
        MonitorVerdict("run2", ts(120), "drift", "all", "accuracy", False, ts(60), ts(110), detail="no feedback"),
    ]
    log.record_verdicts(rows)
    assert log.verdicts() == [rows[2], rows[0], rows[1]]
    assert log.verdicts(since=ts(100)) == [rows[2]]
    assert log.verdicts(job="kpi") == []


def test_feedback_lookup_and_flagged_predictions(log: EventLog) -> None:
    log.record_predictions(
        [
            event("ok", 1),
            event("low", 2, queue="triage", reason="low_confidence", confidence=0.3),
            event("fb", 3, fallback=True, reason="fallback_to_linear:transformer_error"),
            event("dead", 4, queue="triage", fallback=True, reason="all_arms_failed:transformer_timeout"),
        ]
    )
    log.record_feedback(feedback("low", "shipping", handling_seconds=30.0))
    assert log.get_feedback("low") == feedback("low", "shipping", handling_seconds=30.0)
    assert log.get_feedback("ok") is None and log.get_feedback("nope") is None
    assert [p.request_id for p in log.flagged_predictions()] == ["dead", "fb", "low"]  # newest first
    assert [p.request_id for p in log.flagged_predictions(limit=2, since=ts(2))] == ["dead", "fb"]
    assert [p.request_id for p in log.flagged_predictions(reasons=())] == ["dead", "fb"]


def test_sql_url_names_the_file(tmp_path: Path) -> None:
    store = SQLiteEventLog(tmp_path / "ev.db")
    assert store.sql_url == f"sqlite:///{(tmp_path / 'ev.db').absolute()}"
    store.close()
    assert MemoryEventLog().sql_url is None


_SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE predictions (
    request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, user_key TEXT NOT NULL, arm TEXT NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, queue TEXT NOT NULL, confidence REAL NOT NULL,
    fallback INTEGER NOT NULL, reason TEXT NOT NULL, latency_ms REAL NOT NULL, experiment TEXT,
    in_experiment INTEGER NOT NULL, secondary_queue TEXT, email_id TEXT, subject TEXT, body TEXT, shadow TEXT
);
CREATE TABLE feedback (
    request_id TEXT PRIMARY KEY REFERENCES predictions (request_id), ts TEXT NOT NULL,
    true_queue TEXT NOT NULL, handling_seconds REAL, agent_id TEXT
);
INSERT INTO predictions VALUES ('old1', '2026-01-05T09:00:00.000000+00:00', 'u', 'linear', 'linear', '3',
    'billing', 0.9, 0, 'confident', 4.5, NULL, 0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO feedback VALUES ('old1', '2026-01-05T09:10:00.000000+00:00', 'shipping', 30.0, 'a1');
"""


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ev.db"
    with sqlite3.connect(path) as raw:
        raw.executescript(_SCHEMA_V1)
    store = SQLiteEventLog(path)
    frame = store.joined_frame()
    assert frame["request_id"].tolist() == ["old1"] and frame["feedback_source"].tolist() == ["agent"]
    store.record_logs([LogRecord(ts(1), "router", "ERROR", "after the upgrade")])
    assert [r.message for r in store.logs()] == ["after the upgrade"]
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    SQLiteEventLog(path).close()  # opening an upgraded file again changes nothing


def test_a_version_2_file_gains_probabilities_and_labelled_emails(tmp_path: Path) -> None:
    path = tmp_path / "ev.db"
    with sqlite3.connect(path) as raw:
        raw.executescript(_SCHEMA_V1)
    SQLiteEventLog(path).close()
    with sqlite3.connect(path) as raw:  # turn it back into the version-2 layout, as the last release wrote it
        raw.execute("UPDATE schema_version SET version = 2")
        raw.execute("DROP INDEX predictions_client_email_id")
        raw.execute("ALTER TABLE predictions DROP COLUMN client")
        raw.execute("ALTER TABLE predictions DROP COLUMN margin")
        raw.execute("ALTER TABLE predictions DROP COLUMN proba")
        raw.execute("DROP TABLE labelled_emails")
    store = SQLiteEventLog(path)
    assert store.get_prediction("old1") == event("old1", user_key="u", ts="2026-01-05T09:00:00+00:00")
    store.record_predictions([event("new1", proba={"billing": 0.6, "sales": 0.4})])
    got = store.get_prediction("new1")
    assert got is not None and got.proba == {"billing": 0.6, "sales": 0.4}
    assert store.record_labelled([LabelledEmail("k1", ts(0), "billing", "s", "b")]) == 1
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def _routed(request_id: str, at: float, top: float, **fields: Any) -> PredictionEvent:
    rest = round(1 - top, 6)
    return event(request_id, at=at, confidence=top, proba={"billing": top, "shipping": rest}, **fields)


def test_unlabelled_lists_triage_newest_first_and_routed_by_lowest_margin(log: EventLog) -> None:
    log.record_predictions(
        [
            _routed("sure", 1, 0.95, subject="Invoice", body="copy please"),
            _routed("unsure", 2, 0.55, subject="Parcel", body="where is it"),
            _routed("middling", 3, 0.7, subject="Refund", body="CAFÉ order"),
            _routed("judged", 4, 0.51),  # has feedback below: not listed
            event("t-old", at=5, queue="triage", confidence=0.4, reason="low_confidence", subject="help"),
            event("t-new", at=6, queue="triage", confidence=0.3, reason="low_confidence", subject="Hilfe"),
            event("t-failed", at=7, queue="triage", confidence=0.0, fallback=True, reason="all_arms_failed"),
        ]
    )
    log.record_feedback(feedback("judged"))
    routed = log.unlabelled(triage_queue="triage", triaged=False)
    assert [p.request_id for p in routed] == ["unsure", "middling", "sure"]
    triaged = log.unlabelled(triage_queue="triage", triaged=True)
    assert [p.request_id for p in triaged] == ["t-failed", "t-new", "t-old"]
    assert [p.request_id for p in log.unlabelled(triage_queue="triage", triaged=True, limit=1)] == ["t-failed"]
    assert [p.request_id for p in log.unlabelled(triage_queue="triage", triaged=False, since=ts(1.5))] == [
        "unsure",
        "middling",
    ]
    # A search matches subject or body, ignoring case beyond ASCII too; % and _ are plain characters.
    assert [p.request_id for p in log.unlabelled(triage_queue="triage", triaged=False, query="café")] == ["middling"]
    assert [p.request_id for p in log.unlabelled(triage_queue="triage", triaged=True, query="HILFE")] == ["t-new"]
    assert log.unlabelled(triage_queue="triage", triaged=False, query="%") == []


def test_feedback_frame_holds_only_judged_emails(log: EventLog) -> None:
    log.record_predictions([_routed("a", 1, 0.9), _routed("b", 2, 0.8), _routed("c", 3, 0.7)])
    log.record_feedback(feedback("b", "shipping", source="audit"))
    frame = log.feedback_frame()
    assert frame["request_id"].tolist() == ["b"]
    assert frame["true_queue"].tolist() == ["shipping"] and frame["feedback_source"].tolist() == ["audit"]
    assert frame["proba"].tolist() == [{"billing": 0.8, "shipping": 0.2}]
    assert log.feedback_frame(since=ts(2.5)).empty


def test_labelled_emails_are_stored_once_per_key(log: EventLog) -> None:
    first = LabelledEmail("mail-1", ts(0), "billing", "Invoice", "copy please", email_id="mail-1", origin="old.csv")
    assert log.record_labelled([first, LabelledEmail("h2", ts(1), "sales", "Quote", "for 50 seats")]) == 2
    assert log.record_labelled([LabelledEmail("mail-1", ts(2), "technical", "x", "y")]) == 0  # a re-import
    frame = log.labelled_frame()
    assert frame["key"].tolist() == ["mail-1", "h2"] and frame["label"].tolist() == ["billing", "sales"]
    assert frame.iloc[0]["origin"] == "old.csv"
    assert log.stats().predictions == 0  # imported labels are not predictions: exposure never moves
    with pytest.raises(EventLogError):
        LabelledEmail("", ts(0), "billing", None, None)


def test_a_probability_outside_0_and_1_is_refused() -> None:
    with pytest.raises(EventLogError, match="probability"):
        event("r1", proba={"billing": 1.5})


def test_a_version_3_file_gains_the_client_and_a_per_client_email_id(tmp_path: Path) -> None:
    path = tmp_path / "ev.db"
    SQLiteEventLog(path).close()
    with sqlite3.connect(path) as raw:  # the version-3 layout: no client, email_id unique across all clients
        raw.execute("UPDATE schema_version SET version = 3")
        raw.execute("DROP INDEX predictions_client_email_id")
        raw.execute("ALTER TABLE predictions DROP COLUMN client")
        raw.execute("CREATE UNIQUE INDEX predictions_email_id ON predictions (email_id) WHERE email_id IS NOT NULL")
        raw.execute(
            "INSERT INTO predictions (request_id, ts, user_key, arm, model_name, model_version, queue, confidence, "
            "fallback, reason, latency_ms, in_experiment, email_id) VALUES ('old1', '2026-01-05T09:00:00.000000+00:00',"
            " 'u', 'linear', 'linear', '3', 'billing', 0.9, 0, 'confident', 4.5, 0, 'm1')"
        )
    store = SQLiteEventLog(path)
    store.record_predictions([event("new1", email_id="m1", client="gateway-a")])  # the old global index is gone
    assert store.get_prediction("new1") is not None and store.get_prediction("old1") is not None
    old = store.find_by_email_id("m1", "")
    assert old is not None and old.request_id == "old1" and old.client is None
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_failed_commit_does_not_wedge_the_connection(tmp_path: Path) -> None:
    # Before issue 9 a COMMIT that failed (a full disk) left the thread's connection inside its transaction, and
    # every later write on that thread failed with "cannot start a transaction within a transaction".
    store = SQLiteEventLog(tmp_path / "ev.db")
    store.record_predictions([event("r0")])
    real = store._conn()

    class CommitFails:
        def __init__(self) -> None:
            self.failed = False

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    store._local.conn = CommitFails()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.record_predictions([event("r1")])
    store.record_predictions([event("r2")])  # the same thread, the same connection
    assert store.get_prediction("r2") is not None and store.get_prediction("r1") is None
    store.close()


def test_shared_state_documents_are_replaced_whole_and_read_back_as_copies(log: EventLog) -> None:
    assert log.read_state("experiment") is None
    log.write_state("experiment", {"name": "e1", "arms": {"a": 0.5}})
    log.write_state("policy", {"confidence_threshold": 0.6})
    log.write_state("experiment", {"name": "e2"})  # a replacement, not a merge
    got = log.read_state("experiment")
    assert got == {"name": "e2"}
    got["name"] = "edited by the caller"
    assert log.read_state("experiment") == {"name": "e2"} and log.read_state("policy") == {"confidence_threshold": 0.6}


def test_the_audit_log_keeps_order_gives_the_newest_and_refuses_a_record_without_its_who(log: EventLog) -> None:
    for i in range(5):
        log.record_audit({"ts": f"2026-01-0{i + 1}T09:00:00+00:00", "actor": f"ana{i}", "kind": "experiment", "n": i})
    assert [r["n"] for r in log.audit_records()] == [0, 1, 2, 3, 4]
    assert [r["n"] for r in log.audit_records(limit=2)] == [3, 4]
    assert log.audit_records(limit=0) == []
    for bad in ({"actor": "x", "kind": "experiment"}, {"ts": "2026-01-01T00:00:00+00:00", "actor": "", "kind": "k"}):
        with pytest.raises(EventLogError, match="audit record"):
            log.record_audit(bad)
    assert len(log.audit_records()) == 5


def test_a_change_lands_whole_or_not_at_all(log: EventLog) -> None:
    line = {"ts": "2026-01-01T09:00:00+00:00", "actor": "ana", "kind": "rollout"}
    log.record_change({"experiment": {"name": "e1"}, "rollout": {"step": 1}}, [line, {**line, "kind": "policy"}])
    assert log.read_state("rollout") == {"step": 1}
    assert [r["kind"] for r in log.audit_records()] == ["rollout", "policy"]
    with pytest.raises(EventLogError, match="audit record"):  # one bad line: neither document changes
        log.record_change({"experiment": {"name": "e2"}, "rollout": {"step": 2}}, [line, {"actor": "x", "kind": "k"}])
    assert log.read_state("experiment") == {"name": "e1"} and log.read_state("rollout") == {"step": 1}
    assert len(log.audit_records()) == 2


def test_the_change_lock_excludes_a_second_holder_and_may_be_released_by_another_thread(log: EventLog) -> None:
    first, second = log.change_lock(), log.change_lock()
    first.acquire(timeout=5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        second.acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    releaser = threading.Thread(target=first.release)  # an asyncio caller releases from a worker thread
    releaser.start()
    releaser.join()
    second.acquire(timeout=5)
    second.release()


def test_a_flag_reason_with_what_answered_after_it_is_flagged(log: EventLog) -> None:
    """A rules or cascade arm's reason names what answered after the decision (`low_confidence:rule:refund`): it is
    flagged like a bare `low_confidence`; a reason that only starts with the same letters is not."""
    log.record_predictions(
        [
            event("rule", 1, queue="triage", reason="low_confidence:rule:refund", confidence=0.3),
            event("none", 2, queue="triage", reason="no_rule", confidence=0.1),
            event("other", 3, reason="low_confidencex", confidence=0.9),
            event("like", 4, reason="low%confidence", confidence=0.9),
        ]
    )
    assert [p.request_id for p in log.flagged_predictions()] == ["rule"]
    assert [p.request_id for p in log.flagged_predictions(reasons=("low_confidence", "no_rule"))] == ["none", "rule"]
    # A reason asked for with a ':' in it matches the same way on every store (found in review: memory differed).
    log.record_predictions([event("deep", 5, queue="triage", reason="low_confidence:rule:refund:x", confidence=0.2)])
    assert [p.request_id for p in log.flagged_predictions(reasons=("low_confidence:rule",))] == ["deep", "rule"]
