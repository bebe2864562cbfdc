"""The dashboard's labelling view (lists, search, one-click and bulk labelling, CSRF, access) and rollout section."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import records
from fastapi.testclient import TestClient
from markupsafe import escape

from experiments.rollout.state import RolloutState, Step, save
from monitoring.dashboard.changes import read_audit
from monitoring.dashboard.data import DashboardSources
from monitoring.dashboard.labelling import CSRF_MESSAGE
from monitoring.dashboard.routes import PAGE_CSP, standalone_app
from serving.config import Home, PolicyConfig
from serving.ops.state import audit, user_salt
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent, open_event_log

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOW = datetime.now(UTC)
EVIL = "<script>alert('pwned')</script>"


def prediction(request_id: str, minutes_ago: float, **fields: Any) -> PredictionEvent:
    when = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return records.prediction(
        request_id, when, **{"confidence": 0.7, "proba": {"billing": 0.7, "technical": 0.2, "general": 0.1}, **fields}
    )


def triaged(request_id: str, minutes_ago: float, **fields: Any) -> PredictionEvent:
    fields = {
        "queue": "triage",
        "reason": "low_confidence",
        "confidence": 0.35,
        "secondary_queue": "shipping",
        **fields,
    }
    return prediction(request_id, minutes_ago, **fields)


AGENT_TOKEN = "agent-ana-token-0123456789"
CLIENT_TOKEN = "gateway-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MAILROUTE_TOKEN_ANA", f"agent:{AGENT_TOKEN}")
    monkeypatch.setenv("MAILROUTE_TOKEN_GATEWAY", f"client:{CLIENT_TOKEN}")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


@contextmanager
def _store(home: Home) -> Iterator[EventLog]:
    log = open_event_log(f"sqlite:///{home.event_log}")
    try:
        yield log
    finally:
        log.close()


@pytest.fixture
def filled(home: Home) -> Home:
    log = open_event_log(f"sqlite:///{home.event_log}")
    log.record_predictions(
        [
            triaged("t-parcel", 1, subject="Parcel never came", body="where is my parcel"),
            triaged("t-evil", 2, subject=EVIL, body=f"body {EVIL}"),
            triaged("t-done", 3),
            prediction("u-close", 4, proba={"billing": 0.5, "technical": 0.45, "general": 0.05}),
            prediction("u-mid", 5, proba={"billing": 0.6, "technical": 0.3, "general": 0.1}),
        ]
    )
    log.record_feedback(FeedbackEvent("t-done", NOW.isoformat(), "shipping", agent_id="agent-7"))
    log.close()
    return home


def client(home: Home, token: str | None = AGENT_TOKEN) -> TestClient:
    """The standalone dashboard, as agent ana (by default) would call it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(standalone_app(DashboardSources.from_files(home, CONFIGS)), headers=headers)


def stored(home: Home, request_id: str) -> FeedbackEvent | None:
    log = open_event_log(f"sqlite:///{home.event_log}")
    try:
        return log.get_feedback(request_id)
    finally:
        log.close()


def token(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def section(page: str, name: str) -> str:
    return page.split(f'<section id="{name}">')[1].split("</section>")[0]


def test_the_page_lists_both_queues_and_escapes_email_text(filled: Home) -> None:
    response = client(filled).get("/dashboard/label")
    assert response.status_code == 200 and response.headers["content-security-policy"] == PAGE_CSP
    page = response.text
    triage = section(page, "triaged")
    assert triage.index("t-parcel") < triage.index("t-evil") and "t-done" not in triage  # newest first, unlabelled
    assert '<option value="shipping" selected>' in triage  # the model's guess is preselected
    uncertain = section(page, "uncertain")
    assert uncertain.index("u-close") < uncertain.index("u-mid") and "0.050" in uncertain  # lowest margin first
    assert "<script>" not in page and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert page.count('type="checkbox" name="pick"') == 4 and 'name="assign_selected"' in page


def test_search_narrows_both_lists(filled: Home) -> None:
    page = client(filled).get("/dashboard/label", params={"q": "PARCEL"}).text
    assert "t-parcel" in section(page, "triaged") and "t-evil" not in page
    assert "No unlabelled email here matches the search." in section(page, "uncertain")
    assert 'value="PARCEL"' in page  # kept in the search box and in the form's hidden field


def test_one_click_labels_one_email_and_reports_back(filled: Home) -> None:
    web = client(filled)
    csrf = token(web.get("/dashboard/label").text)
    form = {"csrf": csrf, "agent": "ana", "q": "", "assign": "t-parcel", "queue:t-parcel": "shipping",
            "queue:t-evil": "billing", "pick": "u-mid", "bulk_queue": "sales"}  # fmt: skip
    answer = web.post("/dashboard/label", data=form, follow_redirects=False)
    assert answer.status_code == 303
    back = parse_qs(urlsplit(answer.headers["location"]).query)
    assert back["result"] == ["labelled 1 email(s) (shipping 1)"] and back["agent"] == ["ana"]
    fb = stored(filled, "t-parcel")
    assert fb is not None and (fb.true_queue, fb.source, fb.agent_id) == ("shipping", "labelling", "ana")
    assert stored(filled, "t-evil") is None and stored(filled, "u-mid") is None  # only the pressed row
    page = web.get(answer.headers["location"]).text
    assert 'id="result">labelled 1 email(s) (shipping 1)' in page and "t-parcel" not in section(page, "triaged")
    assert 'name="agent" value="ana"' in page


def test_bulk_labels_the_ticked_emails_and_reports_the_ones_labelled_before(filled: Home) -> None:
    web = client(filled)
    csrf = token(web.get("/dashboard/label").text)
    form = {"csrf": csrf, "agent": "", "assign_selected": "1", "bulk_queue": "technical",
            "pick": ["u-close", "u-mid", "t-done"]}  # fmt: skip
    answer = web.post("/dashboard/label", data=form, follow_redirects=False)
    result = parse_qs(urlsplit(answer.headers["location"]).query)["result"][0]
    assert result.startswith("labelled 2 email(s) (technical 2); 1 not changed: t-done already labelled")
    for request_id in ("u-close", "u-mid"):
        fb = stored(filled, request_id)
        assert fb is not None and (fb.true_queue, fb.source, fb.agent_id) == ("technical", "labelling", "ana")
    fb = stored(filled, "t-done")
    assert fb is not None and fb.true_queue == "shipping" and fb.source == "agent"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"assign_selected": "1", "bulk_queue": "technical"}, "no email was ticked"),
        ({"assign_selected": "1", "bulk_queue": "nowhere", "pick": ["u-mid", "u-close"]}, "unknown queue 'nowhere'"),
        ({"assign": "t-parcel", "queue:t-parcel": ""}, "choose a queue first"),
        ({"assign": "forged-id", "queue:forged-id": "billing"}, "unknown request_id 'forged-id'"),
        ({}, "no assign button was pressed"),
    ],
)
def test_bad_forms_label_nothing_and_say_why(filled: Home, form: dict[str, Any], message: str) -> None:
    web = client(filled)
    csrf = token(web.get("/dashboard/label").text)
    answer = web.post("/dashboard/label", data={"csrf": csrf, **form}, follow_redirects=False)
    assert answer.status_code == 303
    assert str(escape(message)) in web.get(answer.headers["location"]).text
    assert all(stored(filled, r) is None for r in ("t-parcel", "u-mid", "u-close"))


@pytest.mark.parametrize(
    ("csrf", "headers"),
    [
        (None, {}),
        ("0" * 64, {}),
        ("good", {"Origin": "https://evil.example"}),
        ("good", {"Origin": "null"}),
        ("good", {"Sec-Fetch-Site": "cross-site"}),
    ],
)
def test_cross_site_posts_are_refused(filled: Home, csrf: str | None, headers: dict[str, str]) -> None:
    web = client(filled)
    good = token(web.get("/dashboard/label").text)
    form = {"assign": "u-mid", "queue:u-mid": "billing", **({"csrf": good if csrf == "good" else csrf} if csrf else {})}
    answer = web.post("/dashboard/label", data=form, headers=headers, follow_redirects=False)
    assert answer.status_code == 403 and answer.text.startswith("refused:") and "\n" not in answer.text
    assert stored(filled, "u-mid") is None
    same_site = web.post("/dashboard/label", data={**form, "csrf": good}, headers={"Origin": "http://testserver"},
                         follow_redirects=False)  # fmt: skip
    assert same_site.status_code == 303 and stored(filled, "u-mid") is not None


def test_the_form_token_is_an_hmac_keyed_by_the_signed_in_token(filled: Home) -> None:
    page = client(filled).get("/dashboard/label").text
    key = hashlib.sha256(AGENT_TOKEN.encode()).hexdigest().encode()
    assert token(page) == hmac.new(key, CSRF_MESSAGE, hashlib.sha256).hexdigest()
    assert token(page) != hmac.new(user_salt(filled).encode(), CSRF_MESSAGE, hashlib.sha256).hexdigest()


def test_labels_are_recorded_as_the_tokens_holder_whatever_name_is_typed(filled: Home) -> None:
    web = client(filled)
    csrf = token(web.get("/dashboard/label").text)
    form = {"csrf": csrf, "agent": "someone-else", "assign": "u-mid", "queue:u-mid": "billing"}
    assert web.post("/dashboard/label", data=form, follow_redirects=False).status_code == 303
    fb = stored(filled, "u-mid")
    assert fb is not None and fb.agent_id == "ana"
    assert 'name="agent" value="someone-else"' not in web.get("/dashboard/label").text


def test_a_forged_result_link_puts_nothing_on_the_page(filled: Home) -> None:
    forged = {"result": "labelled 500 email(s): all done, go home", "sig": "0" * 64}
    page = client(filled).get("/dashboard/label", params=forged).text
    assert "go home" not in page and 'id="result"' not in page


def test_labelling_needs_an_agents_or_an_admins_token(filled: Home) -> None:
    agents_csrf = token(client(filled).get("/dashboard/label").text)
    form = {"csrf": agents_csrf, "assign": "u-mid", "queue:u-mid": "billing"}
    for who, status in ((None, 401), ("guess-guess-guess-guess", 401), (CLIENT_TOKEN, 403)):
        web = client(filled, token=who)
        answer = web.get("/dashboard/label")
        assert answer.status_code == status and "u-mid" not in answer.text
        assert web.post("/dashboard/label", data=form, follow_redirects=False).status_code == status
    assert stored(filled, "u-mid") is None
    admin = client(filled, token=ADMIN_TOKEN)
    refused = admin.post("/dashboard/label", data=form, follow_redirects=False)
    assert refused.status_code == 403  # ana's form token is not the admin's
    csrf = token(admin.get("/dashboard/label").text)
    done = admin.post("/dashboard/label", data={**form, "csrf": csrf}, follow_redirects=False)
    fb = stored(filled, "u-mid")
    assert done.status_code == 303 and fb is not None and fb.agent_id == "admin"


def test_without_an_event_log_the_page_says_so_and_creates_nothing(home: Home) -> None:
    web = client(home)
    page = web.get("/dashboard/label").text
    assert "nothing has been routed, so there is nothing to label" in page and 'name="csrf"' not in page
    answer = web.post("/dashboard/label", data={"assign": "r1", "queue:r1": "billing"}, follow_redirects=False)
    assert answer.status_code == 409
    assert not home.root.exists()


def test_the_main_page_links_to_labelling_and_has_no_rollout_yet(filled: Home) -> None:
    page = client(filled).get("/dashboard").text
    assert 'href="/dashboard/label"' in page
    assert "No rollout yet." in section(page, "rollout")
    with _store(filled) as store:
        store.write_state("rollout", {"model": "linear", "candidate": 2})  # not a rollout
    note = section(client(filled).get("/dashboard").text, "rollout")
    assert "The saved rollout could not be read" in note and "candidate" in note


def test_the_rollout_section_shows_state_steps_history_and_last_check(filled: Home) -> None:
    t0 = NOW - timedelta(hours=5)
    history = (
        Step(ts=t0.isoformat(), action="start", percent=5, actor="ops", reason="linear:v2 on 5% of linear's users"),
        Step(ts=(t0 + timedelta(hours=2)).isoformat(), action="widen", percent=25, actor="rollout-job",
             reason="guardrails <b>held</b>"),
    )  # fmt: skip
    check = Step(ts=NOW.isoformat(), action="check", percent=25, actor="rollout-job", reason="waiting for 400 emails")
    with _store(filled) as store:
        save(store, RolloutState(
        model="linear", candidate="v2", previous="v1", arm="linear", canary_arm="linear-canary", arm_weight=0.5,
        steps=(5, 25, 50, 100), step=1, status="running", started=t0.isoformat(),
        step_started=history[1].ts, history=history, last_check=check,
        ))  # fmt: skip
    rollout = section(client(filled).get("/dashboard").text, "rollout")
    assert (
        "running" in rollout and "linear:v2" in rollout and "arm linear (linear:v1 when the rollout began)" in rollout
    )
    assert "linear-canary" in rollout and "25% of linear's users" in rollout
    assert "5% → <b>25%</b> → 50% → 100%" in rollout
    assert "waiting for 400 emails" in rollout
    table = rollout.split('id="rollout-history"')[1].split("</table>")[0]
    assert table.index("widen") < table.index("start") and "guardrails &lt;b&gt;held&lt;/b&gt;" in table


def test_the_audit_table_shows_kind_detail_and_threshold_changes(filled: Home) -> None:
    old = PolicyConfig().model_dump(mode="json")
    new = PolicyConfig(confidence_threshold=0.55, queue_thresholds={"billing": 0.7}).model_dump(mode="json")
    with _store(filled) as store:
        audit(store, "ops", old, new, kind="policy", detail="threshold what-if of last week")
        audit(store, "rollout-job", {"versions": {"linear": "linear:v2"}}, {"versions": {"linear": "linear:v1"}},
              kind="rollback", detail="fallback rate guardrail breached")  # fmt: skip
        rollback, policy = read_audit(store)
    assert policy.kind == "policy" and policy.detail == "threshold what-if of last week"
    assert policy.summary == "confidence threshold 0.6 → 0.55; billing threshold default 0.6 → 0.7"
    assert rollback.kind == "rollback" and rollback.summary == "linear linear:v2 → linear:v1"
    table = client(filled).get("/dashboard").text.split('id="audit"')[1].split("</table>")[0]
    assert "<th>kind</th>" in table and "<td>rollback</td>" in table and "fallback rate guardrail breached" in table
    assert "billing threshold default 0.6 → 0.7" in table
