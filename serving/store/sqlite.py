"""The SQLite event log: one file shared by every replica process on a machine (the embedded default store).

It implements `serving.store.eventlog.EventLog`; the contract tests in tests/unit/test_eventlog.py run against it
and against `MemoryEventLog`, and a multi-process test writes into one file from two processes at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from serving.store.eventlog import (
    JOINED_COLUMNS,
    PREDICTION_COLUMNS,
    EventLogError,
    FeedbackEvent,
    FeedbackResult,
    LogStats,
    PredictionEvent,
    UnknownRequestError,
    copy_shadow,
    to_frame,
    ts_bounds,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, user_key TEXT NOT NULL, arm TEXT NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, queue TEXT NOT NULL, confidence REAL NOT NULL,
    fallback INTEGER NOT NULL, reason TEXT NOT NULL, latency_ms REAL NOT NULL, experiment TEXT,
    in_experiment INTEGER NOT NULL, secondary_queue TEXT, email_id TEXT, subject TEXT, body TEXT, shadow TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_arm ON predictions (arm);
CREATE UNIQUE INDEX IF NOT EXISTS predictions_email_id ON predictions (email_id) WHERE email_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY REFERENCES predictions (request_id), ts TEXT NOT NULL,
    true_queue TEXT NOT NULL, handling_seconds REAL, agent_id TEXT
);
"""
_P_COLS = ", ".join(PREDICTION_COLUMNS)
_P_SELECT = ", ".join(f"p.{c}" for c in PREDICTION_COLUMNS)
# ON CONFLICT rather than INSERT OR IGNORE: OR IGNORE would also silently skip NOT NULL violations.
_INSERT_PREDICTION = (
    f"INSERT INTO predictions ({_P_COLS}) VALUES ({', '.join('?' * len(PREDICTION_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"  # a repeated request_id or email_id: the first record stands
)


def _prediction_params(e: PredictionEvent) -> tuple[Any, ...]:
    # getattr, not dataclasses.asdict: asdict deep-copies every field and halved the insert rate.
    row = {c: getattr(e, c) for c in PREDICTION_COLUMNS}
    row.update(fallback=int(e.fallback), in_experiment=int(e.in_experiment))
    row["shadow"] = None if e.shadow is None else json.dumps(e.shadow)
    return tuple(row[c] for c in PREDICTION_COLUMNS)


def _prediction_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d.update(fallback=bool(d["fallback"]), in_experiment=bool(d["in_experiment"]))
    d["shadow"] = None if d["shadow"] is None else json.loads(d["shadow"])
    return d


def _prediction(row: sqlite3.Row | None) -> PredictionEvent | None:
    return None if row is None else PredictionEvent(**_prediction_dict(row))


def _require_prediction(conn: sqlite3.Connection, request_id: str) -> None:
    if conn.execute("SELECT 1 FROM predictions WHERE request_id = ?", (request_id,)).fetchone() is None:
        raise UnknownRequestError(request_id)


class SQLiteEventLog:
    """The event log in one SQLite file, safe for several threads and several processes (replicas) at once.

    WAL mode lets readers run beside the single writer; every write is one short `BEGIN IMMEDIATE` transaction
    (taking the write lock up front, so two writers queue on `busy_timeout` instead of failing on a lock
    upgrade); `synchronous=NORMAL` makes a commit survive a process crash, though the last commits may be lost
    on a power cut. Each thread gets its own connection.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        if str(path) == ":memory:":
            raise EventLogError("an in-memory SQLite event log is not shared between threads; use memory://")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EventLogError(f"cannot create the folder of event log {self.path}: {err}") from None
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._closed = False
        self._forget_connections()
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def _forget_connections(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # busy_timeout first: the journal_mode switch itself may have to wait for another process.
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as err:  # not a database file, no permission, a read-only disk
            if conn is not None:
                conn.close()
            raise EventLogError(f"cannot open event log {self.path}: {err}") from None
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL while another process does the same can fail with "database is locked"
        # at once: SQLite does not always call the busy handler for this pragma. Retry within the busy timeout.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise EventLogError(f"event log {self.path} is closed")
        if os.getpid() != self._pid:
            # A forked child must not use the parent's connections (SQLite forbids it); open its own.
            self._forget_connections()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] != SCHEMA_VERSION:
                raise EventLogError(
                    f"event log {self.path} has schema version {row['version']}; this mailroute reads "
                    f"version {SCHEMA_VERSION}"
                )

    def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
        params = [_prediction_params(e) for e in events]
        if params:
            with self._write() as conn:
                conn.executemany(_INSERT_PREDICTION, params)

    def record_shadow(self, request_id: str, shadow: dict[str, Any]) -> None:
        text = json.dumps(copy_shadow(shadow))
        with self._write() as conn:
            _require_prediction(conn, request_id)
            conn.execute(
                "UPDATE predictions SET shadow = ? WHERE request_id = ? AND shadow IS NULL",
                (text, request_id),
            )

    def find_by_email_id(self, email_id: str) -> PredictionEvent | None:
        sql = f"SELECT {_P_COLS} FROM predictions WHERE email_id = ? ORDER BY ts, rowid LIMIT 1"
        return _prediction(self._conn().execute(sql, (email_id,)).fetchone())

    def get_prediction(self, request_id: str) -> PredictionEvent | None:
        sql = f"SELECT {_P_COLS} FROM predictions WHERE request_id = ?"
        return _prediction(self._conn().execute(sql, (request_id,)).fetchone())

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        with self._write() as conn:
            _require_prediction(conn, event.request_id)
            cursor = conn.execute(
                "INSERT INTO feedback (request_id, ts, true_queue, handling_seconds, agent_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                (event.request_id, event.ts, event.true_queue, event.handling_seconds, event.agent_id),
            )
            if cursor.rowcount == 1:
                return FeedbackResult(created=True, event=event)
            row = conn.execute("SELECT * FROM feedback WHERE request_id = ?", (event.request_id,)).fetchone()
        return FeedbackResult(created=False, event=FeedbackEvent(**dict(row)))

    def stats(self) -> LogStats:
        conn = self._conn()

        def counts(sql: str) -> dict[str, int]:
            return {row[0]: row[1] for row in conn.execute(sql)}

        # One read transaction, so every number comes from the same snapshot while replicas keep writing.
        conn.execute("BEGIN")
        try:
            total = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            fb_total, fb_correct = conn.execute(
                "SELECT COUNT(*), SUM(f.true_queue = p.queue) FROM feedback f JOIN predictions p USING (request_id)"
            ).fetchone()
            return LogStats(
                predictions=total,
                feedback=fb_total,
                by_arm=counts("SELECT arm, COUNT(*) FROM predictions GROUP BY arm"),
                by_queue=counts("SELECT queue, COUNT(*) FROM predictions GROUP BY queue"),
                by_fallback_reason=counts("SELECT reason, COUNT(*) FROM predictions WHERE fallback GROUP BY reason"),
                feedback_accuracy=fb_correct / fb_total if fb_total else None,
            )
        finally:
            conn.execute("COMMIT")

    def _select(self, sql: str, since: str | None, until: str | None) -> list[dict[str, Any]]:
        lo, hi = ts_bounds(since, until)
        return [_prediction_dict(row) for row in self._conn().execute(sql, (lo, hi))]

    def predictions_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        sql = f"SELECT {_P_COLS} FROM predictions WHERE ts >= ? AND ts < ? ORDER BY ts, rowid"
        return to_frame(self._select(sql, since, until), PREDICTION_COLUMNS)

    def joined_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        sql = (
            f"SELECT {_P_SELECT}, f.ts AS feedback_ts, f.true_queue, f.handling_seconds, f.agent_id "
            "FROM predictions p LEFT JOIN feedback f USING (request_id) "
            "WHERE p.ts >= ? AND p.ts < ? ORDER BY p.ts, p.rowid"
        )
        return to_frame(self._select(sql, since, until), JOINED_COLUMNS)

    def close(self) -> None:
        """Close every thread's connection; later calls raise EventLogError."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
