"""The event log: an append-only store of routing decisions (predictions) and agent feedback.

Retraining, monitoring and A/B analysis read only from here; if it is not in the log, it did not happen. The
store sits behind the small `EventLog` interface with three implementations: `SQLiteEventLog` (the embedded
default; one file shared by every replica process on a machine), `MemoryEventLog` (in-process, for unit
tests of other modules) and `PostgresEventLog` (`serving.store.postgres`: one database shared by every node, the
multi-node store). `open_event_log(url)` picks one from the store URL.

Writes are idempotent so that retries never double count: a repeated request_id is ignored, and feedback is
first-write-wins per request_id. Replicas write through `serving.store.writer.BufferedWriter`, so that a
request never waits on the disk. Text fields arrive already cut to the text policy
(`serving.store.redact.apply_policy`).

Timestamps are ISO 8601 strings normalised to UTC with microseconds (`2026-01-31T09:15:00.000000+00:00`), so
the store compares them as text and `since`/`until` filters work the same in every implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

import pandas as pd

from serving import clock


class EventLogError(ValueError):
    """Bad input to the event log or an unusable store; the message is one line meant for a person."""


class StoreUnavailableError(EventLogError):
    """The store cannot be reached or opened right now (a missing disk, a full one, a lost server): worth a retry."""


class UnknownRequestError(EventLogError):
    """Feedback or a shadow result for a request_id that has no prediction in the log."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"unknown request_id '{request_id}': no prediction with this id is in the event log")
        self.request_id = request_id


def utc_now() -> str:
    """The current time in the log's timestamp format."""
    return clock.now().isoformat(timespec="microseconds")


def normalize_ts(ts: str) -> str:
    """Parse an ISO 8601 timestamp with a time zone and write it in the log's UTC format."""
    try:
        parsed = datetime.fromisoformat(ts)
    except (TypeError, ValueError):
        raise EventLogError(f"timestamp '{ts}' is not ISO 8601 (e.g. 2026-01-31T09:15:00+00:00)") from None
    if parsed.tzinfo is None:
        raise EventLogError(f"timestamp '{ts}' has no time zone; add +00:00 for UTC")
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


def user_key(salt: str, user_id: str) -> str:
    """The pseudonym the log stores instead of a user id: HMAC-SHA256(salt, user_id), 32 hex characters."""
    if not salt:
        raise EventLogError("user_key: the salt must not be empty (an unsalted hash of an id is reversible)")
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class PredictionEvent:
    """One routing decision, as the response reported it. Text fields are already cut to the text policy."""

    request_id: str
    ts: str
    user_key: str
    arm: str
    model_name: str
    model_version: str
    queue: str
    confidence: float
    fallback: bool
    reason: str
    latency_ms: float
    experiment: str | None = None
    in_experiment: bool = False
    secondary_queue: str | None = None
    email_id: str | None = None  # the client's idempotency key
    subject: str | None = None
    body: str | None = None
    shadow: dict[str, Any] | None = None  # the shadow arm's model, version, queue, confidence, latency_ms
    # The model's whole probability vector, queue -> probability (None when no model answered): what the threshold
    # what-if and the labelling queue's margin are computed from.
    proba: dict[str, float] | None = None
    # The token holder that routed it: an email_id is an idempotency key within one client's emails only.
    client: str | None = None

    def __post_init__(self) -> None:
        if not self.request_id:
            raise EventLogError("prediction event: request_id must not be empty")
        if not 0.0 <= self.confidence <= 1.0:
            raise EventLogError(f"prediction {self.request_id}: confidence {self.confidence} is outside [0, 1]")
        if self.proba is not None and not all(
            isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in self.proba.values()
        ):
            raise EventLogError(f"prediction {self.request_id}: a probability is not a number in [0, 1]")
        if self.latency_ms < 0:
            raise EventLogError(f"prediction {self.request_id}: latency_ms {self.latency_ms} is negative")
        if self.in_experiment and not self.experiment:
            raise EventLogError(f"prediction {self.request_id}: in_experiment is set but experiment is empty")
        object.__setattr__(self, "ts", normalize_ts(self.ts))


def margin_of(proba: dict[str, float] | None) -> float | None:
    """Top probability minus the runner-up's: how sure the model was between its two best queues (None: unknown)."""
    if not proba or len(proba) < 2:
        return None
    first, second = sorted(proba.values(), reverse=True)[:2]
    return round(first - second, 6)


# Where a feedback record comes from: an agent handling the email (corrections far outnumber confirmations), a
# random audit of routed emails (unbiased: every sampled email gets a verdict), or the labelling view.
FEEDBACK_SOURCES = ("agent", "audit", "labelling")


@dataclass(frozen=True)
class FeedbackEvent:
    """An agent's verdict on one routed email: the queue it belonged in and how long it took to handle."""

    request_id: str
    ts: str
    true_queue: str
    handling_seconds: float | None = None
    agent_id: str | None = None
    source: str = "agent"  # one of FEEDBACK_SOURCES

    def __post_init__(self) -> None:
        if not self.request_id or not self.true_queue:
            raise EventLogError("feedback event: request_id and true_queue must not be empty")
        if self.handling_seconds is not None and self.handling_seconds < 0:
            raise EventLogError(f"feedback {self.request_id}: handling_seconds is negative")
        if self.source not in FEEDBACK_SOURCES:
            raise EventLogError(
                f"feedback {self.request_id}: source '{self.source}' is not one of {', '.join(FEEDBACK_SOURCES)}"
            )
        object.__setattr__(self, "ts", normalize_ts(self.ts))


LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


@dataclass(frozen=True)
class LogRecord:
    """One log line of one component, kept in the store so every node's lines reach the dashboard."""

    ts: str
    component: str  # e.g. "router", "arm-linear", "event-writer", "monitor"
    level: str  # a key of LOG_LEVELS
    message: str
    request_id: str | None = None
    email_id: str | None = None

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise EventLogError(f"log record: level '{self.level}' is not one of {', '.join(LOG_LEVELS)}")
        if not self.component:
            raise EventLogError("log record: component must not be empty")
        object.__setattr__(self, "ts", normalize_ts(self.ts))


@dataclass(frozen=True)
class MonitorVerdict:
    """One check of one monitoring run: did it alarm, on what score against what threshold, over which window."""

    run_id: str  # shared by every check of one run
    ts: str  # when the run finished
    job: str  # e.g. "drift"
    scope: str  # an arm name, or "all" for all traffic
    check: str  # e.g. "text_drift", "prediction_drift", "confidence_drift", "accuracy"
    alarm: bool
    window_start: str
    window_end: str
    score: float | None = None
    threshold: float | None = None
    report: str | None = None  # path of the full report (HTML)
    detail: str | None = None  # one line in words; the reason when a check was skipped

    def __post_init__(self) -> None:
        if not self.run_id or not self.check or not self.scope:
            raise EventLogError("monitor verdict: run_id, scope and check must not be empty")
        for name in ("ts", "window_start", "window_end"):
            object.__setattr__(self, name, normalize_ts(getattr(self, name)))


@dataclass(frozen=True)
class LabelledEmail:
    """A labelled email with no prediction behind it (`mailroute label import`: the old helpdesk's assignments).

    Kept apart from predictions so that exposure and the daily counts never move; retraining reads both. `key` makes
    an import idempotent: the email_id when the file has one, else a hash of subject, body and label.
    """

    key: str
    ts: str  # when it was imported
    label: str
    subject: str | None
    body: str | None
    email_id: str | None = None
    agent_id: str | None = None
    origin: str | None = None  # the file it came from

    def __post_init__(self) -> None:
        if not self.key or not self.label:
            raise EventLogError("labelled email: key and label must not be empty")
        object.__setattr__(self, "ts", normalize_ts(self.ts))


@dataclass(frozen=True)
class FeedbackResult:
    created: bool  # False: feedback for this request_id was already stored; `event` is the stored one
    event: FeedbackEvent


@dataclass(frozen=True)
class LogStats:
    predictions: int
    feedback: int
    by_arm: dict[str, int]
    by_queue: dict[str, int]
    by_fallback_reason: dict[str, int]  # only rows with fallback set
    feedback_accuracy: float | None  # share of feedback whose true_queue equals the routed queue


@dataclass(frozen=True)
class UserRecords:
    """What the log holds about one user's emails (`user_records`): what `mailroute privacy export` writes."""

    predictions: tuple[PredictionEvent, ...]  # oldest first, each with its shadow result
    feedback: dict[str, FeedbackEvent]  # by request_id
    labelled: tuple[LabelledEmail, ...]  # imported labels of the same emails (the same email_id)
    logs: tuple[LogRecord, ...]  # component log lines about those emails, oldest first

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(p.request_id for p in self.predictions)


@dataclass(frozen=True)
class UserDeletion:
    """What `delete_user_records` removed, in one transaction."""

    request_ids: tuple[str, ...]
    predictions: int
    feedback: int
    shadow: int  # shadow results (they are stored with their prediction, so they went with it)
    labelled: int
    logs: int


@dataclass(frozen=True)
class TextBlanked:
    """What `blank_text` emptied: rows whose subject and body were set to NULL (no row is deleted)."""

    predictions: int
    labelled: int


PREDICTION_COLUMNS = [f.name for f in fields(PredictionEvent)]
FEEDBACK_COLUMNS = ["feedback_ts", "true_queue", "handling_seconds", "agent_id", "feedback_source"]
JOINED_COLUMNS = PREDICTION_COLUMNS + FEEDBACK_COLUMNS
LABELLED_COLUMNS = [f.name for f in fields(LabelledEmail)]


class EventLog(Protocol):
    """What serving writes and analysis reads. Every implementation passes tests/unit/test_eventlog.py."""

    def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
        """Append a batch; an event whose request_id is already stored is ignored."""

    def record_shadow(self, request_id: str, shadow: dict[str, Any]) -> None:
        """Attach a shadow result to a stored prediction (first result wins); raises UnknownRequestError."""

    def find_by_email_id(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        """The first prediction stored for a client's email_id, to answer a repeated email the same way."""

    def get_prediction(self, request_id: str) -> PredictionEvent | None: ...

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        """Store feedback once per request_id; raises UnknownRequestError for an unknown request_id."""

    def get_feedback(self, request_id: str) -> FeedbackEvent | None:
        """The feedback stored for a request_id, if any."""

    def flagged_predictions(
        self, *, since: str | None = None, reasons: Sequence[str] = ("low_confidence",), limit: int = 100
    ) -> list[PredictionEvent]:
        """Predictions answered by a fallback or decided with one of `reasons`, newest first (for triage views)."""

    def stats(self) -> LogStats: ...

    def predictions_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        """Predictions with since <= ts < until, oldest first, one column per PredictionEvent field."""

    def joined_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        """predictions_frame LEFT JOIN feedback on request_id (feedback columns empty where none came)."""

    def feedback_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        """Like joined_frame, but only the predictions that have feedback (what retraining learns from)."""

    def unlabelled(
        self,
        *,
        triage_queue: str,
        triaged: bool,
        since: str | None = None,
        query: str | None = None,
        limit: int = 50,
    ) -> list[PredictionEvent]:
        """Predictions nobody has given feedback on yet. `triaged`: those sent to `triage_queue`, newest first;
        else the auto-routed ones whose top two queues were closest first (lowest margin: the most uncertain).
        `query`: only emails whose subject or body contains it (case-insensitive)."""

    def record_labelled(self, records: Sequence[LabelledEmail]) -> int:
        """Store imported labelled emails; a key already stored is skipped. Returns how many were new."""

    def labelled_frame(self) -> pd.DataFrame:
        """Every imported labelled email, oldest first, one column per LabelledEmail field."""

    def record_logs(self, records: Sequence[LogRecord]) -> None:
        """Append component log records."""

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
        """Log records at or above `min_level`, newest first; with request_id/email_id, those about that email."""

    def prune_logs(self, before: str) -> int:
        """Delete component log records older than `before` (their retention); returns how many went."""

    def user_records(self, user_keys: Sequence[str]) -> UserRecords:
        """Every prediction stored under one of `user_keys` (a user's pseudonyms under each salt), with its feedback,
        the imported labelled emails of the same email_ids, and the component log lines about those emails."""

    def delete_user_records(self, user_keys: Sequence[str]) -> UserDeletion:
        """Delete, all or nothing, what `user_records` finds. With retention, the log's only deletion."""

    def blank_text(self, before: str) -> TextBlanked:
        """Retention: set subject and body to NULL on predictions (and imported labelled emails) stored before
        `before`; every other field stays, so counts and KPIs do not move. Idempotent."""

    def record_verdicts(self, verdicts: Sequence[MonitorVerdict]) -> None:
        """Append the verdict rows of a monitoring run."""

    def verdicts(self, *, job: str | None = None, since: str | None = None, limit: int = 1000) -> list[MonitorVerdict]:
        """Verdict rows, newest run first."""

    def read_state(self, key: str) -> dict[str, Any] | None:
        """The shared state document `key` (STATE_KEYS), or None when none was written."""

    def write_state(self, key: str, doc: dict[str, Any]) -> None:
        """Replace the document `key` in one transaction: every replica on every node reads the old or the new."""

    def record_audit(self, record: dict[str, Any]) -> None:
        """Append one change (a dict with `ts`, `actor` and `kind`, and what changed) to the audit log."""

    def record_change(self, states: Mapping[str, dict[str, Any]], audit: Sequence[dict[str, Any]]) -> None:
        """Replace the documents in `states` and append the `audit` records in one transaction: a runtime change
        (the layout, the rollout, the line that explains them) lands whole or not at all."""

    def audit_records(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first; with `limit`, only the newest `limit` records."""

    def change_lock(self) -> ChangeLock:
        """The lock every runtime change holds from reading the live config to recording the change, across all
        the processes and nodes that share this store."""

    @property
    def sql_url(self) -> str | None:
        """A SQLAlchemy URL of the same database, for analysis queries that aggregate in SQL; None if it has none."""

    def close(self) -> None: ...


class ChangeLock(Protocol):
    """A lock that one thread may take and another release (asyncio callers use worker threads)."""

    def acquire(self, timeout: float) -> object:
        """Take the lock, waiting at most `timeout` seconds; TimeoutError when it stays taken."""

    def release(self) -> None: ...


STATE_KEYS = ("experiment", "policy", "rollout")  # the shared state documents (serving.ops.state, rollout state)


def audit_fields(record: dict[str, Any]) -> tuple[str, str, str]:
    """(ts, actor, kind) of an audit record, checked: a record without them is refused, not stored."""
    try:
        ts, actor, kind = (record[k] for k in ("ts", "actor", "kind"))
    except KeyError as err:
        raise EventLogError(f"audit record: missing {err}") from None
    if not all(isinstance(v, str) and v for v in (ts, actor, kind)):
        raise EventLogError("audit record: ts, actor and kind must be non-empty text")
    return normalize_ts(ts), actor, kind


def url_label(url: str) -> str:
    """A store URL fit to show (a log line, the dashboard, an error): no password and no query string (where
    `?password=` or an sslpassword may sit)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.netloc:  # a file (sqlite:///path) or memory://: nothing secret but a query
        return url.split("?", 1)[0]
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username
    return urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, "", ""))


def url_has_password(url: str) -> bool:
    """Whether a store URL carries a password: in its user part or as a query parameter."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    query = {k.lower() for k in parse_qs(parts.query, keep_blank_values=True)}
    return parts.password is not None or bool(query & {"password", "sslpassword"})


def ts_bounds(since: str | None, until: str | None) -> tuple[str, str]:
    """The [low, high) text range of normalised timestamps a since/until filter selects (for stores)."""
    # Normalised timestamps compare correctly as text; these sentinels sort below and above all of them.
    return (normalize_ts(since) if since else "", normalize_ts(until) if until else "\uffff")


def matches(query: str | None, *texts: str | None) -> bool:
    """Whether any text contains `query` (case-insensitive); no query matches everything."""
    if not query:
        return True
    q = query.casefold()
    return any(q in t.casefold() for t in texts if t)


def to_frame(rows: Sequence[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows (dicts keyed by column) as a frame with the same dtypes whichever store produced them."""
    df = pd.DataFrame(list(rows), columns=columns)
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df = df.astype({"fallback": bool, "in_experiment": bool, "confidence": float, "latency_ms": float})
    if "feedback_ts" in df:
        df["feedback_ts"] = pd.to_datetime(df["feedback_ts"], utc=True, format="ISO8601")
        df["handling_seconds"] = df["handling_seconds"].astype(float)
    return df


def level_number(level: str) -> int:
    """The numeric level of a level name (case-insensitive); an unknown name is an EventLogError."""
    number = LOG_LEVELS.get(level.upper())
    if number is None:
        raise EventLogError(f"log level '{level}' is not one of {', '.join(LOG_LEVELS)}")
    return number


def about(record: LogRecord, request_id: str | None, email_id: str | None) -> bool:
    """Whether a log record concerns the given email (either id matching; no ids given matches every record)."""
    if request_id is None and email_id is None:
        return True
    return (request_id is not None and record.request_id == request_id) or (
        email_id is not None and record.email_id == email_id
    )


def about_any(record: LogRecord, request_ids: set[str], email_ids: set[str]) -> bool:
    """Whether a log line concerns one of these emails: it names one of the request_ids, or (a line written before
    the email had a request_id) one of the email_ids."""
    if record.request_id is not None:
        return record.request_id in request_ids
    return record.email_id is not None and record.email_id in email_ids


def user_keys_given(user_keys: Sequence[str]) -> list[str]:
    """The pseudonyms to look for, checked: at least one, none empty (an empty list must not mean 'everyone')."""
    keys = list(dict.fromkeys(user_keys))
    if not keys or not all(keys):
        raise EventLogError("user records: give at least one user_key, and no empty one")
    return keys


def copy_shadow(shadow: dict[str, Any] | None) -> dict[str, Any] | None:
    # A JSON round trip both checks the result is storable and detaches it from the caller's dict.
    try:
        return None if shadow is None else json.loads(json.dumps(shadow))
    except (TypeError, ValueError) as err:
        raise EventLogError(f"shadow result cannot be stored as JSON: {err}") from None


def open_event_log(url: str) -> EventLog:
    """The store a URL names: `sqlite:///path.db` (or a bare path), `postgresql://user:pw@host:port/db` or
    `memory://`."""
    # Imported here: the store modules import this one for the event types.
    from serving.store.memory import MemoryEventLog
    from serving.store.sqlite import SQLiteEventLog

    if url == "memory://":
        return MemoryEventLog()
    scheme, sep, rest = url.partition("://")

    if not sep:
        return SQLiteEventLog(url)
    if scheme == "sqlite":
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute/path.db
        path = rest.removeprefix("/")
        if not path:
            raise EventLogError(f"event log URL '{url}' names no file; use sqlite:///path/to/events.db")
        return SQLiteEventLog(path)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from serving.store.postgres import PostgresEventLog

        return PostgresEventLog(url)
    raise EventLogError(
        f"event log URL: unknown scheme '{scheme}'; use sqlite:///path.db, postgresql://... or memory://"
    )
