"""A user's records, found by their pseudonym: exported or deleted, with the report files that quote their emails;
and text retention. What each keeps and what it cannot reach is in docs/privacy.md.

- A user is found by `user_key(salt, user_id)` under the salt the serving app uses now (`current_salt`: the same
  order as `serving.auth.resolve_user_salt`, but it never makes a new salt) and under any older salt given in a file,
  since a rotation gives everyone a new pseudonym.
- A deletion removes the user's predictions (with their shadow results), their feedback, the imported labelled
  emails of the same email_ids and the component log lines about those emails, in one store transaction; and it
  deletes, before that, every file under `<home>/reports` that names one of those emails' request_ids (error
  reports quote example emails). Files are deleted whole, not rewritten: every report is rebuilt from the log.
- Retention blanks (sets NULL) the subject and body of what was stored more than N days ago; every other field stays,
  so counts, KPIs and feedback do not move.

Each export, deletion and retention run appends one record to the event store's audit log (kinds privacy-export,
privacy-delete, retention) with the pseudonyms and counts, never the user id itself.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from serving import clock
from serving.config import Home, ServingConfig
from serving.ops.state import SALT_FILE, audit
from serving.store.eventlog import EventLog, TextBlanked, UserDeletion, UserRecords, user_key
from serving.store.location import open_existing_event_log


class PrivacyError(ValueError):
    """A privacy request that cannot be carried out as asked; nothing was changed. One line meant for a person."""


def current_salt(serving: ServingConfig, home: Home, *, shared: bool = False) -> str:
    """The salt the serving app pseudonymises with now: `$<user_salt_env>`, else the secrets file's, else
    `<home>/user_salt`. Unlike the app, never makes one: a missing salt means a wrong --home or a missing variable,
    and a fresh salt would find nobody. On a `shared` store (PostgreSQL) the routers refuse the home's file, so it
    is refused here too: it would be one machine's salt, not the one the routers use."""
    from serving.auth import read_secrets, secrets_path

    from_env = os.environ.get(serving.user_salt_env)
    if from_env:
        return from_env
    from_file = read_secrets(secrets_path(serving, home)).user_salt
    if from_file:
        return from_file
    path = home.root / SALT_FILE
    if shared:
        raise PrivacyError(
            f"no user salt: with a shared event store the routers take it from ${serving.user_salt_env} or the "
            f"secrets file's user_salt, and neither is set here (set it as the serving app has it; {path} is not used)"
        )
    if not path.exists():
        raise PrivacyError(
            f"no user salt: ${serving.user_salt_env} is not set, the secrets file has none and {path} does not exist "
            "(set the variable as the serving app has it, or check --home)"
        )
    return read_salt_file(path)


def read_salt_file(path: Path) -> str:
    """A salt kept in a file (as `<home>/user_salt` keeps it: the salt, surrounding whitespace ignored)."""
    try:
        salt = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise PrivacyError(f"cannot read salt file {path}: {err}") from None
    if not salt:
        raise PrivacyError(f"salt file {path} is empty")
    return salt


def user_keys(user_id: str, salts: Sequence[str]) -> tuple[str, ...]:
    """The user's pseudonym under each salt, in order, without repeats."""
    if not user_id:
        raise PrivacyError("the user id must not be empty")
    return tuple(dict.fromkeys(user_key(salt, user_id) for salt in salts))


def open_existing_log(home: Home, serving: ServingConfig) -> EventLog:
    """The store serving.yaml names (else `<home>/events.db`); a missing SQLite file is an error, never an empty
    log: a wrong --home must not look like a user with no records."""
    return open_existing_event_log(serving, home)


def reports_naming(home: Home, request_ids: Collection[str]) -> list[Path]:
    """Files under `<home>/reports` that contain one of `request_ids` as a whole word."""
    wanted = {r.encode() for r in request_ids}
    if not wanted or not home.reports.is_dir():
        return []
    odd = [w for w in wanted if not re.fullmatch(rb"[\w-]+", w)]  # ids a word scan cannot see: searched as text
    found = []
    for path in sorted(home.reports.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PrivacyError(f"cannot read report {path}: {err}") from None
        if wanted.intersection(re.findall(rb"[\w-]+", data)) or any(w in data for w in odd):
            found.append(path)
    return found


@dataclass(frozen=True)
class Export:
    """What the log holds about one user, and the report files that name their emails."""

    user_keys: tuple[str, ...]
    records: UserRecords
    reports: tuple[Path, ...]

    @property
    def empty(self) -> bool:
        return not self.records.predictions

    def counts(self) -> dict[str, int]:
        r = self.records
        return {"predictions": len(r.predictions), "feedback": len(r.feedback),
                "shadow": sum(p.shadow is not None for p in r.predictions), "labelled": len(r.labelled),
                "logs": len(r.logs), "reports": len(self.reports)}  # fmt: skip

    def lines(self) -> Iterator[str]:
        """JSON lines: each prediction with its feedback (null where none), then labelled emails, then log lines."""
        for p in self.records.predictions:
            feedback = self.records.feedback.get(p.request_id)
            row = {"record": "prediction", **asdict(p), "feedback": None if feedback is None else asdict(feedback)}
            yield json.dumps(row, ensure_ascii=False)
        for labelled in self.records.labelled:
            yield json.dumps({"record": "labelled", **asdict(labelled)}, ensure_ascii=False)
        for line in self.records.logs:
            yield json.dumps({"record": "log", **asdict(line)}, ensure_ascii=False)
        for path in self.reports:
            yield json.dumps({"record": "report", "path": str(path)}, ensure_ascii=False)


@dataclass(frozen=True)
class Deletion:
    user_keys: tuple[str, ...]
    deleted: UserDeletion
    reports: tuple[Path, ...]  # the report files deleted

    def counts(self) -> dict[str, int]:
        d = self.deleted
        return {"predictions": d.predictions, "feedback": d.feedback, "shadow": d.shadow, "labelled": d.labelled,
                "logs": d.logs, "reports": len(self.reports)}  # fmt: skip


@dataclass(frozen=True)
class Retention:
    days: int
    before: str  # text stored before this time was blanked
    blanked: TextBlanked


def _n(count: int, thing: str) -> str:
    return f"{count} {thing}" + ("" if count == 1 else "s")


def describe(counts: dict[str, int]) -> str:
    """Counts in words: '3 predictions (1 with a shadow result), 2 feedback records, ...'."""
    return (
        f"{_n(counts['predictions'], 'prediction')} ({counts['shadow']} with a shadow result), "
        f"{_n(counts['feedback'], 'feedback record')}, {_n(counts['labelled'], 'imported labelled email')}, "
        f"{_n(counts['logs'], 'log line')}, {_n(counts['reports'], 'report file')}"
    )


def find_user(store: EventLog, home: Home, keys: Sequence[str]) -> Export:
    records = store.user_records(keys)
    return Export(tuple(keys), records, tuple(reports_naming(home, records.request_ids)))


def audit_export(store: EventLog, actor: str, export: Export, out: str) -> None:
    counts = export.counts()
    audit(store, actor, {}, {"user_keys": list(export.user_keys), **counts, "out": out}, kind="privacy-export",
          detail=f"exported {describe(counts)} of user_key {', '.join(export.user_keys)}")  # fmt: skip


def delete_user(store: EventLog, home: Home, keys: Sequence[str], actor: str) -> Deletion:
    """Delete the user's report files, then their records (one transaction), then audit it. Report files go first:
    once the records are gone their request_ids can no longer be found, so a failed file deletion must leave the
    request intact for a rerun."""
    reports = find_user(store, home, keys).reports
    for path in reports:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise PrivacyError(f"cannot delete report {path}: {err}; no record was deleted") from None
    result = Deletion(tuple(keys), store.delete_user_records(keys), reports)
    counts = result.counts()
    _audited(f"deleted {describe(counts)} of user_key {', '.join(keys)}", lambda: audit(
        store, actor, {}, {"user_keys": list(keys), **counts, "report_files": [str(p) for p in reports]},
        kind="privacy-delete", detail=f"deleted {describe(counts)} of user_key {', '.join(keys)}"))  # fmt: skip
    return result


def _audited(done: str, write: Callable[[], None]) -> None:
    """Write a change's audit record; a store that fails now is said with what was done, in one line."""
    try:
        write()
    except Exception as err:  # whatever the store raised (SQLite's own errors too): what was done is said
        raise PrivacyError(f"{done}, but its audit record could not be written ({err})") from None


def retain_text(store: EventLog, home: Home, days: int, actor: str) -> Retention:
    """Blank the text stored more than `days` ago, and audit it (kind retention)."""
    if days < 0:
        raise PrivacyError(f"retention of {days} days: use 0 or more")
    before = (clock.now() - timedelta(days=days)).isoformat()
    result = Retention(days, before, store.blank_text(before))
    new: dict[str, Any] = {"days": days, "before": before, "predictions": result.blanked.predictions,
                           "labelled": result.blanked.labelled}  # fmt: skip
    detail = (f"text older than {days} days blanked: {result.blanked.predictions} predictions, "
              f"{result.blanked.labelled} imported labelled emails")  # fmt: skip
    _audited(detail, lambda: audit(store, actor, {}, new, kind="retention", detail=detail))
    return result
