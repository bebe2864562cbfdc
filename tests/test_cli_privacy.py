"""`mailroute privacy export|delete|retain` in-process, on a real home: what they print, write, delete and audit, and
every bad input as one line and a non-zero exit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import records
from cli_support import one_line_error, run_cli

from serving.store.eventlog import FeedbackEvent, LabelledEmail, LogRecord, PredictionEvent, open_event_log, user_key

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOW = datetime.now(UTC)
SALT = "home-salt-0123456789abcdef"


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str, config_dir: Path = CONFIGS) -> tuple[int, str, str]:
    return run_cli(capsys, "--home", str(home), "--config-dir", str(config_dir), "privacy", *args)


def prediction(request_id: str, user: str, days_ago: float, salt: str = SALT, **fields: Any) -> PredictionEvent:
    when = (NOW - timedelta(days=days_ago)).isoformat()
    return records.prediction(request_id, when, **{"user_key": user_key(salt, user), **fields})


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    # main sets MAILROUTE_CONFIG_DIR from --config-dir; setting it here too makes pytest put it back afterwards.
    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(CONFIGS))
    monkeypatch.delenv("MAILROUTE_USER_SALT", raising=False)
    monkeypatch.delenv("MAILROUTE_SECRETS_FILE", raising=False)
    monkeypatch.setenv("USER", "ops-anna")


def events(home: Path) -> Any:
    return open_event_log(f"sqlite:///{home / 'events.db'}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    (root / "user_salt").write_text(SALT)
    log = events(root)
    log.record_predictions(
        [
            prediction("a-old", "alice", 100, email_id="m-1", shadow={"model": "transformer", "queue": "billing"}),
            prediction("a-new", "alice", 1),
            prediction("b-old", "bob", 100),
            prediction("b-new", "bob", 1),
        ]
    )
    log.record_feedback(FeedbackEvent("a-old", NOW.isoformat(), "technical", handling_seconds=30.0))
    log.record_feedback(FeedbackEvent("b-new", NOW.isoformat(), "billing"))
    log.record_labelled([LabelledEmail("m-1", NOW.isoformat(), "technical", "s", "b", email_id="m-1")])
    log.record_logs([LogRecord(NOW.isoformat(), "router", "WARNING", "fallback", request_id="a-new")])
    log.close()
    (root / "reports" / "errors").mkdir(parents=True)
    (root / "reports" / "errors" / "errors.html").write_text("<b>subject a-new</b> (a-new, 0.41)")
    (root / "reports" / "kpi.json").write_text('{"arms": {"linear": {"accuracy": 0.9}}}')
    return root


def audit_lines(home: Path) -> list[dict[str, Any]]:
    """The audit log's records (the event store's)."""
    log = events(home)
    try:
        return log.audit_records()
    finally:
        log.close()


def test_export_writes_every_record_of_the_user_and_audits(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    out = home.parent / "export-1.jsonl"
    code, stdout, _ = run(capsys, home, "export", "--user-id", "alice", "--out", str(out))
    assert code == 0
    assert "exported 2 predictions (1 with a shadow result), 1 feedback record, 1 imported labelled email" in stdout
    assert out.stat().st_mode & 0o777 == 0o600
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record"] for r in rows] == ["prediction", "prediction", "labelled", "log", "report"]
    first = rows[0]
    assert first["request_id"] == "a-old" and first["feedback"]["true_queue"] == "technical"
    assert first["shadow"] == {"model": "transformer", "queue": "billing"} and first["subject"] == "subject of a-old"
    assert rows[1]["feedback"] is None
    assert rows[4]["path"].endswith("errors.html")
    assert not any("bob" in json.dumps(r) or r.get("request_id", "").startswith("b-") for r in rows)

    (entry,) = audit_lines(home)
    assert entry["kind"] == "privacy-export" and entry["actor"] == "ops-anna"
    assert entry["new"]["user_keys"] == [user_key(SALT, "alice")] and entry["new"]["predictions"] == 2
    assert "alice" not in json.dumps(audit_lines(home))


def test_export_to_stdout_prints_only_json_lines(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, stdout, stderr = run(capsys, home, "export", "--user-id", "alice", "--actor", "dpo")
    assert code == 0
    assert [json.loads(line)["record"] for line in stdout.splitlines()][:2] == ["prediction", "prediction"]
    assert "exported 2 predictions" in stderr
    assert audit_lines(home)[0]["actor"] == "dpo" and audit_lines(home)[0]["new"]["out"] == "stdout"


def test_delete_removes_the_user_and_the_reports_naming_them(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, stdout, _ = run(capsys, home, "delete", "--user-id", "alice", "--yes")
    assert code == 0
    assert "deleted 2 predictions (1 with a shadow result), 1 feedback record, 1 imported labelled email, " \
           "1 log line, 1 report file" in stdout  # fmt: skip
    assert not (home / "reports" / "errors" / "errors.html").exists()
    assert (home / "reports" / "kpi.json").exists()

    log = events(home)
    try:
        assert set(log.joined_frame()["request_id"]) == {"b-old", "b-new"}
        assert list(log.feedback_frame()["request_id"]) == ["b-new"]
        assert log.labelled_frame().empty and log.logs(min_level="DEBUG") == []
    finally:
        log.close()
    (entry,) = audit_lines(home)
    assert entry["kind"] == "privacy-delete" and entry["new"]["predictions"] == 2
    assert "alice" not in json.dumps(audit_lines(home))

    code, stdout, _ = run(capsys, home, "delete", "--user-id", "alice", "--yes")  # again: nothing left
    assert code == 0 and "no records of this user" in stdout
    assert len(audit_lines(home)) == 2


def test_delete_asks_first_and_refuses_without_a_terminal(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, _, err = run(capsys, home, "delete", "--user-id", "alice")
    assert code == 2
    assert "--yes" in one_line_error(err)
    log = events(home)
    try:
        assert log.stats().predictions == 4
    finally:
        log.close()
    assert audit_lines(home) == []


def test_a_user_with_no_records_is_not_an_error(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    out = home.parent / "nobody.jsonl"
    code, stdout, _ = run(capsys, home, "export", "--user-id", "nobody", "--out", str(out))
    assert code == 0 and "no records of this user" in stdout
    assert out.read_text() == ""
    code, stdout, _ = run(capsys, home, "delete", "--user-id", "nobody")  # nothing to confirm
    assert code == 0 and "nothing deleted" in stdout
    assert [e["kind"] for e in audit_lines(home)] == ["privacy-export", "privacy-delete"]


def test_older_salts_come_from_salt_files_and_the_current_from_the_environment(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = events(home)
    log.record_predictions([prediction("a-rotated", "alice", 0.5, salt="salt-after-rotation-xyz")])
    log.close()
    old = home.parent / "old_salt"
    old.write_text(SALT + "\n")
    monkeypatch.setenv("MAILROUTE_USER_SALT", "salt-after-rotation-xyz")  # the app's salt now
    code, stdout, _ = run(capsys, home, "export", "--user-id", "alice")
    assert code == 0 and [json.loads(x)["request_id"] for x in stdout.splitlines()[:1]] == ["a-rotated"]
    code, stdout, _ = run(capsys, home, "delete", "--user-id", "alice", "--salt-file", str(old), "--yes")
    assert code == 0 and "deleted 3 predictions" in stdout
    assert len(audit_lines(home)[-1]["new"]["user_keys"]) == 2


def test_retain_blanks_old_text_from_days_or_the_config(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    code, stdout, _ = run(capsys, home, "retain", "--days", "30")
    assert code == 0 and "blanked: 2 predictions, 0 imported labelled emails" in stdout
    log = events(home)
    try:
        frame = log.joined_frame().set_index("request_id")
        assert frame.loc[["a-old", "b-old"], "body"].isna().all() and frame.loc["a-new", "body"] == "body of a-new"
        assert frame.loc["a-old", "true_queue"] == "technical" and log.stats().predictions == 4
    finally:
        log.close()

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "serving.yaml").write_text("event_log: {retention_days: 1}\n")
    code, stdout, _ = run(capsys, home, "retain", "--json", config_dir=configs)
    assert code == 0
    assert json.loads(stdout)["days"] == 1 and json.loads(stdout)["predictions"] == 2  # a-new and b-new, a day old
    assert [(e["kind"], e["new"]["days"]) for e in audit_lines(home)] == [("retention", 30), ("retention", 1)]


def test_retain_without_a_period_is_one_line(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, _, err = run(capsys, home, "retain")
    assert code == 2
    assert "give --days N or set event_log.retention_days" in one_line_error(err)


@pytest.mark.parametrize(
    ("args", "expected_code", "expected"),
    [
        (["export", "--user-id", ""], 2, "--user-id"),
        (["delete", "--user-id", "", "--yes"], 2, "--user-id"),
        (["export"], 2, "missing option '--user-id'"),
        (["retain", "--days", "-3"], 2, "--days"),
        (["export", "--user-id", "alice", "--salt-file", "/nonexistent/salt"], 1, "cannot read salt file"),
    ],
)
def test_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, args: list[str], expected_code: int, expected: str
) -> None:
    code, _, err = run(capsys, home, *args)
    assert code == expected_code
    assert expected in one_line_error(err)
    assert audit_lines(home) == []


@pytest.mark.parametrize("command", [["export", "--user-id", "alice"], ["delete", "--user-id", "alice", "--yes"],
                                     ["retain", "--days", "3"]])  # fmt: skip
def test_a_home_without_a_readable_log_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    code, _, err = run(capsys, not_a_folder, *command)
    assert code == 1 and "no event log" in one_line_error(err)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "user_salt").write_text(SALT)
    (broken / "events.db").write_text("this is not a database" * 100)
    code, _, err = run(capsys, broken, *command)
    assert code == 1 and "cannot open event log" in one_line_error(err)


def test_a_missing_salt_is_one_line_and_makes_none(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    (home / "user_salt").unlink()
    code, _, err = run(capsys, home, "export", "--user-id", "alice")
    assert code == 1 and "no user salt" in one_line_error(err)
    assert not (home / "user_salt").exists()


def test_on_a_shared_store_the_home_salt_file_is_refused(
    capsys: pytest.CaptureFixture[str], home: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL every node's routers pseudonymise with the salt from the environment or the secrets file; one
    # machine's <home>/user_salt would find nobody (or the wrong people), so it is refused, not used.
    monkeypatch.setenv("MAILROUTE_EVENT_LOG_URL", postgres.fresh_url())
    code, out, err = run(capsys, home, "export", "--user-id", "alice")
    assert code == 1 and out == ""
    assert "MAILROUTE_USER_SALT" in one_line_error(err)
    monkeypatch.setenv("MAILROUTE_USER_SALT", SALT)  # the same salt, from where a cluster keeps it: accepted
    code, _, err = run(capsys, home, "export", "--user-id", "alice")
    assert code == 0, err


def test_a_deletion_whose_audit_fails_in_sqlite_says_what_was_deleted(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: only the store's own errors were caught, so SQLite's (a locked or full database) made the
    deletion, then a traceback instead of the sentence saying it was done but not audited."""
    import sqlite3

    from serving.store.sqlite import SQLiteEventLog

    def locked(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SQLiteEventLog, "record_change", locked)
    code, _, err = run(capsys, home, "delete", "--user-id", "alice", "--yes")
    assert code == 1
    line = one_line_error(err)
    assert "deleted" in line and "audit record could not be written" in line and "database is locked" in line
