"""`mailroute label next|assign|import` in-process: what they print and write, and every bad input as one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import records
from cli_support import one_line_error, run_cli

from serving.store.eventlog import FeedbackEvent, PredictionEvent, open_event_log

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOW = datetime.now(UTC)


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "--home", str(home), "--config-dir", str(CONFIGS), "label", *args)


def prediction(request_id: str, hours_ago: float, **fields: Any) -> PredictionEvent:
    when = (NOW - timedelta(hours=hours_ago)).isoformat()
    return records.prediction(
        request_id, when, **{"confidence": 0.7, "proba": {"billing": 0.7, "technical": 0.2, "general": 0.1}, **fields}
    )


@pytest.fixture(autouse=True)
def _config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # main sets MAILROUTE_CONFIG_DIR from --config-dir; setting it here too makes pytest put it back afterwards.
    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(CONFIGS))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    log = open_event_log(f"sqlite:///{root / 'events.db'}")
    log.record_predictions(
        [
            prediction("t-old", 240, queue="triage", reason="low_confidence", confidence=0.3, secondary_queue="sales"),
            prediction("t-new", 1, queue="triage", reason="low_confidence", confidence=0.3, subject="Lost parcel"),
            prediction("u-close", 2, proba={"billing": 0.5, "technical": 0.45, "general": 0.05}),
            prediction("u-sure", 3, proba={"billing": 0.9, "technical": 0.05, "general": 0.05}),
        ]
    )
    log.close()
    return root


def feedback(home: Path, request_id: str) -> FeedbackEvent | None:
    log = open_event_log(f"sqlite:///{home / 'events.db'}")
    try:
        return log.get_feedback(request_id)
    finally:
        log.close()


def test_next_lists_both_queues(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, out, _ = run(capsys, home, "next", "--json")
    assert code == 0
    data = json.loads(out)
    assert [r["request_id"] for r in data["triaged"]] == ["t-new", "t-old"]
    assert [r["request_id"] for r in data["uncertain"]] == ["u-close", "u-sure"]
    assert data["triaged"][1]["guess"] == "sales" and data["uncertain"][0]["margin"] == pytest.approx(0.05)
    code, out, _ = run(capsys, home, "next", "--since", "2d", "--query", "parcel")
    assert code == 0 and "t-new" in out and "t-old" not in out and "u-close" not in out
    code, out, _ = run(capsys, home, "next", "--n", "2", "--since", (NOW - timedelta(hours=5)).isoformat(), "--json")
    assert code == 0 and [r["request_id"] for r in [*json.loads(out)["triaged"], *json.loads(out)["uncertain"]]] == [
        "t-new",
        "u-close",
    ]
    code, out, _ = run(capsys, home, "next", "--query", "no such text")
    assert code == 0 and "nothing to label matches the search" in out


def test_assign_by_arguments_and_by_file(capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, home, "assign", "shipping", "t-new", "t-old", "--agent", "ana")
    assert code == 0 and out.strip() == "labelled 2 email(s) (shipping 2)"
    stored = feedback(home, "t-new")
    assert stored is not None and (stored.true_queue, stored.source, stored.agent_id) == (
        "shipping",
        "labelling",
        "ana",
    )
    sheet = tmp_path / "labels.csv"
    sheet.write_text("request_id,queue\nu-close,technical\n\nt-new,billing\n", encoding="utf-8")
    code, out, _ = run(capsys, home, "assign", "--file", str(sheet), "--agent", "bo", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["labelled"] == [{"request_id": "u-close", "queue": "technical"}]
    assert result["already"][0]["message"] == "t-new already labelled (as shipping, by labelling ana)"
    stored = feedback(home, "t-new")
    assert stored is not None and stored.true_queue == "shipping"  # first write wins


def test_import_and_reimport(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"  # import may create the log
    data = tmp_path / "helpdesk.csv"
    data.write_text("id,subject,body,team\n1,Refund,refund my card,billing\n2,Login,cannot log in,account\n3,,,x\n")
    code, out, err = run(capsys, home, "import", str(data), "--label-col", "team", "--agent", "helpdesk")
    assert code == 0 and out.strip().endswith("2 new, 0 already imported, 1 malformed records skipped")
    assert "skipped 1 malformed records" in err
    code, out, _ = run(capsys, home, "import", str(data), "--label-col", "team", "--json")
    assert code == 0 and json.loads(out)["summary"] == "0 new, 2 already imported, 1 malformed records skipped"
    log = open_event_log(f"sqlite:///{home / 'events.db'}")
    try:
        assert set(log.labelled_frame()["key"]) == {"1", "2"} and log.stats().predictions == 0
    finally:
        log.close()


def test_a_missing_log_is_one_line_and_creates_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    for args in (("next",), ("assign", "billing", "r1")):
        code, _, err = run(capsys, nowhere, *args)
        assert code == 1 and "no event log at" in one_line_error(err)
    assert not nowhere.exists()


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (("assign",), 2, "give QUEUE and at least one REQUEST_ID"),
        (("assign", "billing"), 2, "give QUEUE and at least one REQUEST_ID"),
        (("assign", "biling", "t-new"), 2, "'biling' is not a queue"),
        (("assign", "billing", "t-new", "--file", "{sheet}"), 2, "not both"),
        (("assign", "--file", "{missing}"), 2, "does not exist"),
        (("assign", "billing", "t-new", "nope"), 1, "unknown request_id 'nope'"),
        (("assign", "billing", "t-new", "--agent", ""), 1, "agent name must be 1 to 100"),
        (("assign", "--file", "{bad_sheet}"), 1, "missing column queue"),
        (("assign", "--file", "{bad_queue_sheet}"), 1, "unknown queue 'nowhere'"),
        (("next", "--since", "yesterday"), 2, "neither a duration"),
        (("next", "--n", "0"), 2, "--n"),
        (("import", "{missing}"), 2, "does not exist"),
        (("import", "{bad_labels}"), 1, "labels not in the taxonomy: 'Refunds' (1 row)"),
        (("import", "{sheet}", "--label-col", "queue", "--text-col", "nope"), 1, "missing text column 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path, args: tuple[str, ...], exit_code: int, message: str
) -> None:
    files = {
        "sheet": tmp_path / "sheet.csv",
        "bad_sheet": tmp_path / "bad.csv",
        "bad_queue_sheet": tmp_path / "bad-queue.csv",
        "bad_labels": tmp_path / "labels.csv",
        "missing": tmp_path / "missing.csv",
    }
    files["sheet"].write_text("request_id,queue\nt-new,billing\n")
    files["bad_sheet"].write_text("request_id,team\nt-new,billing\n")
    files["bad_queue_sheet"].write_text("request_id,queue\nt-new,billing\nt-old,nowhere\n")
    files["bad_labels"].write_text("subject,body,queue\nRefund,refund please,Refunds\n")
    code, _, err = run(capsys, home, *(a.format(**files) for a in args))
    assert code == exit_code
    assert message in one_line_error(err)
    assert feedback(home, "t-new") is None
    log = open_event_log(f"sqlite:///{home / 'events.db'}")
    try:
        assert log.labelled_frame().empty
    finally:
        log.close()
