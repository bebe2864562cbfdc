"""The dashboard over the files alone: empty store, escaping, search by either id, report files and traversal."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import records
from fastapi.testclient import TestClient

from monitoring.dashboard.data import DashboardSources, read_audit, report_file
from monitoring.dashboard.routes import PAGE_CSP, standalone_app
from serving.config import Home
from serving.store.eventlog import FeedbackEvent, LogRecord, MonitorVerdict, PredictionEvent, open_event_log

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)  # today: inside the page's windows
EVIL = "<script>alert('pwned')</script>"


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def prediction(request_id: str, at: float, **fields: Any) -> PredictionEvent:
    defaults = {"confidence": 0.9, "latency_ms": 3.0, "experiment": "linear-vs-minilm", "in_experiment": True,
                "subject": "Invoice", "body": "please send the invoice"}  # fmt: skip
    return records.prediction(request_id, ts(at), **{**defaults, **fields})


AGENT_TOKEN = "agent-ana-token-0123456789"
CLIENT_TOKEN = "gateway-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent (ana), a client system (gateway) and an admin, from the environment (the Ray tests' session sets
    another admin token in this process)."""
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MAILROUTE_TOKEN_ANA", f"agent:{AGENT_TOKEN}")
    monkeypatch.setenv("MAILROUTE_TOKEN_GATEWAY", f"client:{CLIENT_TOKEN}")


def client(home: Home, token: str | None = AGENT_TOKEN) -> TestClient:
    """The standalone dashboard, as an agent (by default) would call it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(standalone_app(DashboardSources.from_files(home, CONFIGS)), headers=headers)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def filled(home: Home) -> Home:
    """A store with a routed email, a hostile one in triage, a fallback with log lines from two components."""
    log = open_event_log(f"sqlite:///{home.event_log}")
    log.record_predictions(
        [
            prediction("req-ok", 1, email_id="mail-ok"),
            prediction(
                "req-evil",
                2,
                email_id="mail-evil",
                subject=EVIL,
                queue="triage",
                reason="low_confidence",
                confidence=0.31,
                secondary_queue="billing",
            ),
            prediction(
                "req-fb",
                3,
                email_id="mail-fb",
                arm="transformer",
                fallback=True,
                reason="fallback_to_linear:transformer_error",
            ),
        ]
    )
    log.record_feedback(FeedbackEvent("req-fb", ts(60), "shipping", handling_seconds=42.0, agent_id="agent-7"))
    log.record_logs(
        [
            LogRecord(ts(3), "arm-transformer", "WARNING", "injected fault 'error'", "req-fb", "mail-fb"),
            LogRecord(ts(3.1), "router", "WARNING", "arm transformer failed: RuntimeError", "req-fb", "mail-fb"),
            LogRecord(ts(3.2), "router", "WARNING", "fallback: answered by arm linear", "req-fb", "mail-fb"),
            LogRecord(ts(4), "event-writer", "ERROR", f"cannot write {EVIL}"),
            LogRecord(ts(5), "router", "INFO", "an info line about nobody"),
        ]
    )
    log.close()
    return home


def test_an_empty_home_says_so_in_words(home: Home) -> None:
    response = client(home).get("/dashboard")
    assert response.status_code == 200
    page = response.text
    assert "No event log yet" in page and "nothing has been routed" in page
    assert "No drift run yet." in page
    assert "No experiment report yet" in page
    assert "No warning or error has been logged" in page
    assert "No email was answered by a fallback" in page
    assert "linear-vs-minilm" in page and "not in the registry" in page  # the configured experiment, no models yet
    assert not home.event_log.exists()  # reading the page created nothing
    missing = client(home).get("/dashboard", params={"q": "req-1"}).text
    assert "no email can be found" in missing


def test_page_lists_every_components_warnings_and_the_flagged_emails(filled: Home) -> None:
    response = client(filled).get("/dashboard")
    assert response.headers["content-security-policy"] == PAGE_CSP
    page = response.text
    for component in ("arm-transformer", "router", "event-writer"):
        assert f'<td class="component">{component}</td>' in page
    assert "an info line about nobody" not in page  # WARNING and above by default
    flagged = page.split('id="flagged-emails"')[1].split("</table>")[0]
    assert "fallback_to_linear:transformer_error" in flagged and "low_confidence" in flagged
    only_router = client(filled).get("/dashboard", params={"component": "router", "level": "INFO"}).text
    assert "an info line about nobody" in only_router and "injected fault" not in only_router


def test_text_from_emails_is_escaped(filled: Home) -> None:
    for params in ({}, {"q": "req-evil"}):
        page = client(filled).get("/dashboard", params=params).text
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    hostile_query = client(filled).get("/dashboard", params={"q": '"><img src=x onerror=alert(1)>'}).text
    assert "<img src=x" not in hostile_query and "&lt;img src=x onerror=alert(1)&gt;" in hostile_query


@pytest.mark.parametrize("query", ["req-fb", "mail-fb", "  req-fb  "])
def test_search_by_either_id_shows_record_feedback_and_every_components_lines(filled: Home, query: str) -> None:
    page = client(filled).get("/dashboard", params={"q": query}).text
    found = page.split('<section id="search">')[1].split("</section>")[0]
    assert "req-fb" in found and "mail-fb" in found and "fallback_to_linear:transformer_error" in found
    assert "shipping" in found and "misrouted to billing" in found and "agent-7" in found  # the feedback
    lines = found.split('id="search-logs"')[1]
    assert lines.count('<td class="component">router</td>') == 2
    assert lines.count('<td class="component">arm-transformer</td>') == 1
    assert "cannot write" not in lines  # a line about no email is not about this one


def test_a_bad_search_id_says_so(filled: Home) -> None:
    page = client(filled).get("/dashboard", params={"q": "no-such-id"}).text
    assert "No email has request_id or email_id &#39;no-such-id&#39;." in page
    assert "No log line names this email." in page
    too_long = client(filled).get("/dashboard", params={"q": "x" * 500}).text
    assert "An id is at most 200 characters." in too_long


def test_latest_verdict_per_check_links_its_report(filled: Home) -> None:
    reports = filled.reports / "monitoring"
    reports.mkdir(parents=True)
    (reports / "drift-run2.html").write_text("<html><body>evidently</body></html>")
    log = open_event_log(f"sqlite:///{filled.event_log}")
    log.record_verdicts(
        [
            MonitorVerdict("run1", ts(100), "drift", "all", "text_drift", False, ts(0), ts(90), 0.2, 0.5),
            MonitorVerdict(
                "run2",
                ts(200),
                "drift",
                "all",
                "text_drift",
                True,
                ts(100),
                ts(190),
                0.8,
                0.5,
                str(reports / "drift-run2.html"),
            ),
            MonitorVerdict("run2", ts(200), "drift", "all", "accuracy", False, ts(100), ts(190), detail="no feedback"),
        ]
    )
    log.close()
    page = client(filled).get("/dashboard").text
    latest = page.split('id="verdicts"')[1].split("</table>")[0]
    assert latest.count("<tr>") == 3  # header + the two checks' latest rows, not run1's older row
    assert '<td class="alarm">drift</td>' in latest
    assert '<td class="empty">skipped</td>' in latest and "no feedback" in latest  # not shown as "no drift"
    assert 'href="/dashboard/reports/monitoring/drift-run2.html"' in latest
    assert 'id="drift-plot"' in page and "data:image/png;base64," in page
    report = client(filled).get("/dashboard/reports/monitoring/drift-run2.html")
    assert report.status_code == 200 and "evidently" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox")


@pytest.mark.parametrize(
    "path",
    [
        "../events.db",
        "..%2Fevents.db",
        "monitoring/../../events.db",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "outside-link",
        "monitoring",
        "nothing.html",
    ],
)
def test_report_files_outside_the_reports_folder_are_refused(filled: Home, path: str) -> None:
    (filled.reports / "monitoring").mkdir(parents=True)
    (filled.reports / "outside-link").symlink_to(filled.event_log)
    response = client(filled).get(f"/dashboard/reports/{path}")
    assert response.status_code == 404
    assert report_file(filled, path.replace("%2F", "/").replace("%2e", ".")) is None


def test_running_experiment_and_audit_log(home: Home) -> None:
    home.root.mkdir(parents=True)
    base = {"arms": {"linear": {"weight": 0.5, "version": "champion"}, "transformer": {"weight": 0.5}}}
    changed = {"arms": {"linear": {"weight": 0.8, "version": "champion"}, "transformer": {"weight": 0.2}}}
    store = open_event_log(f"sqlite:///{home.event_log}")
    store.record_audit({"ts": ts(0), "actor": "ops<b>", "kind": "experiment", "old": base, "new": changed,
                        "moved_share": 0.3})  # fmt: skip
    store.record_audit({"ts": ts(9), "actor": "ops", "kind": "experiment", "old": changed,
                        "new": {**changed, "coverage": 0.5}})  # fmt: skip
    entries = read_audit(store)
    assert [e.summary for e in entries] == [
        "coverage None → 0.5",
        "linear weight 0.5 → 0.8; transformer weight 0.5 → 0.2",
    ]
    assert entries[1].moved_share == 0.3
    page = client(home).get("/dashboard").text
    audit = page.split('id="audit"')[1].split("</table>")[0]
    assert "ops&lt;b&gt;" in audit and "30.0%" in audit
    arms = page.split('id="arms"')[1].split("</table>")[0]
    assert "linear:champion" in arms and "50.0%" in arms


def test_the_experiment_report_shows_each_arms_kpis_and_the_recommendation(filled: Home) -> None:
    pytest.importorskip("experiments.analysis.report", reason="the experiment report has not landed")
    page = client(filled).get("/dashboard").text
    report = page.split('<section id="report">')[1].split("</section>")[0]
    # The transformer's only email was answered by a fallback: too few emails to judge a guardrail on.
    assert 'id="recommendation"' in report and "keep running" in report and "roll back" not in report
    assert "transformer fallback rate: too few emails to judge" in report
    kpis = report.split('id="kpis"')[1].split("</table>")[0]
    assert "<th>linear (control)</th>" in kpis and "<th>transformer</th>" in kpis
    assert "routing accuracy" in kpis and "net saving" in kpis
    assert 'id="srm"' in report and 'id="guardrails"' in report
    totals = report.split('id="daily-totals"')[1].split("</table>")[0]
    assert totals.count("<th>") == 1 and T0.date().isoformat() in totals  # days with mail only


def test_mailroute_dashboard_serves_the_page_from_the_files(filled: Home) -> None:
    import subprocess
    import sys
    import time

    import httpx

    from serving.ops.ports import free_port

    port = free_port()
    command = [sys.executable, "-c", "from serving.cli import main; raise SystemExit(main())"]
    args = ["--home", str(filled.root), "--config-dir", str(CONFIGS), "dashboard", "--port", str(port)]
    server = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                auth = {"Authorization": f"Bearer {AGENT_TOKEN}"}  # the server's environment is this process's
                page = httpx.get(f"http://127.0.0.1:{port}/dashboard", params={"q": "mail-fb"}, timeout=5, headers=auth)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout and server.stdout.read()
                time.sleep(0.2)
        assert page.status_code == 200 and "req-fb" in page.text and "arm-transformer" in page.text
    finally:
        server.terminate()
        server.wait(10)


def test_every_dashboard_path_needs_an_agents_or_an_admins_token(filled: Home) -> None:
    from monitoring.dashboard.routes import COOKIE

    web = client(filled, token=None)
    for path in ("/dashboard", "/dashboard?q=req-ok", "/dashboard/reports/x.html", "/dashboard/label"):
        answer = web.get(path)
        assert answer.status_code == 401 and "sign in with an agent's or an admin's token" in answer.text
        assert "Invoice" not in answer.text and "req-ok" not in answer.text  # nothing from an email before signing in
        wrong = web.get(path, headers={"Authorization": "Bearer guess-guess-guess-guess"})
        assert wrong.status_code == 401 and "Invoice" not in wrong.text
        refused = web.get(path, headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})  # a mail gateway's token
        assert refused.status_code == 403 and "client token" in refused.text and "Invoice" not in refused.text
    assert web.post("/dashboard/login", data={"token": "guess"}).status_code == 401
    assert web.post("/dashboard/login", data={"token": CLIENT_TOKEN}).status_code == 401
    signed = web.post("/dashboard/login", data={"token": AGENT_TOKEN}, follow_redirects=False)
    cookie = signed.cookies.get(COOKIE) or ""
    assert signed.status_code == 303 and cookie.startswith("ana:") and AGENT_TOKEN not in cookie
    assert (
        hashlib.sha256(AGENT_TOKEN.encode()).hexdigest() not in cookie
        and "max-age=43200" in signed.headers["set-cookie"].lower()
    )
    assert (
        "httponly" in signed.headers["set-cookie"].lower() and "samesite=strict" in signed.headers["set-cookie"].lower()
    )
    page = web.get("/dashboard")  # the cookie from the login
    assert page.status_code == 200 and "signed in as ana (agent)" in page.text
    forged = client(filled, token=None)  # ana's session under another holder's name opens nothing
    forged.cookies.set(COOKIE, "admin:" + cookie.partition(":")[2])
    old = client(filled, token=None)  # a session past its twelve hours
    holder, issued, mac = cookie.split(":")
    old.cookies.set(COOKIE, f"{holder}:{int(issued) - 13 * 3600}:{mac}")
    assert old.get("/dashboard").status_code == 401
    assert forged.get("/dashboard").status_code == 401
    genuine = client(filled, token=None)
    genuine.cookies.set(COOKIE, cookie)
    assert genuine.get("/dashboard").status_code == 200
    bearer = client(filled, token=ADMIN_TOKEN).get("/dashboard")
    assert bearer.status_code == 200 and 'id="arms"' in bearer.text and "signed in as admin (admin)" in bearer.text


def test_a_revoked_token_ends_its_session(filled: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.auth import add_token, revoke_token

    secrets_file = filled.root / "secrets.yaml"
    token = add_token(secrets_file, "bo", "agent")
    web = client(filled, token=None)
    assert web.post("/dashboard/login", data={"token": token}, follow_redirects=False).status_code == 303
    assert web.get("/dashboard").status_code == 200
    assert revoke_token(secrets_file, "bo")
    monkeypatch.setattr("serving.auth.RECHECK_S", 0.0)  # the server looks at the file at most once a second
    assert web.get("/dashboard").status_code == 401


def test_with_authentication_off_the_page_is_open_and_says_so(filled: Home, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("queues.yaml", "experiments.yaml", "monitoring.yaml"):
        (configs / name).write_text((CONFIGS / name).read_text())
    (configs / "serving.yaml").write_text((CONFIGS / "serving.yaml").read_text() + "auth: {enabled: false}\n")
    page = TestClient(standalone_app(DashboardSources.from_files(filled, configs))).get("/dashboard")
    assert page.status_code == 200 and "authentication is off" in page.text


def test_a_password_in_the_store_url_is_never_shown(home: Home) -> None:
    sources = DashboardSources(home, None, "postgresql://mr:hunter2@db.internal:5432/mailroute")
    assert "hunter2" not in sources.store_label and "db.internal" in sources.store_label


def test_a_session_is_signed_with_the_salt_in_force_not_a_home_file(
    filled: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the session secret was always `<home>/user_salt`, made on first sign-in even when the salt
    comes from the environment (on a cluster, another secret per node; and a file to make the pseudonyms drift to
    the day the variable goes away)."""
    from monitoring.dashboard.routes import COOKIE

    monkeypatch.setenv("MAILROUTE_USER_SALT", "a-salt-from-the-environment-0123456789")
    (filled.root / "user_salt").unlink(missing_ok=True)
    web = client(filled, token=None)
    signed = web.post("/dashboard/login", data={"token": AGENT_TOKEN}, follow_redirects=False)
    assert signed.status_code == 303 and (signed.cookies.get(COOKIE) or "").startswith("ana:")
    assert web.get("/dashboard").status_code == 200
    assert not (filled.root / "user_salt").exists()


def test_on_a_shared_store_the_session_secret_is_never_a_new_home_file(
    home: Home, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: on PostgreSQL `mailroute dashboard` signed sessions with a salt it made in its own home, one
    no router uses (they refuse that file there). It must say where the salt goes instead, and make no file."""
    from serving.config import ConfigError

    monkeypatch.delenv("MAILROUTE_USER_SALT", raising=False)
    monkeypatch.setenv("MAILROUTE_EVENT_LOG_URL", postgres.fresh_url())
    sources = DashboardSources.from_files(home, CONFIGS)
    with pytest.raises(ConfigError, match="MAILROUTE_USER_SALT"):
        sources.secret()
    assert not (home.root / "user_salt").exists()


def test_a_store_that_fails_every_read_still_renders_the_page(home: Home) -> None:
    """Found in review: the saved layout and the audit log were read outside the page's error handling, so a
    database that went away turned the whole dashboard into a 500 instead of a note."""
    from serving.store.eventlog import EventLogError
    from serving.store.memory import MemoryEventLog

    class GoneStore(MemoryEventLog):
        def __getattribute__(self, name: str) -> Any:
            if name in ("read_state", "audit_records", "logs", "flagged_predictions", "verdicts", "get_prediction"):
                raise EventLogError("server closed the connection unexpectedly")
            return super().__getattribute__(name)

    sources = DashboardSources(home, GoneStore(), "postgresql://db.internal/mailroute", CONFIGS)
    page = TestClient(standalone_app(sources)).get("/dashboard")
    assert page.status_code == 200
    assert "Could not read the event log: server closed the connection" in page.text
    assert "the saved layout could not be read (server closed the connection" in page.text
