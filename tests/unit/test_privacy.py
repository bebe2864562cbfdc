"""Privacy on the event log, on every store: a user's records found, exported and deleted (and only theirs), text
retention that keeps every count, the report files a deletion reaches, the salt a lookup uses, and retraining after
retention."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import records

from serving.config import Home, ServingConfig
from serving.models.registry import ModelMeta
from serving.privacy.records import (
    PrivacyError,
    current_salt,
    delete_user,
    find_user,
    reports_naming,
    retain_text,
    user_keys,
)
from serving.store.eventlog import (
    EventLog,
    EventLogError,
    FeedbackEvent,
    LabelledEmail,
    LogRecord,
    PredictionEvent,
    StoreUnavailableError,
    user_key,
)
from serving.store.memory import MemoryEventLog
from serving.store.sqlite import SQLiteEventLog
from training.config import SplitConfig
from training.retrain.dataset import read_sources

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)
SALT, OLD_SALT = "salt-now-0123456789", "salt-before-rotation"
ALICE, BOB = user_key(SALT, "alice"), user_key(SALT, "bob")


def at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


def prediction(request_id: str, key: str, days_ago: float, **fields: Any) -> PredictionEvent:
    defaults = {"user_key": key, "latency_ms": 3.0, "proba": {"billing": 0.8, "technical": 0.2}}
    return records.prediction(request_id, at(days_ago), **{**defaults, **fields})


def seed(log: EventLog) -> None:
    """alice: three emails (an old one with feedback, a shadow result and an imported label), bob: two."""
    log.record_predictions(
        [
            prediction("a1", ALICE, 100, email_id="mail-a1", shadow={"model": "transformer", "queue": "billing"}),
            prediction("a2", ALICE, 2),
            prediction("a3", ALICE, 1, queue="technical"),
            prediction("b1", BOB, 100, email_id="mail-b1"),
            prediction("b2", BOB, 1),
        ]
    )
    for request_id, queue in (("a1", "billing"), ("a2", "technical"), ("b1", "billing")):
        log.record_feedback(FeedbackEvent(request_id, at(0.5), queue, handling_seconds=40.0, agent_id="agent-7"))
    log.record_labelled(
        [
            LabelledEmail("mail-a1", at(120), "billing", "old subject a1", "old body a1", email_id="mail-a1"),
            LabelledEmail("mail-b1", at(120), "billing", "old subject b1", "old body b1", email_id="mail-b1"),
            LabelledEmail("h-1", at(1), "sales", "a quote", "for 50 seats"),
        ]
    )
    log.record_logs(
        [
            LogRecord(at(1), "router", "WARNING", "fallback: linear (timeout)", request_id="a1", email_id="mail-a1"),
            LogRecord(at(1), "arm-linear", "WARNING", "bad input before an id", email_id="mail-a1"),
            LogRecord(at(1), "router", "WARNING", "fallback for bob", request_id="b1"),
            LogRecord(at(1), "event-writer", "ERROR", "store slow"),
        ]
    )


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    store: EventLog = MemoryEventLog() if request.param == "memory" else SQLiteEventLog(tmp_path / "events.db")
    seed(store)
    yield store
    store.close()


def all_logs(log: EventLog) -> list[LogRecord]:
    return log.logs(min_level="DEBUG", limit=1000)


# --- the store methods, on every store ---


def test_user_records_find_every_record_of_the_user_and_no_other(log: EventLog) -> None:
    found = log.user_records([ALICE])
    assert found.request_ids == ("a1", "a2", "a3")  # oldest first
    assert set(found.feedback) == {"a1", "a2"}
    assert found.feedback["a2"].true_queue == "technical"
    assert found.predictions[0].shadow == {"model": "transformer", "queue": "billing"}
    assert [r.key for r in found.labelled] == ["mail-a1"]
    assert [r.message for r in found.logs] == ["fallback: linear (timeout)", "bad input before an id"]
    assert log.user_records([user_key(SALT, "nobody")]).predictions == ()


@pytest.mark.parametrize("keys", [[], [""]])
def test_an_empty_key_list_is_refused_never_everyone(log: EventLog, keys: list[str]) -> None:
    for call in (log.user_records, log.delete_user_records):
        with pytest.raises(EventLogError):
            call(keys)
    assert log.stats().predictions == 5


def test_delete_removes_the_user_everywhere_and_leaves_others_untouched(log: EventLog) -> None:
    bob_before = log.joined_frame()[lambda f: f["user_key"] == BOB].reset_index(drop=True)
    gone = log.delete_user_records([ALICE])
    assert gone.request_ids == ("a1", "a2", "a3")
    assert (gone.predictions, gone.feedback, gone.shadow, gone.labelled, gone.logs) == (3, 2, 1, 1, 2)

    for frame in (log.joined_frame(), log.feedback_frame(), log.predictions_frame()):
        assert ALICE not in set(frame["user_key"])
        assert not {"a1", "a2", "a3"} & set(frame["request_id"])
    assert log.joined_frame().reset_index(drop=True).equals(bob_before)
    assert list(log.feedback_frame()["request_id"]) == ["b1"]
    assert all(log.get_feedback(r) is None for r in ("a1", "a2", "a3"))
    assert sorted(log.labelled_frame()["key"]) == ["h-1", "mail-b1"]
    assert sorted(r.message for r in all_logs(log)) == ["fallback for bob", "store slow"]
    assert log.stats().predictions == 2 and log.stats().feedback == 1

    again = log.delete_user_records([ALICE])  # idempotent: nothing left to delete
    assert (again.predictions, again.feedback, again.labelled, again.logs) == (0, 0, 0, 0)


def test_delete_finds_the_user_under_every_salt_given(log: EventLog) -> None:
    log.record_predictions([prediction("a0", user_key(OLD_SALT, "alice"), 200)])  # before a salt rotation
    keys = user_keys("alice", [SALT, OLD_SALT])
    assert log.user_records(keys[:1]).request_ids == ("a1", "a2", "a3")
    assert log.user_records(keys).request_ids == ("a0", "a1", "a2", "a3")
    assert log.delete_user_records(keys).predictions == 4
    assert set(log.predictions_frame()["user_key"]) == {BOB}


def test_retention_blanks_old_text_and_keeps_every_count(log: EventLog) -> None:
    before_stats = log.stats()
    before = log.joined_frame()
    blanked = log.blank_text(at(30))
    assert (blanked.predictions, blanked.labelled) == (2, 2)  # a1, b1; the two old imported labels

    after = log.joined_frame()
    assert log.stats() == before_stats  # counts, accuracy on feedback, by arm, by queue
    kept = [c for c in after.columns if c not in ("subject", "body")]
    assert after[kept].equals(before[kept])  # queue, arm, confidence, proba, shadow, feedback... all there
    old = after["ts"] < datetime.fromisoformat(at(30))
    assert after.loc[old, ["subject", "body"]].isna().all().all()
    assert list(after.loc[~old, "subject"]) == ["subject of a2", "subject of a3", "subject of b2"]
    assert len(log.feedback_frame()) == 3
    labelled = log.labelled_frame().set_index("key")
    assert labelled.loc[["mail-a1", "mail-b1"], ["subject", "body"]].isna().all().all()
    assert labelled.loc["h-1", "body"] == "for 50 seats"
    assert labelled.loc["mail-a1", "label"] == "billing"

    again = log.blank_text(at(30))  # idempotent
    assert (again.predictions, again.labelled) == (0, 0)
    assert log.joined_frame().equals(after)


def test_sqlite_delete_is_one_transaction(tmp_path: Path) -> None:
    store = SQLiteEventLog(tmp_path / "events.db")
    seed(store)
    conn = sqlite3.connect(tmp_path / "events.db")
    # The last step (the predictions themselves) fails: the feedback, labels and logs deleted before it come back.
    conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON predictions BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        store.delete_user_records([ALICE])
    found = store.user_records([ALICE])
    assert (len(found.predictions), len(found.feedback), len(found.labelled), len(found.logs)) == (3, 2, 1, 2)
    store.close()


# --- retraining after retention ---


def test_retrain_data_skips_blanked_emails_and_counts_them() -> None:
    store = MemoryEventLog()
    seed(store)
    champion = ModelMeta("linear", "v1", "linear", ("billing", "technical"), "2", "fp", {}, {}, None, at(0))
    before = read_sources(store, champion, SplitConfig())
    assert len(before.feedback) == 3 and before.feedback_without_text == 0

    store.blank_text(at(30))
    after = read_sources(store, champion, SplitConfig())
    assert list(after.feedback["label"]) == ["technical"]  # a2 only: its text is newer than 30 days
    assert "body of a2" in after.feedback["text"].iloc[0]
    assert after.feedback_without_text == 2  # a1 and b1: their verdicts stay in the KPIs, not in training
    assert list(after.imported["label"]) == ["sales"]  # imported labels lose their blanked text too


# --- the records module: salts, report files, audit ---


def _home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    return home


def test_current_salt_resolves_as_the_serving_app_and_never_makes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.auth import resolve_user_salt

    monkeypatch.delenv("MAILROUTE_USER_SALT", raising=False)
    monkeypatch.delenv("MAILROUTE_SECRETS_FILE", raising=False)
    home, serving = _home(tmp_path), ServingConfig()
    with pytest.raises(PrivacyError, match="no user salt"):
        current_salt(serving, home)
    assert not (home.root / "user_salt").exists()

    (home.root / "user_salt").write_text("from-the-home-file\n")
    assert current_salt(serving, home) == resolve_user_salt(serving, home) == "from-the-home-file"
    (home.root / "secrets.yaml").write_text("user_salt: from-the-secrets-file\n")
    assert current_salt(serving, home) == resolve_user_salt(serving, home) == "from-the-secrets-file"
    monkeypatch.setenv("MAILROUTE_USER_SALT", "from-the-environment")
    assert current_salt(serving, home) == resolve_user_salt(serving, home) == "from-the-environment"


def test_user_keys_refuse_an_empty_id() -> None:
    with pytest.raises(PrivacyError, match="empty"):
        user_keys("", [SALT])
    assert user_keys("alice", [SALT, SALT]) == (ALICE,)


def test_reports_naming_finds_request_ids_as_whole_words(tmp_path: Path) -> None:
    home = _home(tmp_path)
    errors = home.reports / "errors"
    errors.mkdir(parents=True)
    (errors / "errors.html").write_text("<div>a1 (0.42) subject of a1</div>")
    (errors / "other.json").write_text(json.dumps({"examples": [{"request_id": "a10"}]}))  # a10 is not a1
    (home.reports / "kpi.json").write_text('{"accuracy": 0.9}')
    assert reports_naming(home, ["a1"]) == [errors / "errors.html"]
    assert reports_naming(home, ["a1", "a10"]) == [errors / "errors.html", errors / "other.json"]
    assert reports_naming(home, []) == []


def test_delete_user_deletes_reports_then_records_and_audits_without_the_id(log: EventLog, tmp_path: Path) -> None:
    home = _home(tmp_path)
    home.reports.mkdir()
    (home.reports / "errors.html").write_text("examples: a2 (0.51) subject of a2")
    (home.reports / "bob.html").write_text("examples: b1")
    assert find_user(log, home, [ALICE]).reports == (home.reports / "errors.html",)

    result = delete_user(log, home, [ALICE], "ops-anna")
    assert result.counts() == {"predictions": 3, "feedback": 2, "shadow": 1, "labelled": 1, "logs": 2, "reports": 1}
    assert not (home.reports / "errors.html").exists() and (home.reports / "bob.html").exists()
    (record,) = log.audit_records()
    line = json.dumps(record)
    assert record["kind"] == "privacy-delete" and record["actor"] == "ops-anna"
    assert record["new"]["user_keys"] == [ALICE] and record["new"]["predictions"] == 3
    assert "alice" not in line


def test_retain_text_audits_each_run(log: EventLog, tmp_path: Path) -> None:
    home = _home(tmp_path)
    first = retain_text(log, home, 30, "scheduler")
    second = retain_text(log, home, 30, "scheduler")
    assert (first.blanked.predictions, second.blanked.predictions) == (2, 0)
    records = log.audit_records()
    assert [(r["kind"], r["new"]["days"], r["new"]["predictions"]) for r in records] == [
        ("retention", 30, 2),
        ("retention", 30, 0),
    ]


# --- retention on the schedule ---


def test_the_scheduler_runs_retention_daily_when_a_period_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from monitoring import schedule
    from serving.config import EventLogSpec

    home = _home(tmp_path)
    store = SQLiteEventLog(home.event_log)
    seed(store)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "monitoring.yaml").write_text("html: false\n")
    monkeypatch.setattr(schedule, "jobs", lambda cfg, every=None, rollout=None: {})  # no other job
    no_period, with_period = ServingConfig(), ServingConfig(event_log=EventLogSpec(retention_days=30))
    assert schedule.run_retention_job(home, configs, no_period) is None

    ticker, states = schedule.Ticker(first_after_s=60, start=time.monotonic()), dict[str, schedule.JobState]()
    schedule.run_due(home, configs, no_period, ticker, states, time.monotonic() + 120)
    assert "retention" not in states and store.audit_records() == []
    schedule.run_due(home, configs, with_period, ticker, states, time.monotonic() + 120)
    assert states["retention"].runs == 1 and states["retention"].last_error is None
    assert store.user_records([ALICE]).predictions[0].body is None  # a1, 100 days old
    (record,) = store.audit_records()
    assert (record["kind"], record["actor"], record["new"]["predictions"]) == ("retention", "retention-job", 2)
    store.close()


def test_an_email_id_another_client_also_uses_is_not_the_users(log: EventLog) -> None:
    # Found in review: since an email_id is one client's key (schema 4), another client's email may carry the same
    # id; deleting or exporting alice matched that one's imported label and log line by id alone.
    log.record_predictions([
        prediction("a9", ALICE, 2, email_id="shared-7", client="gateway-a"),
        prediction("c9", user_key(SALT, "carol"), 2, email_id="shared-7", client="gateway-b"),
    ])  # fmt: skip
    log.record_labelled([LabelledEmail("shared-7", at(3), "sales", "carol's old mail", "body", email_id="shared-7")])
    log.record_logs([LogRecord(at(2), "arm-linear", "WARNING", "about shared-7, before an id", email_id="shared-7")])
    assert "shared-7" not in {r.email_id for r in log.user_records([ALICE]).labelled}
    log.delete_user_records([ALICE])
    assert "shared-7" in set(log.labelled_frame()["key"])
    assert "about shared-7, before an id" in {r.message for r in all_logs(log)}
    assert log.get_prediction("c9") is not None


def test_a_deletion_whose_audit_record_cannot_be_written_says_so(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit record follows the deletion's transaction in the same store: a store that fails between the two is
    said in one line with what was deleted, never passed over."""
    home = _home(tmp_path)

    def failing(record: dict[str, Any]) -> None:
        raise StoreUnavailableError("event log is unavailable: connection refused")

    monkeypatch.setattr(log, "record_audit", failing)
    with pytest.raises(PrivacyError, match=r"deleted 3 predictions.*but its audit record could not be written") as err:
        delete_user(log, home, [ALICE], "ops-anna")
    assert "\n" not in str(err.value)
