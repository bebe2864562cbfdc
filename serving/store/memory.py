"""The event log in Python lists: for unit tests of other modules and demos; thread-safe, gone with the process."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import pandas as pd

from serving.store.eventlog import (
    JOINED_COLUMNS,
    LABELLED_COLUMNS,
    LOG_LEVELS,
    PREDICTION_COLUMNS,
    ChangeLock,
    FeedbackEvent,
    FeedbackResult,
    LabelledEmail,
    LogRecord,
    LogStats,
    MonitorVerdict,
    PredictionEvent,
    TextBlanked,
    UnknownRequestError,
    UserDeletion,
    UserRecords,
    about,
    about_any,
    audit_fields,
    copy_shadow,
    level_number,
    margin_of,
    matches,
    to_frame,
    ts_bounds,
    user_keys_given,
)


class MemoryEventLog:
    """The event log in a Python list: for tests and demos; thread-safe, gone when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._predictions: dict[str, PredictionEvent] = {}  # insertion-ordered, like SQLite's rowid
        self._feedback: dict[str, FeedbackEvent] = {}
        self._logs: list[LogRecord] = []
        self._verdicts: list[MonitorVerdict] = []
        self._labelled: dict[str, LabelledEmail] = {}
        self._state: dict[str, str] = {}  # JSON text, so a caller's later edits never reach the store
        self._audit: list[str] = []
        self._change_lock = _ThreadLock()

    def record_predictions(self, events: Sequence[PredictionEvent]) -> None:
        copies = [
            replace(e, shadow=copy_shadow(e.shadow), proba=None if e.proba is None else dict(e.proba)) for e in events
        ]
        with self._lock:
            for event in copies:
                if event.email_id is not None and any(
                    (e.client, e.email_id) == (event.client, event.email_id) for e in self._predictions.values()
                ):
                    continue  # like SQLite's unique (client, email_id) index: the first record stands
                self._predictions.setdefault(event.request_id, event)

    def record_shadow(self, request_id: str, shadow: dict[str, Any]) -> None:
        copy = copy_shadow(shadow)
        with self._lock:
            event = self._predictions.get(request_id)
            if event is None:
                raise UnknownRequestError(request_id)
            if event.shadow is None:
                self._predictions[request_id] = replace(event, shadow=copy)

    def find_by_email_id(self, email_id: str, client: str | None = None) -> PredictionEvent | None:
        with self._lock:
            found = [e for e in self._predictions.values() if e.email_id == email_id and client in (None, e.client)]
        return min(found, key=lambda e: e.ts) if found else None

    def get_prediction(self, request_id: str) -> PredictionEvent | None:
        with self._lock:
            return self._predictions.get(request_id)

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        with self._lock:
            if event.request_id not in self._predictions:
                raise UnknownRequestError(event.request_id)
            stored = self._feedback.setdefault(event.request_id, event)
        return FeedbackResult(created=stored is event, event=stored)

    def get_feedback(self, request_id: str) -> FeedbackEvent | None:
        with self._lock:
            return self._feedback.get(request_id)

    def flagged_predictions(
        self, *, since: str | None = None, reasons: Sequence[str] = ("low_confidence",), limit: int = 100
    ) -> list[PredictionEvent]:
        lo, _ = ts_bounds(since, None)
        with self._lock:
            newest_stored_first = reversed(list(self._predictions.values()))
            found = [p for p in newest_stored_first if p.ts >= lo and (p.fallback or _flagged(p.reason, reasons))]
        return sorted(found, key=lambda p: p.ts, reverse=True)[:limit]  # stable: ties stay newest-stored first

    def stats(self) -> LogStats:
        with self._lock:
            preds = list(self._predictions.values())
            feedback = list(self._feedback.values())
            correct = sum(f.true_queue == self._predictions[f.request_id].queue for f in feedback)
        return LogStats(
            predictions=len(preds),
            feedback=len(feedback),
            by_arm=dict(Counter(p.arm for p in preds)),
            by_queue=dict(Counter(p.queue for p in preds)),
            by_fallback_reason=dict(Counter(p.reason for p in preds if p.fallback)),
            feedback_accuracy=correct / len(feedback) if feedback else None,
        )

    def _rows(
        self, since: str | None, until: str | None, joined: bool, only_feedback: bool = False
    ) -> list[dict[str, Any]]:
        lo, hi = ts_bounds(since, until)
        with self._lock:
            preds = sorted((p for p in self._predictions.values() if lo <= p.ts < hi), key=lambda p: p.ts)
            rows = []
            for p in preds:
                row = asdict(p)
                if only_feedback and p.request_id not in self._feedback:
                    continue
                if joined:
                    fb = self._feedback.get(p.request_id)
                    row.update(
                        feedback_ts=fb.ts if fb else None,
                        true_queue=fb.true_queue if fb else None,
                        handling_seconds=fb.handling_seconds if fb else None,
                        agent_id=fb.agent_id if fb else None,
                        feedback_source=fb.source if fb else None,
                    )
                rows.append(row)
        return rows

    def predictions_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        return to_frame(self._rows(since, until, joined=False), PREDICTION_COLUMNS)

    def joined_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        return to_frame(self._rows(since, until, joined=True), JOINED_COLUMNS)

    def feedback_frame(self, since: str | None = None, until: str | None = None) -> pd.DataFrame:
        return to_frame(self._rows(since, until, joined=True, only_feedback=True), JOINED_COLUMNS)

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
        with self._lock:
            found = [
                p
                for p in reversed(list(self._predictions.values()))  # newest stored first, like rowid DESC
                if p.ts >= lo
                and (p.queue == triage_queue) == triaged
                and p.request_id not in self._feedback
                and matches(query, p.subject, p.body)
            ]
        found.sort(key=lambda p: p.ts, reverse=True)
        if not triaged:  # lowest margin first; a stable sort keeps the newest first among equals
            found.sort(key=lambda p: (margin_of(p.proba) is None, margin_of(p.proba) or 0.0))
        return found[:limit]

    def record_labelled(self, records: Sequence[LabelledEmail]) -> int:
        with self._lock:
            before = len(self._labelled)
            for record in records:
                self._labelled.setdefault(record.key, record)
            return len(self._labelled) - before

    def labelled_frame(self) -> pd.DataFrame:
        with self._lock:
            rows = sorted(self._labelled.values(), key=lambda r: r.ts)
        return pd.DataFrame([asdict(r) for r in rows], columns=LABELLED_COLUMNS)

    def record_logs(self, records: Sequence[LogRecord]) -> None:
        with self._lock:
            self._logs.extend(records)

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
        floor = level_number(min_level)
        with self._lock:
            found = [
                r
                for r in self._logs
                if r.ts >= lo
                and LOG_LEVELS[r.level] >= floor
                and (component is None or r.component == component)
                and about(r, request_id, email_id)
            ]
        return sorted(found, key=lambda r: r.ts, reverse=True)[:limit]

    def prune_logs(self, before: str) -> int:
        cut, _ = ts_bounds(before, None)
        with self._lock:
            kept = [r for r in self._logs if r.ts >= cut]
            gone, self._logs = len(self._logs) - len(kept), kept
        return gone

    def _mine(self, user_keys: Sequence[str]) -> tuple[list[PredictionEvent], set[str], set[str]]:
        """The predictions of these pseudonyms (oldest first), their request_ids, and their email_ids that no other
        user's prediction carries (an email_id is one client's key: another client may use the same); under the
        lock."""
        keys = set(user_keys_given(user_keys))
        found = sorted((p for p in self._predictions.values() if p.user_key in keys), key=lambda p: p.ts)
        others = {p.email_id for p in self._predictions.values() if p.user_key not in keys}
        ids = {p.email_id for p in found if p.email_id is not None and p.email_id not in others}
        return found, {p.request_id for p in found}, ids

    def user_records(self, user_keys: Sequence[str]) -> UserRecords:
        with self._lock:
            found, request_ids, email_ids = self._mine(user_keys)
            feedback = {r: self._feedback[r] for r in request_ids if r in self._feedback}
            labelled = sorted((r for r in self._labelled.values() if r.email_id in email_ids), key=lambda r: r.ts)
            logs = sorted((r for r in self._logs if about_any(r, request_ids, email_ids)), key=lambda r: r.ts)
        return UserRecords(tuple(found), feedback, tuple(labelled), tuple(logs))

    def delete_user_records(self, user_keys: Sequence[str]) -> UserDeletion:
        with self._lock:
            found, request_ids, email_ids = self._mine(user_keys)
            feedback = [r for r in request_ids if self._feedback.pop(r, None) is not None]
            labelled = [k for k, r in self._labelled.items() if r.email_id in email_ids]
            for key in labelled:
                del self._labelled[key]
            kept = [r for r in self._logs if not about_any(r, request_ids, email_ids)]
            logs, self._logs = len(self._logs) - len(kept), kept
            for request_id in request_ids:
                del self._predictions[request_id]
        shadow = sum(p.shadow is not None for p in found)
        return UserDeletion(tuple(sorted(request_ids)), len(found), len(feedback), shadow, len(labelled), logs)

    def blank_text(self, before: str) -> TextBlanked:
        cut, _ = ts_bounds(before, None)
        with self._lock:
            old = [p for p in self._predictions.values() if p.ts < cut and (p.subject, p.body) != (None, None)]
            for p in old:
                self._predictions[p.request_id] = replace(p, subject=None, body=None)
            imported = [r for r in self._labelled.values() if r.ts < cut and (r.subject, r.body) != (None, None)]
            for r in imported:
                self._labelled[r.key] = replace(r, subject=None, body=None)
        return TextBlanked(len(old), len(imported))

    def record_verdicts(self, verdicts: Sequence[MonitorVerdict]) -> None:
        with self._lock:
            self._verdicts.extend(verdicts)

    def verdicts(self, *, job: str | None = None, since: str | None = None, limit: int = 1000) -> list[MonitorVerdict]:
        lo, _ = ts_bounds(since, None)
        with self._lock:
            found = [v for v in self._verdicts if v.ts >= lo and (job is None or v.job == job)]
        return sorted(found, key=lambda v: v.ts, reverse=True)[:limit]

    def read_state(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._state.get(key)
        return None if doc is None else dict(json.loads(doc))

    def write_state(self, key: str, doc: dict[str, Any]) -> None:
        self.record_change({key: doc}, ())

    def record_audit(self, record: dict[str, Any]) -> None:
        self.record_change({}, (record,))

    def record_change(self, states: Mapping[str, dict[str, Any]], audit: Sequence[dict[str, Any]]) -> None:
        for record in audit:
            audit_fields(record)
        docs = {key: json.dumps(doc) for key, doc in states.items()}
        lines = [json.dumps(record) for record in audit]
        with self._lock:
            self._state.update(docs)
            self._audit.extend(lines)

    def audit_records(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            texts = self._audit[-limit:] if limit else ([] if limit == 0 else list(self._audit))
        return [json.loads(t) for t in texts]

    def change_lock(self) -> ChangeLock:
        return self._change_lock

    @property
    def sql_url(self) -> str | None:
        return None

    def close(self) -> None:
        """Nothing to release; kept for the interface."""


class _ThreadLock:
    """The in-process change lock: `acquire(timeout)` raises TimeoutError like the file and database locks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> object:
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError("the change lock stayed taken")
        return self

    def release(self) -> None:
        self._lock.release()


def _flagged(reason: str, reasons: Sequence[str]) -> bool:
    """A reason, or a reason with what answered after it (`low_confidence:rule:refund`)."""
    return any(reason == r or reason.startswith(f"{r}:") for r in reasons)
