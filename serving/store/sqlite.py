"""The SQLite event log: one file shared by every replica process on a machine (the embedded default store).

It implements `serving.store.eventlog.EventLog`; the contract tests in tests/unit/test_eventlog.py run against it
and against `MemoryEventLog`, and a multi-process test writes into one file from two processes at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from serving.store.eventlog import (
    JOINED_COLUMNS,
    LABELLED_COLUMNS,
    LOG_LEVELS,
    PREDICTION_COLUMNS,
    ChangeLock,
    EventLogError,
    FeedbackEvent,
    FeedbackResult,
    LabelledEmail,
    LogRecord,
    LogStats,
    MonitorVerdict,
    PredictionEvent,
    StoreUnavailableError,
    TextBlanked,
    UnknownRequestError,
    UserDeletion,
    UserRecords,
    audit_fields,
    copy_shadow,
    level_number,
    margin_of,
    matches,
    to_frame,
    ts_bounds,
    user_keys_given,
    utc_now,
)

SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, user_key TEXT NOT NULL, arm TEXT NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, queue TEXT NOT NULL, confidence REAL NOT NULL,
    fallback INTEGER NOT NULL, reason TEXT NOT NULL, latency_ms REAL NOT NULL, experiment TEXT,
    in_experiment INTEGER NOT NULL, secondary_queue TEXT, email_id TEXT, subject TEXT, body TEXT, shadow TEXT,
    proba TEXT, margin REAL, client TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_arm ON predictions (arm);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY REFERENCES predictions (request_id), ts TEXT NOT NULL,
    true_queue TEXT NOT NULL, handling_seconds REAL, agent_id TEXT, source TEXT NOT NULL DEFAULT 'agent'
);
"""
# Version 2: where feedback came from (agent, audit, labelling), component logs, monitoring verdicts.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, component TEXT NOT NULL, level TEXT NOT NULL,
    level_no INTEGER NOT NULL, message TEXT NOT NULL, request_id TEXT, email_id TEXT
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts);
CREATE INDEX IF NOT EXISTS logs_component_ts ON logs (component, ts);
CREATE INDEX IF NOT EXISTS logs_level_ts ON logs (level_no, ts);
CREATE INDEX IF NOT EXISTS logs_request_id ON logs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS logs_email_id ON logs (email_id) WHERE email_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS monitor_verdicts (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, ts TEXT NOT NULL, job TEXT NOT NULL, scope TEXT NOT NULL,
    "check" TEXT NOT NULL, alarm INTEGER NOT NULL, window_start TEXT NOT NULL, window_end TEXT NOT NULL,
    score REAL, threshold REAL, report TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS monitor_verdicts_ts ON monitor_verdicts (ts);
"""
# Version 3: the model's probability vector (and the margin between its top two queues) with each prediction, and
# labelled emails with no prediction behind them (imports of an old helpdesk's assignments).
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS labelled_emails (
    key TEXT PRIMARY KEY, ts TEXT NOT NULL, label TEXT NOT NULL, subject TEXT, body TEXT, email_id TEXT,
    agent_id TEXT, origin TEXT
);
"""
# Version 4: the client (token holder) that routed each email; an email_id is unique within one client's emails.
_SCHEMA_V4 = """
CREATE UNIQUE INDEX IF NOT EXISTS predictions_client_email_id ON predictions (ifnull(client, ''), email_id)
    WHERE email_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS predictions_email_id_any ON predictions (email_id) WHERE email_id IS NOT NULL;
"""
# Version 5: the state every replica on every node must share (the running experiment's layout, the runtime policy,
# the rollout) as one JSON document per key, and the audit log of changes.
_SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS shared_state (key TEXT PRIMARY KEY, ts TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
"""
_MIGRATE_1_TO_2 = ("ALTER TABLE feedback ADD COLUMN source TEXT NOT NULL DEFAULT 'agent'",)
_MIGRATE_2_TO_3 = ("ALTER TABLE predictions ADD COLUMN proba TEXT", "ALTER TABLE predictions ADD COLUMN margin REAL")
_MIGRATE_3_TO_4 = ("ALTER TABLE predictions ADD COLUMN client TEXT", "DROP INDEX IF EXISTS predictions_email_id")
_LABELLED_COLS = ", ".join(LABELLED_COLUMNS)
_FEEDBACK_COLS = "request_id, ts, true_queue, handling_seconds, agent_id, source"
_LOG_COLS = "ts, component, level, message, request_id, email_id"
_VERDICT_COLS = 'run_id, ts, job, scope, "check", alarm, window_start, window_end, score, threshold, report, detail'
_P_COLS = ", ".join(PREDICTION_COLUMNS)
_P_SELECT = ", ".join(f"p.{c}" for c in PREDICTION_COLUMNS)
# ON CONFLICT rather than INSERT OR IGNORE: OR IGNORE would also silently skip NOT NULL violations.
_INSERT_PREDICTION = (
    f"INSERT INTO predictions ({_P_COLS}, margin) VALUES ({', '.join('?' * (len(PREDICTION_COLUMNS) + 1))}) "
    "ON CONFLICT DO NOTHING"  # a repeated request_id or email_id: the first record stands
)


def _prediction_params(e: PredictionEvent) -> tuple[Any, ...]:
    # getattr, not dataclasses.asdict: asdict deep-copies every field and halved the insert rate.
    row = {c: getattr(e, c) for c in PREDICTION_COLUMNS}
    row.update(fallback=int(e.fallback), in_experiment=int(e.in_experiment))
    row["shadow"] = None if e.shadow is None else json.dumps(e.shadow)
    row["proba"] = None if e.proba is None else json.dumps(e.proba)
    return (*(row[c] for c in PREDICTION_COLUMNS), margin_of(e.proba))


def _prediction_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d.update(fallback=bool(d["fallback"]), in_experiment=bool(d["in_experiment"]))
    for key in ("shadow", "proba"):
        d[key] = None if d[key] is None else json.loads(d[key])
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
            # Deleted rows (a user's records, pruned logs) are overwritten, not left in free pages to be read back.
            conn.execute("PRAGMA secure_delete = ON")
            conn.create_function("mr_contains", 3, lambda q, a, b: matches(q, a, b), deterministic=True)
        except sqlite3.DatabaseError as err:  # not a database file, no permission, a read-only disk
            if conn is not None:
                conn.close()
            raise StoreUnavailableError(f"cannot open event log {self.path}: {err}") from None
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
            conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (a full disk): a connection left inside the transaction would fail
            # every later write on this thread.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _init_schema(self) -> None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            version = None
            if row is not None:
                found = conn.execute("SELECT version FROM schema_version").fetchone()
                version = None if found is None else int(found["version"])
            if version is not None and version > SCHEMA_VERSION:
                raise EventLogError(
                    f"event log {self.path} has schema version {version}; this mailroute reads versions up to "
                    f"{SCHEMA_VERSION} (upgrade mailroute)"
                )
            # An upgrade in place, in the same transaction: nothing is lost.
            steps = (
                *(_MIGRATE_1_TO_2 if version == 1 else ()),
                *(_MIGRATE_2_TO_3 if version in (1, 2) else ()),
                *(_MIGRATE_3_TO_4 if version in (1, 2, 3) else ()),
            )
            for step in steps:
                conn.execute(step)
            for statement in (_SCHEMA + _SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4 + _SCHEMA_V5).split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

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

    def find_by_email_id(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        if client is None:  # any client's (a search)
            sql = f"SELECT {_P_COLS} FROM predictions WHERE email_id = ? ORDER BY ts, rowid LIMIT 1"
            return _prediction(self._conn().execute(sql, (email_id,)).fetchone())
        sql = (
            f"SELECT {_P_COLS} FROM predictions WHERE ifnull(client, '') = ? AND email_id = ? "
            "ORDER BY ts, rowid LIMIT 1"
        )
        return _prediction(self._conn().execute(sql, (client, email_id)).fetchone())

    def get_prediction(self, request_id: str) -> PredictionEvent | None:
        sql = f"SELECT {_P_COLS} FROM predictions WHERE request_id = ?"
        return _prediction(self._conn().execute(sql, (request_id,)).fetchone())

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        with self._write() as conn:
            _require_prediction(conn, event.request_id)
            cursor = conn.execute(
                f"INSERT INTO feedback ({_FEEDBACK_COLS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO NOTHING",
                (event.request_id, event.ts, event.true_queue, event.handling_seconds, event.agent_id, event.source),
            )
            if cursor.rowcount == 1:
                return FeedbackResult(created=True, event=event)
            row = conn.execute(
                f"SELECT {_FEEDBACK_COLS} FROM feedback WHERE request_id = ?", (event.request_id,)
            ).fetchone()
        return FeedbackResult(created=False, event=FeedbackEvent(**dict(row)))

    def get_feedback(self, request_id: str) -> FeedbackEvent | None:
        sql = f"SELECT {_FEEDBACK_COLS} FROM feedback WHERE request_id = ?"
        row = self._conn().execute(sql, (request_id,)).fetchone()
        return None if row is None else FeedbackEvent(**dict(row))

    def flagged_predictions(
        self, *, since: str | None = None, reasons: Sequence[str] = ("low_confidence",), limit: int = 100
    ) -> list[PredictionEvent]:
        lo, _ = ts_bounds(since, None)
        # Newest first along the ts index, stopping at `limit`: no scan of the whole log when flags are common.
        # A reason, or a reason with what answered after it (`low_confidence:rule:refund`).
        match = " OR ".join(["reason = ? OR substr(reason, 1, ?) = ?"] * len(reasons)) or "0"
        args = [a for r in reasons for a in (r, len(r) + 1, f"{r}:")]
        sql = (
            f"SELECT {_P_COLS} FROM predictions WHERE ts >= ? AND (fallback = 1 OR {match}) "
            "ORDER BY ts DESC, rowid DESC LIMIT ?"
        )
        rows = self._conn().execute(sql, (lo, *args, int(limit)))
        return [PredictionEvent(**_prediction_dict(row)) for row in rows]

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
            f"SELECT {_P_SELECT}, f.ts AS feedback_ts, f.true_queue, f.handling_seconds, f.agent_id, "
            "f.source AS feedback_source "
            "FROM predictions p LEFT JOIN feedback f USING (request_id) "
            "WHERE p.ts >= ? AND p.ts < ? ORDER BY p.ts, p.rowid"
        )
        return to_frame(self._select(sql, since, until), JOINED_COLUMNS)

    def feedback_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        sql = (
            f"SELECT {_P_SELECT}, f.ts AS feedback_ts, f.true_queue, f.handling_seconds, f.agent_id, "
            "f.source AS feedback_source "
            "FROM predictions p JOIN feedback f USING (request_id) "
            "WHERE p.ts >= ? AND p.ts < ? ORDER BY p.ts, p.rowid"
        )
        return to_frame(self._select(sql, since, until), JOINED_COLUMNS)

    def unlabelled(
        self,
        *,
        triage_queue: str,
        triaged: bool,
        since: str | None = None,
        query: str | None = None,
        limit: int = 50,
    ) -> list[PredictionEvent]:
        lo, _ = ts_bounds(since, None)
        where = ["p.ts >= ?", "p.queue = ?" if triaged else "p.queue != ?",
                 "NOT EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = p.request_id)"]  # fmt: skip
        params: list[Any] = [lo, triage_queue]
        if query:
            where.append("mr_contains(?, p.subject, p.body)")  # case-insensitive beyond ASCII, unlike LIKE
            params.append(query)
        order = "p.ts DESC, p.rowid DESC" if triaged else "p.margin IS NULL, p.margin, p.ts DESC"
        sql = f"SELECT {_P_SELECT} FROM predictions p WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        return [PredictionEvent(**_prediction_dict(row)) for row in self._conn().execute(sql, (*params, int(limit)))]

    def record_labelled(self, records: Sequence[LabelledEmail]) -> int:
        rows = [tuple(getattr(r, c) for c in LABELLED_COLUMNS) for r in records]
        if not rows:
            return 0
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT INTO labelled_emails ({_LABELLED_COLS}) VALUES ({', '.join('?' * len(LABELLED_COLUMNS))}) "
                "ON CONFLICT (key) DO NOTHING",
                rows,
            )
            return int(conn.total_changes - before)

    def labelled_frame(self) -> pd.DataFrame:
        sql = f"SELECT {_LABELLED_COLS} FROM labelled_emails ORDER BY ts, rowid"
        return pd.DataFrame([dict(r) for r in self._conn().execute(sql)], columns=LABELLED_COLUMNS)

    def record_logs(self, records: Sequence[LogRecord]) -> None:
        rows = [(r.ts, r.component, r.level, LOG_LEVELS[r.level], r.message, r.request_id, r.email_id) for r in records]
        if rows:
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO logs (ts, component, level, level_no, message, request_id, email_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def logs(
        self,
        *,
        since: str | None = None,
        min_level: str = "WARNING",
        component: str | None = None,
        request_id: str | None = None,
        email_id: str | None = None,
        limit: int = 200,
    ) -> list[LogRecord]:
        lo, _ = ts_bounds(since, None)
        where, params = ["ts >= ?", "level_no >= ?"], [lo, level_number(min_level)]
        if component is not None:
            where.append("component = ?")
            params.append(component)
        ids = [(col, v) for col, v in (("request_id", request_id), ("email_id", email_id)) if v is not None]
        if ids:
            where.append("(" + " OR ".join(f"{col} = ?" for col, _ in ids) + ")")
            params.extend(v for _, v in ids)
        sql = f"SELECT {_LOG_COLS} FROM logs WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC LIMIT ?"
        return [LogRecord(**dict(row)) for row in self._conn().execute(sql, (*params, int(limit)))]

    def prune_logs(self, before: str) -> int:
        cut, _ = ts_bounds(before, None)
        with self._write() as conn:
            return int(conn.execute("DELETE FROM logs WHERE ts < ?", (cut,)).rowcount)

    # ---- privacy: a user's records (export, deletion) and text retention ----
    def user_records(self, user_keys: Sequence[str]) -> UserRecords:
        keys = user_keys_given(user_keys)
        whose = f"user_key IN ({', '.join('?' * len(keys))})"
        mine = f"SELECT request_id FROM predictions WHERE {whose}"
        # An email_id is one client's key: one that another user's prediction also carries is not this user's alone.
        others = f"SELECT email_id FROM predictions WHERE email_id IS NOT NULL AND NOT ({whose})"
        ids = f"SELECT email_id FROM predictions WHERE {whose} AND email_id IS NOT NULL AND email_id NOT IN ({others})"
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot while replicas keep writing
        try:
            rows = conn.execute(f"SELECT {_P_COLS} FROM predictions WHERE {whose} ORDER BY ts, rowid", keys)
            predictions = tuple(PredictionEvent(**_prediction_dict(row)) for row in rows)
            rows = conn.execute(f"SELECT {_FEEDBACK_COLS} FROM feedback WHERE request_id IN ({mine})", keys)
            feedback = {row["request_id"]: FeedbackEvent(**dict(row)) for row in rows}
            sql = f"SELECT {_LABELLED_COLS} FROM labelled_emails WHERE email_id IN ({ids}) ORDER BY ts, rowid"
            labelled = tuple(LabelledEmail(**dict(row)) for row in conn.execute(sql, (*keys, *keys)))
            rows = conn.execute(
                f"SELECT {_LOG_COLS} FROM logs WHERE request_id IN ({mine}) "
                f"OR (request_id IS NULL AND email_id IN ({ids})) ORDER BY ts, id",
                (*keys, *keys, *keys),
            )
            logs = tuple(LogRecord(**dict(row)) for row in rows)
        finally:
            conn.execute("COMMIT")
        return UserRecords(predictions, feedback, labelled, logs)

    def delete_user_records(self, user_keys: Sequence[str]) -> UserDeletion:
        keys = user_keys_given(user_keys)
        with self._write() as conn:
            # The user's emails, found once (a scan of predictions: there is no index on user_key, and deletions are
            # rare); every delete below goes by key or by an index.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS privacy_gone (request_id TEXT PRIMARY KEY, email_id TEXT)")
            conn.execute("DELETE FROM temp.privacy_gone")
            conn.execute(
                "INSERT INTO temp.privacy_gone SELECT request_id, email_id FROM predictions "
                f"WHERE user_key IN ({', '.join('?' * len(keys))})",
                keys,
            )
            gone = "SELECT request_id FROM temp.privacy_gone"
            # An email_id is one client's key: one that a prediction of someone else carries is not the user's alone.
            gone_ids = (
                "SELECT email_id FROM temp.privacy_gone WHERE email_id IS NOT NULL AND email_id NOT IN "
                "(SELECT email_id FROM predictions WHERE email_id IS NOT NULL "
                "AND request_id NOT IN (SELECT request_id FROM temp.privacy_gone))"
            )
            request_ids = tuple(row[0] for row in conn.execute(f"{gone} ORDER BY request_id"))
            shadow = conn.execute(
                f"SELECT COUNT(*) FROM predictions WHERE shadow IS NOT NULL AND request_id IN ({gone})"
            ).fetchone()[0]
            feedback = conn.execute(f"DELETE FROM feedback WHERE request_id IN ({gone})").rowcount
            labelled = conn.execute(f"DELETE FROM labelled_emails WHERE email_id IN ({gone_ids})").rowcount
            logs = conn.execute(
                f"DELETE FROM logs WHERE request_id IN ({gone}) OR (request_id IS NULL AND email_id IN ({gone_ids}))"
            ).rowcount
            predictions = conn.execute(f"DELETE FROM predictions WHERE request_id IN ({gone})").rowcount
            conn.execute("DELETE FROM temp.privacy_gone")
        self._checkpoint()
        return UserDeletion(request_ids, int(predictions), int(feedback), int(shadow), int(labelled), int(logs))

    def blank_text(self, before: str) -> TextBlanked:
        cut, _ = ts_bounds(before, None)
        text = "ts < ? AND (subject IS NOT NULL OR body IS NOT NULL)"  # what is blank already is not counted again
        with self._write() as conn:
            predictions = conn.execute(f"UPDATE predictions SET subject = NULL, body = NULL WHERE {text}", (cut,))
            labelled = conn.execute(f"UPDATE labelled_emails SET subject = NULL, body = NULL WHERE {text}", (cut,))
        self._checkpoint()
        return TextBlanked(int(predictions.rowcount), int(labelled.rowcount))

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the file and empty it, so deleted text is not left in the WAL either (best
        effort: a reader holding an old snapshot defers it to the next checkpoint)."""
        with contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def record_verdicts(self, verdicts: Sequence[MonitorVerdict]) -> None:
        rows = [
            (v.run_id, v.ts, v.job, v.scope, v.check, int(v.alarm), v.window_start, v.window_end, v.score,
             v.threshold, v.report, v.detail)
            for v in verdicts
        ]  # fmt: skip
        if rows:
            with self._write() as conn:
                conn.executemany(f"INSERT INTO monitor_verdicts ({_VERDICT_COLS}) VALUES ({', '.join('?' * 12)})", rows)

    def verdicts(self, *, job: str | None = None, since: str | None = None, limit: int = 1000) -> list[MonitorVerdict]:
        lo, _ = ts_bounds(since, None)
        where, params = ["ts >= ?"], [lo]
        if job is not None:
            where.append("job = ?")
            params.append(job)
        sql = f"SELECT {_VERDICT_COLS} FROM monitor_verdicts WHERE {' AND '.join(where)} ORDER BY ts DESC, id LIMIT ?"
        out = []
        for row in self._conn().execute(sql, (*params, int(limit))):
            d = dict(row)
            d["alarm"] = bool(d["alarm"])
            out.append(MonitorVerdict(**d))
        return out

    def read_state(self, key: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT doc FROM shared_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(json.loads(row["doc"]))

    def write_state(self, key: str, doc: dict[str, Any]) -> None:
        self.record_change({key: doc}, ())

    def record_audit(self, record: dict[str, Any]) -> None:
        self.record_change({}, (record,))

    def record_change(self, states: Mapping[str, dict[str, Any]], audit: Sequence[dict[str, Any]]) -> None:
        rows = [(*audit_fields(record), json.dumps(record)) for record in audit]
        now = utc_now()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO shared_state (key, ts, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET ts = excluded.ts, doc = excluded.doc",
                [(key, now, json.dumps(doc)) for key, doc in states.items()],
            )
            conn.executemany("INSERT INTO audit (ts, actor, kind, record) VALUES (?, ?, ?, ?)", rows)

    def audit_records(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT record FROM audit ORDER BY id DESC" + ("" if limit is None else " LIMIT ?")
        rows = self._conn().execute(sql, () if limit is None else (int(limit),)).fetchall()
        return [json.loads(row["record"]) for row in reversed(rows)]

    def change_lock(self) -> ChangeLock:
        return FileLock(str(self.path.with_name(f".{self.path.name}.change.lock")), thread_local=False)

    @property
    def sql_url(self) -> str | None:
        return f"sqlite:///{self.path.absolute()}"

    def close(self) -> None:
        """Close every thread's connection; later calls raise EventLogError."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
