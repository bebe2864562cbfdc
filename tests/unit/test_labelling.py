"""The labelling queue and the label import on both stores: order and split, all-or-nothing writes, idempotence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import records

from serving.config import QueuesConfig, load_queues
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent
from serving.store.memory import MemoryEventLog
from serving.store.sqlite import SQLiteEventLog
from training.data import DataError
from training.labels.importer import content_key, import_labels
from training.labels.labelling import LabellingError, assign, next_batch

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def proba(top: str, p1: float, second: str, p2: float) -> dict[str, float]:
    return {top: p1, second: p2, "general": round(1 - p1 - p2, 6)}


def prediction(request_id: str, minute: float, **fields: Any) -> PredictionEvent:
    return records.prediction(request_id, ts(minute), **fields)


def triaged(request_id: str, minute: float, guess: str | None = "shipping", **fields: Any) -> PredictionEvent:
    return prediction(
        request_id, minute, queue="triage", reason="low_confidence", confidence=0.4, secondary_queue=guess, **fields
    )


@pytest.fixture(scope="module")
def queues() -> QueuesConfig:
    return load_queues(CONFIGS / "queues.yaml")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    log: EventLog = MemoryEventLog() if request.param == "memory" else SQLiteEventLog(tmp_path / "events.db")
    yield log
    log.close()


@pytest.fixture
def filled(store: EventLog) -> EventLog:
    """Three triaged emails (one already labelled), three routed ones with known margins, one without proba."""
    store.record_predictions(
        [
            triaged("t1", 1),
            triaged("t2", 2, guess=None),
            triaged("t3", 3, subject="Parcel lost", body="my  parcel\nnever arrived"),
            triaged("t-done", 4),
            prediction("u-sure", 5, proba=proba("billing", 0.9, "sales", 0.05)),
            prediction("u-close", 6, proba=proba("billing", 0.45, "technical", 0.44), queue="billing"),
            prediction("u-mid", 7, proba=proba("account", 0.6, "billing", 0.3), queue="account", body="x" * 1000),
            prediction("u-none", 8, proba=None),
        ]
    )
    store.record_feedback(FeedbackEvent("t-done", ts(10), "shipping", agent_id="agent-7"))
    return store


def ids(rows: Any) -> list[str]:
    return [r.request_id for r in rows]


def test_next_batch_lists_triage_newest_first_then_the_least_sure(filled: EventLog, queues: QueuesConfig) -> None:
    batch = next_batch(filled, queues, n=50)
    assert ids(batch.triaged) == ["t3", "t2", "t1"]  # the labelled one is gone
    assert ids(batch.uncertain) == ["u-close", "u-mid", "u-sure", "u-none"]  # lowest margin first, unknown last
    t3, t2 = batch.triaged[0], batch.triaged[1]
    assert t3.guess == "shipping" and t3.routed_queue == "triage" and t3.snippet == "my parcel never arrived"
    assert t2.guess is None
    close = batch.uncertain[0]
    assert close.guess == "billing" and close.margin == pytest.approx(0.01) and close.model == "linear:v1"
    assert batch.uncertain[1].snippet is not None and len(batch.uncertain[1].snippet) <= 240
    assert batch.uncertain[3].margin is None
    assert json.loads(json.dumps(batch.to_json()))["triaged"][0]["request_id"] == "t3"


def test_next_batch_splits_n_between_the_lists(filled: EventLog, queues: QueuesConfig) -> None:
    four = next_batch(filled, queues, n=4)
    assert (len(four.triaged), len(four.uncertain)) == (2, 2)
    five = next_batch(filled, queues, n=5)
    assert (len(five.triaged), len(five.uncertain)) == (3, 2)  # the odd one goes to triage
    only_routed = next_batch(filled, queues, n=6, query="of u-")
    assert (len(only_routed.triaged), len(only_routed.uncertain)) == (0, 4)  # a short list leaves room to the other
    assert ids(next_batch(filled, queues, n=1).triaged) == ["t3"]


def test_next_batch_searches_text_and_time(filled: EventLog, queues: QueuesConfig) -> None:
    found = next_batch(filled, queues, query="PARCEL")
    assert ids(found.triaged) == ["t3"] and not found.uncertain
    recent = next_batch(filled, queues, since=ts(6))
    assert not recent.triaged and ids(recent.uncertain) == ["u-close", "u-mid", "u-none"]
    for bad in (0, 501):
        with pytest.raises(LabellingError, match="between 1 and 500"):
            next_batch(filled, queues, n=bad)
    with pytest.raises(LabellingError, match="at most 200"):
        next_batch(filled, queues, query="x" * 201)


def test_assign_writes_labelling_feedback(
    filled: EventLog, queues: QueuesConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.clock.now", lambda: T0 + timedelta(hours=1))
    result = assign(
        filled, queues, [("t1", "shipping"), ("u-close", "technical"), ("t1", "shipping")], agent_id=" ana "
    )
    assert result.labelled == (("t1", "shipping"), ("u-close", "technical")) and not result.already
    assert result.summary() == "labelled 2 email(s) (shipping 1, technical 1)"
    stored = filled.get_feedback("u-close")
    assert stored == FeedbackEvent("u-close", ts(60), "technical", agent_id="ana", source="labelling")
    assert "u-close" not in ids(next_batch(filled, queues).uncertain)


def test_assign_never_overwrites_and_says_who_labelled(filled: EventLog, queues: QueuesConfig) -> None:
    result = assign(filled, queues, [("t-done", "billing"), ("t2", "account")], agent_id="bo")
    assert result.labelled == (("t2", "account"),)
    (already,) = result.already
    assert str(already) == "t-done already labelled (as shipping, by agent agent-7)"
    assert "1 not changed: t-done already labelled (as shipping, by agent agent-7)" in result.summary()
    assert filled.get_feedback("t-done") == FeedbackEvent("t-done", ts(10), "shipping", agent_id="agent-7")
    again = assign(filled, queues, [("t2", "sales")], agent_id="cy")
    assert str(again.already[0]) == "t2 already labelled (as account, by labelling bo)"
    assert again.to_json()["already"][0]["queue"] == "account"


@pytest.mark.parametrize(
    ("pairs", "agent", "message"),
    [
        ([("t1", "shipping"), ("t2", "biling")], "a", r"unknown queue 'biling': the queues are billing, .*nothing"),
        ([("t1", "triage")], "a", "unknown queue 'triage'"),  # the triage queue is no answer
        ([("t1", "shipping"), ("nope", "billing")], "a", "unknown request_id 'nope': not in the event log"),
        ([("t1", "shipping"), ("t1", "billing")], "a", "request_id 't1' given two different queues"),
        ([], "a", "no email to label"),
        ([("t1", "shipping")], "   ", "agent name must be 1 to 100"),
        ([("t1", "shipping")], "x" * 101, "agent name must be 1 to 100"),
    ],
)
def test_bad_input_writes_nothing(
    filled: EventLog, queues: QueuesConfig, pairs: list[tuple[str, str]], agent: str, message: str
) -> None:
    with pytest.raises(LabellingError, match=message) as err:
        assign(filled, queues, pairs, agent_id=agent)
    assert "\n" not in str(err.value)
    assert filled.get_feedback("t1") is None and filled.stats().feedback == 1


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_stores_labelled_emails_apart_from_predictions(
    store: EventLog, queues: QueuesConfig, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "helpdesk.jsonl",
        [
            {"email_id": "hd-1", "subject": "Invoice", "body": "mail me at ana@example.com", "queue": "billing"},
            {"email_id": "hd-2", "subject": "Crash", "body": "the app crashes", "queue": "technical"},
            {"subject": "Parcel", "body": "where is my parcel", "queue": "shipping"},
            {"subject": "Broken", "queue": "billing"},  # no body: malformed
        ],
    )
    (tmp_path / "broken.jsonl").write_text("{not json\n" + path.read_text(), encoding="utf-8")
    result = import_labels(store, path, queues, agent_id="old-helpdesk", text_policy="redacted")
    assert (result.new, result.already, result.skipped) == (3, 0, 1)
    assert result.summary() == "3 new, 0 already imported, 1 malformed records skipped"
    assert result.labels == {"billing": 1, "technical": 1, "shipping": 1}
    frame = store.labelled_frame().set_index("key")
    assert frame.loc["hd-1", "body"] == "mail me at [EMAIL]" and frame.loc["hd-1", "email_id"] == "hd-1"
    assert frame.loc["hd-1", "origin"] == "helpdesk.jsonl" and frame.loc["hd-1", "agent_id"] == "old-helpdesk"
    parcel = content_key("Parcel", "where is my parcel", "shipping")
    assert len(parcel) == 32 and frame.loc[parcel, "email_id"] is None  # the reader's made-up row id is not kept
    assert store.stats().predictions == 0 and store.predictions_frame().empty  # exposure and daily counts unmoved
    again = import_labels(store, path, queues, agent_id=None, text_policy="redacted")
    assert again.summary() == "0 new, 3 already imported, 1 malformed records skipped"
    assert len(store.labelled_frame()) == 3


def test_import_under_text_policy_none_keeps_no_text(store: EventLog, queues: QueuesConfig, tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text("subject,body,queue\nHi,cancel my plan,cancellation\nHi,cancel my plan,cancellation\n")
    result = import_labels(store, path, queues, text_policy="none")
    assert (result.new, result.already) == (1, 1)  # the same email twice in a file is one labelled email
    row = store.labelled_frame().iloc[0]
    assert row["subject"] is None and row["body"] is None and row["label"] == "cancellation"
    assert row["key"] == content_key("Hi", "cancel my plan", "cancellation")


def test_import_refuses_labels_outside_the_taxonomy(store: EventLog, queues: QueuesConfig, tmp_path: Path) -> None:
    rows = [{"subject": f"s{i}", "body": f"b{i}", "queue": q} for i, q in enumerate(["billing", "Refunds", "Refunds"])]
    rows.append({"subject": "s", "body": "b", "queue": "triage"})
    with pytest.raises(LabellingError) as err:
        import_labels(store, write_jsonl(tmp_path / "x.jsonl", rows), queues)
    message = str(err.value)
    assert "labels not in the taxonomy: 'Refunds' (2 rows), 'triage' (1 row)" in message
    assert "nothing imported" in message and "\n" not in message
    assert store.labelled_frame().empty


def test_import_of_a_message_folder_keys_by_message_id(store: EventLog, queues: QueuesConfig, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "billing").mkdir(parents=True)
    (folder / "billing" / "a.eml").write_text("Message-ID: <abc@helpdesk>\nSubject: Invoice\n\nplease send it\n")
    (folder / "billing" / "b.eml").write_text("Subject: Refund\n\nrefund me please\n")
    result = import_labels(store, folder, queues)
    assert result.new == 2
    keys = set(store.labelled_frame()["key"])
    assert "abc@helpdesk" in keys and content_key("Refund", "refund me please", "billing") in keys
    with pytest.raises(DataError, match="not found"):
        import_labels(store, tmp_path / "missing.csv", queues)
    with pytest.raises(LabellingError, match="agent name"):
        import_labels(store, folder, queues, agent_id="")
