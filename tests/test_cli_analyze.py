"""`mailroute analyze errors|apply-thresholds` in-process on a small SQLite event log: the outputs, the change
sent to the server (a fake client), and every bad input as one line on stderr with exit code 2 or 1."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cli_support import one_line_error, run_cli

from serving.config import PolicyConfig, load_queues, parse_config
from serving.store.eventlog import FeedbackEvent, PredictionEvent
from serving.store.sqlite import SQLiteEventLog

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUEUES = ("billing", "technical", "shipping")
SCRIPT = "<script>alert('x')</script>"


def email(
    i: int, queue: str, p: float, *, days_ago: float = 5.0, proba: bool = True, subject: str = ""
) -> PredictionEvent:
    others = [q for q in QUEUES if q != queue]
    vector = {queue: p, others[0]: round((1 - p) * 0.7, 6), others[1]: round((1 - p) * 0.3, 6)}
    routed = p >= 0.6  # serving.yaml's threshold
    return PredictionEvent(
        request_id=f"r{i}",
        ts=(datetime.now(UTC) - timedelta(days=days_ago, minutes=i)).isoformat(),
        user_key=f"u{i % 7}",
        arm="linear" if i % 4 else "transformer",
        model_name="linear" if i % 4 else "transformer",
        model_version="v1",
        queue=queue if routed else "triage",
        confidence=p,
        fallback=False,
        reason="confident" if routed else "low_confidence",
        latency_ms=3.0,
        secondary_queue=None if routed else queue,
        subject=subject or f"subject {i}",
        body=f"body {i}",
        proba=vector if proba else None,
    )


def build_log(path: Path, n: int = 150, *, days_ago: float = 5.0, proba: bool = True) -> None:
    """n emails over three queues with top probabilities 0.30 ... 0.95; the model is right more often when sure.
    Wrong and triaged emails get feedback (as agents send it); right auto-routed ones are implicitly correct."""
    log = SQLiteEventLog(path)
    predictions, feedback = [], []
    for i in range(n):
        queue, p = QUEUES[i % 3], round(0.30 + 0.05 * (i % 14), 2)
        right = (i * 7) % 10 < (3 + 7 * p)  # about 50% right at 0.3, all right at 0.95
        true = queue if right else QUEUES[(i + 1) % 3]
        e = email(i, queue, p, days_ago=days_ago, proba=proba, subject="" if right else SCRIPT)  # misroutes: examples
        predictions.append(e)
        if not right or e.queue == "triage":
            ts = (datetime.now(UTC) - timedelta(days=days_ago - 1)).isoformat()
            feedback.append(FeedbackEvent(e.request_id, ts, true))
    log.record_predictions(predictions)
    for f in feedback:
        log.record_feedback(f)
    log.close()


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(CONFIGS))  # main sets it from --config-dir; this restores it
    for name in ("MAILROUTE_CLOCK", "MAILROUTE_HOME", "MAILROUTE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    build_log(folder / "events.db")
    return folder


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "--home", str(home), "--config-dir", str(CONFIGS), *args)


class FakeClient:
    """Stands in for serving.client.MailrouteClient: the server's policy, and the changes sent to it."""

    sent: ClassVar[list[dict[str, Any]]] = []
    live = PolicyConfig(confidence_threshold=0.6, queue_thresholds={"shipping": 0.9})

    def __init__(self, url: str, *, token: str | None = None, **kw: Any) -> None:
        assert token == "secret"

    def policy(self) -> dict[str, Any]:
        return {"policy": self.live.model_dump(mode="json"), "config_version": 3}

    def change_policy(self, change: dict[str, Any]) -> dict[str, Any]:
        FakeClient.sent.append(change)
        return {"policy": change}

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_errors_text_json_and_html(capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, home, "analyze", "errors")
    assert code == 0, err
    assert "error analysis: 150 emails" in out and "confusion" in out and "threshold what-if over" in out
    page = tmp_path / "out" / "errors.html"
    code, out, _ = run(capsys, home, "analyze", "errors", "--arm", "linear", "--json", "--html", str(page))
    assert code == 0
    data = json.loads(out)
    assert data["errors"]["arm"] == "linear" and data["errors"]["emails"] == 112  # i % 4 != 0
    assert data["what_if"]["global_table"]["scope"] == "all"
    html = page.read_text()
    assert SCRIPT not in html and "&lt;script&gt;" in html
    code, out, _ = run(capsys, home, "analyze", "errors", "--version", "transformer:v1", "--since", "30d", "--json")
    assert code == 0 and json.loads(out)["errors"]["emails"] == 38


def test_apply_thresholds_dry_run_sends_nothing(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.client.MailrouteClient", None)  # any server call would fail
    code, out, err = run(capsys, home, "analyze", "apply-thresholds", "--dry-run")
    assert code == 0, err
    assert "current policy:  global 0.60" in out and "proposed policy:" in out
    assert "expected net saving:" in out and out.rstrip().endswith("dry run: nothing sent")
    code, out, err = run(capsys, home, "analyze", "apply-thresholds", "--dry-run", "--global-only", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "what-if" and data["proposed"]["queue_thresholds"] == {}
    assert data["proposed"]["confidence_threshold"] == data["what_if"]["global_table"]["best"]
    assert data["gain"] == pytest.approx(data["proposed_figures"]["net_saving"] - data["current_figures"]["net_saving"])


def test_apply_thresholds_sends_what_the_server_accepts(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.analyze_cli import apply_thresholds_command
    from serving.config import Home

    monkeypatch.setattr("serving.client.MailrouteClient", FakeClient)
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "secret")
    FakeClient.sent = []
    code, out, err = run(capsys, home, "analyze", "apply-thresholds", "--url", "http://server:8000")
    assert code == 0, err
    assert "applied at http://server:8000" in out
    [change] = FakeClient.sent
    # The server merges the change into its policy and validates it with the same model.
    merged = parse_config({**FakeClient.live.model_dump(mode="json"), **change}, PolicyConfig, "policy")
    merged.check_queues(load_queues(CONFIGS / "queues.yaml").names)
    plan = apply_thresholds_command(Home(home), url="http://server:8000", dry_run=True, out=io.StringIO())
    assert plan.current_figures is not None and plan.proposed_figures is not None
    assert plan.proposed_figures.net_saving >= plan.current_figures.net_saving

    FakeClient.sent = []
    code, out, _ = run(capsys, home, "analyze", "apply-thresholds", "--global-only", "--url", "http://server:8000")
    assert code == 0 and FakeClient.sent[0]["queue_thresholds"] == {}  # the live shipping threshold is dropped
    FakeClient.sent = []
    args = ["analyze", "apply-thresholds", "--queue", "billing=0.7", "--threshold", "0.65"]
    code, out, _ = run(capsys, home, *args)
    assert code == 0 and "given policy: global 0.65 (billing 0.70, shipping 0.90)" in out
    assert FakeClient.sent == [{"confidence_threshold": 0.65, "queue_thresholds": {"billing": 0.7, "shipping": 0.9}}]


def test_apply_thresholds_needs_the_admin_token(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, _, err = run(capsys, home, "analyze", "apply-thresholds")
    assert code == 1 and "needs an admin token in $MAILROUTE_TOKEN or $MAILROUTE_ADMIN_TOKEN" in one_line_error(err)


def test_explicit_thresholds_without_a_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, tmp_path / "empty", "analyze", "apply-thresholds", "--threshold", "0.7", "--dry-run")
    assert code == 0, err
    assert "no estimate: no event log at" in out and "given policy: global 0.70" in out
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["errors", "--arm", "nope"], "no email of arm 'nope' in the window; arms: linear, transformer"),
        (["errors", "--version", "linear:v9"], "versions: linear:v1, transformer:v1"),
        (["errors", "--since", "yesterday"], "--since 'yesterday' is not a time"),
        (["errors", "--since", "2999-01-01"], "is in the future"),
        (["apply-thresholds", "--arm", "nope", "--dry-run"], "no email of arm 'nope'"),
        (["apply-thresholds", "--since", "soon", "--dry-run"], "is not a time"),
        (["apply-thresholds", "--queue", "billing", "--dry-run"], "expected QUEUE=THRESHOLD"),
        (["apply-thresholds", "--queue", "refunds=0.5", "--dry-run"], "'refunds' is not a queue of the taxonomy"),
        (["apply-thresholds", "--queue", "billing=1.5", "--dry-run"], "billing's threshold 1.5 is not in [0, 1]"),
        (["apply-thresholds", "--threshold", "1.5", "--dry-run"], "invalid value for '--threshold'"),
        (["apply-thresholds", "--global-only", "--queue", "billing=0.5"], "cannot be given --queue too"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, args: list[str], expected: str
) -> None:
    code, out, err = run(capsys, home, "analyze", *args)
    line = one_line_error(err)
    assert code == 2 and out == ""
    assert line.startswith("mailroute analyze") and expected in line


def test_missing_log_exits_1_and_creates_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for command in (["errors"], ["apply-thresholds", "--dry-run"]):
        code, _, err = run(capsys, tmp_path / "nohome", "analyze", *command)
        assert code == 1 and one_line_error(err).startswith("mailroute: error: no event log at")
    assert not (tmp_path / "nohome").exists()


def test_no_judged_emails_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build_log(tmp_path / "events.db", n=10, days_ago=0.5, proba=True)  # young, and right ones get no feedback
    code, _, err = run(capsys, tmp_path, "analyze", "errors", "--since", "1h")
    assert code == 1 and "no email was routed in the window (since 1h)" in one_line_error(err)
    empty = tmp_path / "empty"
    SQLiteEventLog(empty / "events.db").close()
    code, _, err = run(capsys, empty, "analyze", "apply-thresholds", "--dry-run")
    assert code == 1 and "no email was routed in the window" in one_line_error(err)
    young = tmp_path / "young"
    log = SQLiteEventLog(young / "events.db")
    log.record_predictions([email(1, "billing", 0.9, days_ago=0.5)])
    log.close()
    for command in (["errors"], ["apply-thresholds", "--dry-run"]):
        code, _, err = run(capsys, young, "analyze", *command)
        assert code == 1 and "has a verdict yet" in one_line_error(err)


def test_no_probability_vectors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build_log(tmp_path / "events.db", proba=False)
    code, _, err = run(capsys, tmp_path, "analyze", "apply-thresholds", "--dry-run")
    assert code == 1 and "has a probability vector" in one_line_error(err)
    code, out, err = run(capsys, tmp_path, "analyze", "errors")  # the misroute pairs need no vector
    assert code == 0, err
    assert "have no probability vector" in out and "threshold what-if" not in out


def test_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for args in (["analyze", "--help"], ["analyze", "apply-thresholds", "--help"]):
        code, out, err = run(capsys, tmp_path, *args)
        assert code == 0 and err == "" and out.startswith(f"Usage: mailroute {' '.join(args[:-1])} ")
