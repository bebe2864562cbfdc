"""The PostgreSQL event log: one database shared by every replica on every node (the multi-node store).

It implements `serving.store.eventlog.EventLog` with the same promises as the SQLite file, and the contract tests in
tests/unit/test_eventlog.py run against both (and against a real server). SQL goes through SQLAlchemy Core on the
psycopg 3 driver; SQLAlchemy's pool keeps a few connections per process (`pool_pre_ping` replaces one the server
dropped). The tables are declared once below; `schema_version` holds the same version number as the SQLite file's,
and a new version adds its step to `_MIGRATIONS` (applied in one transaction under an advisory lock, so replicas
starting together neither race nor half-migrate).

Choices that keep both backends alike:
- timestamps are the log's normalised ISO 8601 UTC text, compared as text (as in SQLite), so `since`/`until` and
  the analysis queries read the same in both;
- `shadow` and `proba` are JSON text; booleans are real booleans (SQLAlchemy renders `= true` for both);
- insertion order is an identity column `seq` (SQLite's rowid);
- one prediction per request_id (primary key) and per (client, email_id) (a unique expression index): racing
  writers from any node keep exactly one, through `ON CONFLICT DO NOTHING`.

A server that cannot be reached, or that goes away, is a `StoreUnavailableError` (one line, no password): the event
writer keeps the records and retries, and `/readyz` says the store is failing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

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
    to_frame,
    ts_bounds,
    url_label,
    user_keys_given,
    utc_now,
)

SCHEMA_VERSION = 5  # the SQLite file's number: both backends hold the same tables at the same version
_ADVISORY_LOCK = 0x6D61696C726F7574  # "mailrout": schema creation and migrations, one process at a time
_CHANGE_LOCK = 0x6D61696C63686E67  # "mailchng": the runtime-change lock (`change_lock`)
# version -> the statements that bring version-1 to it; a version that only adds tables needs none (create_all).
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

META = sa.MetaData()
_TEXT, _FLOAT = sa.Text(), sa.Float(precision=53)
PREDICTIONS = sa.Table(
    "predictions", META,
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("request_id", _TEXT, primary_key=True),
    sa.Column("ts", _TEXT, nullable=False), sa.Column("user_key", _TEXT, nullable=False),
    sa.Column("arm", _TEXT, nullable=False), sa.Column("model_name", _TEXT, nullable=False),
    sa.Column("model_version", _TEXT, nullable=False), sa.Column("queue", _TEXT, nullable=False),
    sa.Column("confidence", _FLOAT, nullable=False), sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("reason", _TEXT, nullable=False), sa.Column("latency_ms", _FLOAT, nullable=False),
    sa.Column("experiment", _TEXT), sa.Column("in_experiment", sa.Boolean, nullable=False),
    sa.Column("secondary_queue", _TEXT), sa.Column("email_id", _TEXT), sa.Column("subject", _TEXT),
    sa.Column("body", _TEXT), sa.Column("shadow", _TEXT), sa.Column("proba", _TEXT), sa.Column("margin", _FLOAT),
    sa.Column("client", _TEXT),
)  # fmt: skip
sa.Index("predictions_ts", PREDICTIONS.c.ts, PREDICTIONS.c.seq)
sa.Index("predictions_arm", PREDICTIONS.c.arm)
sa.Index("predictions_user_key", PREDICTIONS.c.user_key)
sa.Index(
    "predictions_client_email_id", sa.func.coalesce(PREDICTIONS.c.client, ""), PREDICTIONS.c.email_id,
    unique=True, postgresql_where=PREDICTIONS.c.email_id.isnot(None),
)  # fmt: skip
sa.Index("predictions_email_id_any", PREDICTIONS.c.email_id, postgresql_where=PREDICTIONS.c.email_id.isnot(None))
FEEDBACK = sa.Table(
    "feedback", META,
    sa.Column("request_id", _TEXT, sa.ForeignKey("predictions.request_id"), primary_key=True),
    sa.Column("ts", _TEXT, nullable=False), sa.Column("true_queue", _TEXT, nullable=False),
    sa.Column("handling_seconds", _FLOAT), sa.Column("agent_id", _TEXT),
    sa.Column("source", _TEXT, nullable=False, server_default="agent"),
)  # fmt: skip
LOGS = sa.Table(
    "logs", META,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("ts", _TEXT, nullable=False), sa.Column("component", _TEXT, nullable=False),
    sa.Column("level", _TEXT, nullable=False), sa.Column("level_no", sa.Integer, nullable=False),
    sa.Column("message", _TEXT, nullable=False), sa.Column("request_id", _TEXT), sa.Column("email_id", _TEXT),
)  # fmt: skip
sa.Index("logs_ts", LOGS.c.ts)
sa.Index("logs_component_ts", LOGS.c.component, LOGS.c.ts)
sa.Index("logs_level_ts", LOGS.c.level_no, LOGS.c.ts)
sa.Index("logs_request_id", LOGS.c.request_id, postgresql_where=LOGS.c.request_id.isnot(None))
sa.Index("logs_email_id", LOGS.c.email_id, postgresql_where=LOGS.c.email_id.isnot(None))
VERDICTS = sa.Table(
    "monitor_verdicts", META,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("run_id", _TEXT, nullable=False), sa.Column("ts", _TEXT, nullable=False),
    sa.Column("job", _TEXT, nullable=False), sa.Column("scope", _TEXT, nullable=False),
    sa.Column("check", _TEXT, nullable=False), sa.Column("alarm", sa.Boolean, nullable=False),
    sa.Column("window_start", _TEXT, nullable=False), sa.Column("window_end", _TEXT, nullable=False),
    sa.Column("score", _FLOAT), sa.Column("threshold", _FLOAT), sa.Column("report", _TEXT),
    sa.Column("detail", _TEXT),
)  # fmt: skip
sa.Index("monitor_verdicts_ts", VERDICTS.c.ts)
LABELLED = sa.Table(
    "labelled_emails", META,
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("key", _TEXT, primary_key=True), sa.Column("ts", _TEXT, nullable=False),
    sa.Column("label", _TEXT, nullable=False), sa.Column("subject", _TEXT), sa.Column("body", _TEXT),
    sa.Column("email_id", _TEXT), sa.Column("agent_id", _TEXT), sa.Column("origin", _TEXT),
)  # fmt: skip
sa.Index("labelled_emails_email_id", LABELLED.c.email_id)
VERSION = sa.Table("schema_version", META, sa.Column("version", sa.Integer, nullable=False))
# Version 5: the state every replica on every node shares, one JSON document per key, and the audit log.
STATE = sa.Table(
    "shared_state", META,
    sa.Column("key", _TEXT, primary_key=True), sa.Column("ts", _TEXT, nullable=False),
    sa.Column("doc", _TEXT, nullable=False),
)  # fmt: skip
AUDIT = sa.Table(
    "audit", META,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("ts", _TEXT, nullable=False), sa.Column("actor", _TEXT, nullable=False),
    sa.Column("kind", _TEXT, nullable=False), sa.Column("record", _TEXT, nullable=False),
)  # fmt: skip
sa.Index("audit_ts", AUDIT.c.ts)

_P = [PREDICTIONS.c[c] for c in PREDICTION_COLUMNS]
_FEEDBACK_COLS = ("request_id", "ts", "true_queue", "handling_seconds", "agent_id", "source")
_LOG_COLS = ("ts", "component", "level", "message", "request_id", "email_id")
_VERDICT_COLS = ("run_id", "ts", "job", "scope", "check", "alarm", "window_start", "window_end", "score",
                 "threshold", "report", "detail")  # fmt: skip
_JOINED = [
    *_P,
    FEEDBACK.c.ts.label("feedback_ts"),
    FEEDBACK.c.true_queue,
    FEEDBACK.c.handling_seconds,
    FEEDBACK.c.agent_id,
    FEEDBACK.c.source.label("feedback_source"),
]


def driver_url(url: str) -> sa.URL:
    """A postgresql:// (or postgres://) URL on the psycopg 3 driver; a URL naming another driver is refused."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise EventLogError("event log URL is not a valid postgresql:// URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise EventLogError(f"event log URL: driver '{parsed.drivername}' is not supported; use postgresql://")
    return parsed


def _one_line(err: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's SQL echo and background links."""
    inner = getattr(err, "orig", None) or err
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


def _prediction_row(e: PredictionEvent) -> dict[str, Any]:
    row = {c: getattr(e, c) for c in PREDICTION_COLUMNS}
    row["shadow"] = None if e.shadow is None else json.dumps(e.shadow)
    row["proba"] = None if e.proba is None else json.dumps(e.proba)
    row["margin"] = margin_of(e.proba)
    return row


def _prediction_dict(row: sa.Row[Any]) -> dict[str, Any]:
    d = dict(row._mapping)
    for key in ("shadow", "proba"):
        if key in d:
            d[key] = None if d[key] is None else json.loads(d[key])
    return d


def _prediction(row: sa.Row[Any] | None) -> PredictionEvent | None:
    return None if row is None else PredictionEvent(**_prediction_dict(row))


class PostgresEventLog:
    """The event log in a PostgreSQL database, safe for many threads, processes and nodes at once."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: int = 5,
        pool_timeout_s: float = 10.0,
        lock_timeout_s: int = 10,
    ) -> None:
        self._url = driver_url(url)
        self._options = {"pool_size": pool_size, "connect_timeout_s": connect_timeout_s,
                         "pool_timeout_s": pool_timeout_s, "lock_timeout_s": lock_timeout_s}  # fmt: skip
        self._lock = threading.Lock()
        self._closed = False
        self._engine = self._make_engine()
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def _make_engine(self) -> Engine:
        self._pid = os.getpid()
        engine = sa.create_engine(
            self._url,
            pool_size=int(self._options["pool_size"]),
            max_overflow=int(self._options["pool_size"]),
            pool_pre_ping=True,  # a connection the server dropped is replaced, not handed out
            pool_recycle=1800,
            pool_timeout=float(self._options["pool_timeout_s"]),  # every connection busy: give up, a 503
            connect_args={
                "connect_timeout": int(self._options["connect_timeout_s"]),
                "application_name": "mailroute",
                # A server that goes silent (a network partition, a dead host) fails a call within about 30 s
                # instead of leaving it hanging on a socket that never answers: TCP keepalives on idle
                # connections, and a cap on unacknowledged data in flight. (A server process that is stopped but
                # whose host still answers TCP is only seen as a write in flight too long: BufferedWriter's
                # stall_after_s.)
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": 30_000,
            },
        )
        # A row or the schema lock held by a transaction that never ends (a hung client) fails a write after
        # lock_timeout instead of queueing every writer behind it; the server ends a session idle inside a transaction
        # after a minute, releasing what it held. SET on each new connection, not the `options` startup parameter:
        # that would replace a URL's own (`?options=-csearch_path=...`), and PgBouncer refuses it.
        settings = (f"SET lock_timeout = '{int(self._options['lock_timeout_s'])}s'",
                    "SET idle_in_transaction_session_timeout = '60s'")  # fmt: skip

        @sa.event.listens_for(engine, "connect")
        def _session_settings(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cursor:
                for statement in settings:
                    cursor.execute(statement)
            dbapi_conn.commit()  # a SET inside a transaction rolled back later would be undone

        return engine

    def __repr__(self) -> str:
        return f"PostgresEventLog({url_label(self._url.render_as_string(hide_password=True))})"

    # ---- connections ------------------------------------------------------------------------------------------
    def _engine_here(self) -> Engine:
        if self._closed:
            raise EventLogError("the PostgreSQL event log is closed")
        if os.getpid() != self._pid:
            # A forked child must not share the parent's sockets: it opens its own pool.
            with self._lock:
                if os.getpid() != self._pid:
                    self._engine.dispose(close=False)
                    self._engine = self._make_engine()
        return self._engine

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Driver errors as the log's own: a lost or unreachable server is StoreUnavailableError (worth a retry),
        data the database refuses is EventLogError; each one line, with no password in it."""
        try:
            yield
        except sa.exc.TimeoutError:  # the pool's: every connection is in use (calls stuck on a slow server)
            raise StoreUnavailableError(
                f"event log {url_label(self._url.render_as_string(hide_password=True))} is busy: no free connection"
                f" in {self._options['pool_timeout_s']} s"
            ) from None
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
            where = url_label(self._url.render_as_string(hide_password=True))
            raise StoreUnavailableError(f"event log {where} is unavailable: {_one_line(err)}") from None
        except sa.exc.DBAPIError as err:
            if err.connection_invalidated:
                raise StoreUnavailableError(f"event log connection lost: {_one_line(err)}") from None
            raise EventLogError(f"event log refused the write: {_one_line(err)}") from None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._translated(), self._engine_here().begin() as conn:
            yield conn

    @contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A connection for reads; `snapshot`: one REPEATABLE READ transaction, so several queries see one state."""
        with self._translated(), self._engine_here().connect() as conn:
            if snapshot:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _init_schema(self) -> None:
        with self._write() as conn:
            # A migration may wait longer than a write (for a long report to finish reading a table it alters;
            # another replica migrating first): two minutes, then a clear failure of this start.
            conn.execute(sa.text("SET LOCAL lock_timeout = '120s'"))
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK)))
            has_version = sa.inspect(conn).has_table("schema_version")
            version = conn.execute(sa.select(VERSION.c.version)).scalar() if has_version else None
            if version is not None and version > SCHEMA_VERSION:
                raise EventLogError(
                    f"event log has schema version {version}; this mailroute reads versions up to "
                    f"{SCHEMA_VERSION} (upgrade mailroute)"
                )
            for step in range(int(version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS.get(step, ()):
                    conn.execute(sa.text(statement))
            META.create_all(conn, checkfirst=True)
            if version is None:
                conn.execute(VERSION.insert().values(version=SCHEMA_VERSION))
            elif version < SCHEMA_VERSION:
                conn.execute(VERSION.update().values(version=SCHEMA_VERSION))

    # ---- predictions and feedback -----------------------------------------------------------------------------
    def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
        rows = [_prediction_row(e) for e in events]
        if rows:
            with self._write() as conn:
                # A repeated request_id or (client, email_id): the first record stands. Without a conflict target,
                # DO NOTHING covers both unique keys (and never hides a NOT NULL violation).
                conn.execute(pg_insert(PREDICTIONS).on_conflict_do_nothing(), rows)

    def record_shadow(self, request_id: str, shadow: dict[str, Any]) -> None:
        text = json.dumps(copy_shadow(shadow))
        with self._write() as conn:
            self._require_prediction(conn, request_id)
            conn.execute(
                PREDICTIONS.update()
                .where(PREDICTIONS.c.request_id == request_id, PREDICTIONS.c.shadow.is_(None))
                .values(shadow=text)
            )

    @staticmethod
    def _require_prediction(conn: Connection, request_id: str) -> None:
        found = conn.execute(sa.select(sa.literal(1)).where(PREDICTIONS.c.request_id == request_id)).first()
        if found is None:
            raise UnknownRequestError(request_id)

    def find_by_email_id(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        query = sa.select(*_P).where(PREDICTIONS.c.email_id == email_id)
        if client is not None:  # else any client's (a search)
            query = query.where(sa.func.coalesce(PREDICTIONS.c.client, "") == client)
        with self._read() as conn:
            return _prediction(conn.execute(query.order_by(PREDICTIONS.c.ts, PREDICTIONS.c.seq).limit(1)).first())

    def get_prediction(self, request_id: str) -> PredictionEvent | None:
        with self._read() as conn:
            return _prediction(conn.execute(sa.select(*_P).where(PREDICTIONS.c.request_id == request_id)).first())

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        row = {c: getattr(event, c) for c in _FEEDBACK_COLS}
        with self._write() as conn:
            self._require_prediction(conn, event.request_id)
            stored = conn.execute(
                pg_insert(FEEDBACK).on_conflict_do_nothing(index_elements=["request_id"]).returning(FEEDBACK.c.ts),
                row,
            ).first()
            if stored is not None:
                return FeedbackResult(created=True, event=event)
            first = conn.execute(
                sa.select(*(FEEDBACK.c[c] for c in _FEEDBACK_COLS)).where(FEEDBACK.c.request_id == event.request_id)
            ).one()
        return FeedbackResult(created=False, event=FeedbackEvent(**first._mapping))

    def get_feedback(self, request_id: str) -> FeedbackEvent | None:
        query = sa.select(*(FEEDBACK.c[c] for c in _FEEDBACK_COLS)).where(FEEDBACK.c.request_id == request_id)
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else FeedbackEvent(**row._mapping)

    def flagged_predictions(
        self, *, since: str | None = None, reasons: Sequence[str] = ("low_confidence",), limit: int = 100
    ) -> list[PredictionEvent]:
        lo, _ = ts_bounds(since, None)
        query = (
            sa.select(*_P)
            .where(PREDICTIONS.c.ts >= lo, sa.or_(PREDICTIONS.c.fallback, *_reason_is(reasons)))
            .order_by(PREDICTIONS.c.ts.desc(), PREDICTIONS.c.seq.desc())
            .limit(int(limit))
        )
        with self._read() as conn:
            return [PredictionEvent(**_prediction_dict(row)) for row in conn.execute(query)]

    def stats(self) -> LogStats:
        p, f = PREDICTIONS, FEEDBACK

        def counts(conn: Connection, column: Any, *where: Any) -> dict[str, int]:
            query = sa.select(column, sa.func.count()).where(*where).group_by(column)
            return {str(key): int(n) for key, n in conn.execute(query)}

        with self._read(snapshot=True) as conn:  # every number from the same snapshot while replicas keep writing
            total = conn.execute(sa.select(sa.func.count()).select_from(p)).scalar_one()
            right = sa.func.sum(sa.case((f.c.true_queue == p.c.queue, 1), else_=0))
            fb_total, fb_correct = conn.execute(
                sa.select(sa.func.count(), right).select_from(f.join(p, f.c.request_id == p.c.request_id))
            ).one()
            return LogStats(
                predictions=int(total),
                feedback=int(fb_total),
                by_arm=counts(conn, p.c.arm),
                by_queue=counts(conn, p.c.queue),
                by_fallback_reason=counts(conn, p.c.reason, p.c.fallback),
                feedback_accuracy=int(fb_correct) / fb_total if fb_total else None,
            )

    def _frame(self, columns: Sequence[Any], names: list[str], since: str | None, until: str | None,
               join: Any = None) -> pd.DataFrame:  # fmt: skip
        lo, hi = ts_bounds(since, until)
        query = sa.select(*columns).where(PREDICTIONS.c.ts >= lo, PREDICTIONS.c.ts < hi)
        if join is not None:
            query = query.select_from(join)
        with self._read() as conn:
            rows = [_prediction_dict(row) for row in conn.execute(query.order_by(PREDICTIONS.c.ts, PREDICTIONS.c.seq))]
        return to_frame(rows, names)

    def predictions_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        return self._frame(_P, PREDICTION_COLUMNS, since, until)

    def joined_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        join = PREDICTIONS.outerjoin(FEEDBACK, FEEDBACK.c.request_id == PREDICTIONS.c.request_id)
        return self._frame(_JOINED, JOINED_COLUMNS, since, until, join)

    def feedback_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        join = PREDICTIONS.join(FEEDBACK, FEEDBACK.c.request_id == PREDICTIONS.c.request_id)
        return self._frame(_JOINED, JOINED_COLUMNS, since, until, join)

    def unlabelled(
        self,
        *,
        triage_queue: str,
        triaged: bool,
        since: str | None = None,
        query: str | None = None,
        limit: int = 50,
    ) -> list[PredictionEvent]:
        p = PREDICTIONS
        lo, _ = ts_bounds(since, None)
        no_feedback = ~sa.exists().where(FEEDBACK.c.request_id == p.c.request_id)
        where = [p.c.ts >= lo, (p.c.queue == triage_queue) if triaged else (p.c.queue != triage_queue), no_feedback]
        if query:  # a substring, case-insensitive as the database's character type folds case (no LIKE wildcards)
            needle = sa.func.lower(sa.literal(query))
            where.append(sa.or_(*(sa.func.strpos(sa.func.lower(sa.func.coalesce(c, "")), needle) > 0
                                  for c in (p.c.subject, p.c.body))))  # fmt: skip
        order = (p.c.ts.desc(), p.c.seq.desc()) if triaged else (p.c.margin.is_(None), p.c.margin, p.c.ts.desc())
        with self._read() as conn:
            rows = conn.execute(sa.select(*_P).where(*where).order_by(*order).limit(int(limit)))
            return [PredictionEvent(**_prediction_dict(row)) for row in rows]

    # ---- imported labels, component logs, verdicts ------------------------------------------------------------
    def record_labelled(self, records: Sequence[LabelledEmail]) -> int:
        rows = [{c: getattr(r, c) for c in LABELLED_COLUMNS} for r in records]
        if not rows:
            return 0
        with self._write() as conn:
            new = conn.execute(
                pg_insert(LABELLED).on_conflict_do_nothing(index_elements=["key"]).returning(LABELLED.c.key),
                rows,
            )
            return len(new.all())

    def labelled_frame(self) -> pd.DataFrame:
        query = sa.select(*(LABELLED.c[c] for c in LABELLED_COLUMNS)).order_by(LABELLED.c.ts, LABELLED.c.seq)
        with self._read() as conn:
            return pd.DataFrame([dict(r._mapping) for r in conn.execute(query)], columns=LABELLED_COLUMNS)

    def record_logs(self, records: Sequence[LogRecord]) -> None:
        rows = [{**{c: getattr(r, c) for c in _LOG_COLS}, "level_no": LOG_LEVELS[r.level]} for r in records]
        if rows:
            with self._write() as conn:
                conn.execute(LOGS.insert(), rows)

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
        where = [LOGS.c.ts >= lo, LOGS.c.level_no >= level_number(min_level)]
        if component is not None:
            where.append(LOGS.c.component == component)
        ids = [LOGS.c[col] == v for col, v in (("request_id", request_id), ("email_id", email_id)) if v is not None]
        if ids:
            where.append(sa.or_(*ids))
        query = (
            sa.select(*(LOGS.c[c] for c in _LOG_COLS))
            .where(*where)
            .order_by(LOGS.c.ts.desc(), LOGS.c.id.desc())
            .limit(int(limit))
        )
        with self._read() as conn:
            return [LogRecord(**row._mapping) for row in conn.execute(query)]

    def prune_logs(self, before: str) -> int:
        cut, _ = ts_bounds(before, None)
        with self._write() as conn:
            return int(conn.execute(LOGS.delete().where(LOGS.c.ts < cut)).rowcount)

    def record_verdicts(self, verdicts: Sequence[MonitorVerdict]) -> None:
        rows = [{c: getattr(v, c) for c in _VERDICT_COLS} for v in verdicts]
        if rows:
            with self._write() as conn:
                conn.execute(VERDICTS.insert(), rows)

    def verdicts(self, *, job: str | None = None, since: str | None = None, limit: int = 1000) -> list[MonitorVerdict]:
        lo, _ = ts_bounds(since, None)
        where = [VERDICTS.c.ts >= lo] + ([VERDICTS.c.job == job] if job is not None else [])
        query = (
            sa.select(*(VERDICTS.c[c] for c in _VERDICT_COLS))
            .where(*where)
            .order_by(VERDICTS.c.ts.desc(), VERDICTS.c.id)
            .limit(int(limit))
        )
        with self._read() as conn:
            return [MonitorVerdict(**row._mapping) for row in conn.execute(query)]

    # ---- privacy: a user's records (export, deletion) and text retention --------------------------------------
    @staticmethod
    def _mine(keys: list[str]) -> tuple[Any, Any]:
        """The user's request_ids, and the email_ids of the user's that no other user's prediction carries (an
        email_id is one client's key: another client may use the same)."""
        p = PREDICTIONS
        mine = sa.select(p.c.request_id).where(p.c.user_key.in_(keys))
        others = sa.select(p.c.email_id).where(p.c.email_id.isnot(None), p.c.user_key.not_in(keys))
        ids = sa.select(p.c.email_id).where(
            p.c.user_key.in_(keys), p.c.email_id.isnot(None), p.c.email_id.not_in(others)
        )
        return mine, ids

    def user_records(self, user_keys: Sequence[str]) -> UserRecords:
        keys = user_keys_given(user_keys)
        mine, ids = self._mine(keys)
        about = sa.or_(LOGS.c.request_id.in_(mine), sa.and_(LOGS.c.request_id.is_(None), LOGS.c.email_id.in_(ids)))
        with self._read(snapshot=True) as conn:  # one snapshot while replicas keep writing
            rows = conn.execute(
                sa.select(*_P).where(PREDICTIONS.c.user_key.in_(keys)).order_by(PREDICTIONS.c.ts, PREDICTIONS.c.seq)
            )
            predictions = tuple(PredictionEvent(**_prediction_dict(row)) for row in rows)
            rows = conn.execute(
                sa.select(*(FEEDBACK.c[c] for c in _FEEDBACK_COLS)).where(FEEDBACK.c.request_id.in_(mine))
            )
            feedback = {row.request_id: FeedbackEvent(**row._mapping) for row in rows}
            rows = conn.execute(
                sa.select(*(LABELLED.c[c] for c in LABELLED_COLUMNS))
                .where(LABELLED.c.email_id.in_(ids))
                .order_by(LABELLED.c.ts, LABELLED.c.seq)
            )
            labelled = tuple(LabelledEmail(**row._mapping) for row in rows)
            rows = conn.execute(sa.select(*(LOGS.c[c] for c in _LOG_COLS)).where(about).order_by(LOGS.c.ts, LOGS.c.id))
            logs = tuple(LogRecord(**row._mapping) for row in rows)
        return UserRecords(predictions, feedback, labelled, logs)

    def delete_user_records(self, user_keys: Sequence[str]) -> UserDeletion:
        keys = user_keys_given(user_keys)
        p = PREDICTIONS
        with self._write() as conn:
            # The user's rows are locked first, so a feedback or shadow write racing the deletion waits for it.
            gone = conn.execute(
                sa.select(p.c.request_id, p.c.email_id, p.c.shadow.isnot(None))
                .where(p.c.user_key.in_(keys))
                .order_by(p.c.request_id)
                .with_for_update()
            ).all()
            request_ids = [r[0] for r in gone]
            others = sa.select(p.c.email_id).where(p.c.email_id.isnot(None), p.c.user_key.not_in(keys))
            own_ids = sorted({r[1] for r in gone if r[1] is not None})
            shared = set(
                conn.execute(
                    sa.select(p.c.email_id).where(p.c.email_id.in_(own_ids), p.c.email_id.in_(others))
                ).scalars()
            )
            gone_ids = [e for e in own_ids if e not in shared]
            feedback = conn.execute(FEEDBACK.delete().where(FEEDBACK.c.request_id.in_(request_ids))).rowcount
            labelled = conn.execute(LABELLED.delete().where(LABELLED.c.email_id.in_(gone_ids))).rowcount
            logs = conn.execute(
                LOGS.delete().where(
                    sa.or_(
                        LOGS.c.request_id.in_(request_ids),
                        sa.and_(LOGS.c.request_id.is_(None), LOGS.c.email_id.in_(gone_ids)),
                    )
                )
            ).rowcount
            predictions = conn.execute(p.delete().where(p.c.request_id.in_(request_ids))).rowcount
        self._vacuum()
        shadow = sum(1 for r in gone if r[2])
        return UserDeletion(tuple(request_ids), int(predictions), int(feedback), shadow, int(labelled), int(logs))

    def blank_text(self, before: str) -> TextBlanked:
        cut, _ = ts_bounds(before, None)
        with self._write() as conn:
            counts = [
                conn.execute(
                    table.update()
                    .where(table.c.ts < cut, sa.or_(table.c.subject.isnot(None), table.c.body.isnot(None)))
                    .values(subject=None, body=None)
                ).rowcount
                for table in (PREDICTIONS, LABELLED)
            ]
        self._vacuum()
        return TextBlanked(int(counts[0]), int(counts[1]))

    def _vacuum(self) -> None:
        """After a deletion: let VACUUM reclaim the dead row versions, so later writes reuse (overwrite) their
        space (best effort; PostgreSQL gives no secure deletion: `VACUUM FULL` rewrites the tables at once)."""
        try:
            with self._engine_here().connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM predictions, feedback, logs, labelled_emails"
                )
        except sa.exc.DBAPIError:
            pass  # the deletion itself is committed; autovacuum gets to it later

    # ---- shared state and audit ------------------------------------------------------------------------------
    def read_state(self, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            doc = conn.execute(sa.select(STATE.c.doc).where(STATE.c.key == key)).scalar()
        return None if doc is None else dict(json.loads(doc))

    def write_state(self, key: str, doc: dict[str, Any]) -> None:
        self.record_change({key: doc}, ())

    def record_audit(self, record: dict[str, Any]) -> None:
        self.record_change({}, (record,))

    def record_change(self, states: Mapping[str, dict[str, Any]], audit: Sequence[dict[str, Any]]) -> None:
        rows = [dict(zip(("ts", "actor", "kind"), audit_fields(r), strict=True), record=json.dumps(r)) for r in audit]
        now = utc_now()
        with self._write() as conn:
            for key, doc in states.items():
                upsert = pg_insert(STATE).values(key=key, ts=now, doc=json.dumps(doc))
                conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[STATE.c.key], set_={"ts": upsert.excluded.ts, "doc": upsert.excluded.doc}
                    )
                )
            if rows:
                conn.execute(AUDIT.insert(), rows)

    def audit_records(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        query = sa.select(AUDIT.c.record).order_by(AUDIT.c.id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        with self._read() as conn:
            texts = conn.execute(query).scalars().all()
        return [json.loads(t) for t in reversed(texts)]

    def change_lock(self) -> ChangeLock:
        return _AdvisoryLock(self)

    @property
    def sql_url(self) -> str | None:
        return self._url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Close the pool's connections; later calls raise EventLogError."""
        with self._lock:
            self._closed = True
        self._engine.dispose()


def _reason_is(reasons: Sequence[str]) -> list[Any]:
    """A reason, or a reason with what answered after it (`low_confidence:rule:refund`)."""
    column = PREDICTIONS.c.reason
    return [c for r in reasons for c in (column == r, sa.func.substr(column, 1, len(r) + 1) == f"{r}:")]


class _AdvisoryLock:
    """The change lock across every process and node: a PostgreSQL session advisory lock, held on one connection
    of its own from `acquire` to `release` (which may run on another thread). A holder that dies loses its session,
    and with it the lock: a crash never leaves the lock taken."""

    def __init__(self, store: PostgresEventLog) -> None:
        self._store = store
        self._conn: Connection | None = None

    def acquire(self, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        with self._store._translated():
            conn = self._store._engine_here().connect()
            try:
                while not conn.execute(sa.select(sa.func.pg_try_advisory_lock(_CHANGE_LOCK))).scalar():
                    conn.rollback()
                    if time.monotonic() >= deadline:
                        raise TimeoutError("the change lock stayed taken")
                    time.sleep(0.05)
                conn.commit()
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return self

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(_CHANGE_LOCK)))
            conn.commit()
        except sa.exc.DBAPIError:
            conn.invalidate()  # a lost session has released the lock already
        finally:
            conn.close()
