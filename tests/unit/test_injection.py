"""Hostile text never becomes markup: an HTML/JS injection test on every HTML page and report mailroute produces.

Each test fills a home with one hostile string in every place a user-controlled string can reach (an email's subject,
body, ids, arm/model/queue fields of its record, feedback agent names, log lines, audit actors and reasons, rollout
steps, verdict details, search and filter parameters, the labelling form), renders the page, and renders it again
with a plain marker (`BENIGN`) in the same places. The two pages are parsed with the stdlib's `html.parser` and must
have the same elements and attributes in the same order (so no element, attribute or comment came from the payload),
no event-handler attribute, no link or image outside the page's own origin or an inline PNG, and the payload shown
verbatim, as text, wherever the marker was shown (so `{{7*7}}` was not evaluated to 49, and nothing was half-escaped).

Covered: the dashboard (main page, its search view by request_id and email_id, the log list's filters, a broken
rollout file's note, the login page), the labelling view (lists, search, the signed result line after a POST, the
agent name when authentication is off), report files served by the dashboard (sandboxed), the experiment report
(`mailroute experiment report --html`, and the scheduled KPI job's copy), the error analysis
(`mailroute analyze errors --html`) and an Evidently drift report (Evidently does not escape the JSON it embeds in a
<script>: monitoring.drift escapes it when it saves the report, and the dashboard serves reports sandboxed besides).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import records
from fastapi.testclient import TestClient

from experiments.rollout.state import RolloutState, Step, save
from monitoring.dashboard.data import DashboardSources
from monitoring.dashboard.routes import REPORT_CSP, standalone_app
from serving.config import Home
from serving.ops.state import audit
from serving.store.eventlog import FeedbackEvent, LogRecord, MonitorVerdict, PredictionEvent, open_event_log

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOW = datetime.now(UTC).replace(microsecond=0)
AGENT_TOKEN = "agent-ana-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"

# Longer than every payload, so a field that shows the marker whole shows any payload whole too (truncation is by
# length); letters only, so URL-quoting leaves it as it is.
BENIGN = "BENIGN" + "z" * 44
PAYLOADS = [
    pytest.param("<script>alert(1)</script>", id="script"),
    pytest.param('"><img src=x onerror=alert(1)>', id="double-quote-breakout"),
    pytest.param("'><svg onload=alert(1)>", id="single-quote-breakout"),
    pytest.param("</textarea><script>alert(1)</script>", id="textarea-breakout"),
    pytest.param("</script><script>alert(1)</script>", id="script-breakout"),
    pytest.param("{{7*7}}${7*7}{% print 7*7 %}", id="template"),
    pytest.param("javascript:alert(1)", id="javascript-url"),
    pytest.param("&lt;script&gt;alert(1)&#60;/script>", id="entities"),
    pytest.param("<!--<script>", id="comment"),
    pytest.param("a\u2028b\u2029c\x00d<b>e", id="separators-and-nul"),
    pytest.param("$x$ $\\undefined{$", id="mathtext"),  # chart labels: matplotlib reads $...$ as TeX
]
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "srcset", "background", "poster", "xlink:href", "data"}


@pytest.fixture(scope="module", autouse=True)
def _tokens() -> Iterator[None]:
    """An agent (ana) and an admin, from the environment, for every test and the module's baselines."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAILROUTE_ADMIN_TOKEN", ADMIN_TOKEN)
        mp.setenv("MAILROUTE_TOKEN_ANA", f"agent:{AGENT_TOKEN}")
        mp.setenv("MAILROUTE_CONFIG_DIR", str(CONFIGS))
        yield


# ---- reading a page ---------------------------------------------------------------------------------------------
class Markup(HTMLParser):
    """A page as html.parser sees it: the sequence of tags (with attribute names) and comments, the text between
    them by position in that sequence, and every attribute's value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.structure: list[tuple[str, ...]] = []
        self.texts: dict[int, str] = {}
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.structure.append(("start", tag, *(name for name, _ in attrs)))
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.structure.append(("end", tag))

    def handle_comment(self, data: str) -> None:
        self.structure.append(("comment",))

    def handle_decl(self, decl: str) -> None:
        self.structure.append(("decl", decl))

    def handle_pi(self, data: str) -> None:
        self.structure.append(("pi",))

    def unknown_decl(self, data: str) -> None:
        self.structure.append(("unknown-decl",))

    def handle_data(self, data: str) -> None:
        at = len(self.structure)
        self.texts[at] = self.texts.get(at, "") + data


def parse(page: str) -> Markup:
    markup = Markup()
    markup.feed(page)
    markup.close()
    return markup


def _safe_url(value: str) -> bool:
    """Same-origin paths and inline PNGs only: what the pages themselves link to."""
    url = re.sub(r"[\x00-\x20]", "", value).lower()
    if url.startswith("data:image/png;base64,"):
        return True
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and url.startswith(("/", "#"))


def assert_inert(page: str, baseline: str, payload: str, where: str) -> None:
    """`page` (rendered with `payload`) has exactly the elements and attributes of `baseline` (rendered with BENIGN in
    the same places), nothing executable, and the payload verbatim wherever the baseline shows the marker."""
    hostile, benign = parse(page), parse(baseline)
    handlers = [(tag, name) for tag, name, _ in hostile.attributes if name.startswith("on")]
    assert not handlers, f"{where}: event-handler attributes {handlers}"
    urls = [(tag, name, value[:80]) for tag, name, value in hostile.attributes if name in URL_ATTRIBUTES]
    assert all(_safe_url(value) for _, _, value in urls), f"{where}: unsafe URL in {urls}"
    assert not re.search(r"<\s*(script|svg|iframe|object|embed)\b", page, re.IGNORECASE), f"{where}: raw markup"
    if hostile.structure != benign.structure:
        at = next(
            (i for i, (a, b) in enumerate(zip(hostile.structure, benign.structure, strict=False)) if a != b), None
        )
        at = min(len(hostile.structure), len(benign.structure)) if at is None else at
        context = hostile.texts.get(at, "")[-120:]
        pytest.fail(
            f"{where}: the payload changed the page's markup at element {at}: got {hostile.structure[at : at + 3]}, "
            f"expected {benign.structure[at : at + 3]} (text before it: {context!r})"
        )
    # Jinja's `tojson` (the shadow record) writes < > & ' as \u escapes: JSON that stays JSON, also fine.
    # A snippet collapses whitespace runs (U+2028 is one), also fine.
    as_json = json.dumps(payload)[1:-1]
    for char in "<>&'":
        as_json = as_json.replace(char, f"\\u{ord(char):04x}")
    forms = {payload, as_json, " ".join(payload.split())}
    for at, text in benign.texts.items():
        if BENIGN in text:
            shown, n = hostile.texts.get(at, ""), text.count(BENIGN)
            assert sum(shown.count(f) for f in forms) == n, f"{where}: {payload!r} is not the text of {shown!r}"
    for (tag, name, value), (_, _, got) in zip(benign.attributes, hostile.attributes, strict=True):
        if BENIGN in value and name not in URL_ATTRIBUTES:
            assert got.count(payload) == value.count(BENIGN), f"{where}: <{tag} {name}> is {got!r}"


# ---- a home full of one string --------------------------------------------------------------------------------------
def ts(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def prediction(request_id: str, minutes_ago: float, **fields: Any) -> PredictionEvent:
    defaults = {
        "confidence": 0.7,
        "experiment": "linear-vs-minilm",
        "in_experiment": True,
        "proba": {"billing": 0.7, "technical": 0.2, "general": 0.1},
    }
    return records.prediction(request_id, ts(minutes_ago), **{**defaults, **fields})


def fill(home: Home, t: str) -> None:
    """Three emails whose every free-text field is `t`, feedback and log lines naming them, an audit log, a rollout,
    verdicts with a report file and a registry version's meta.json, all quoting `t`."""
    log = open_event_log(f"sqlite:///{home.event_log}")
    hostile = {"subject": t, "body": f"body {t}", "model_name": t, "model_version": t, "secondary_queue": t}
    log.record_predictions(
        [
            # In the triage queue, unlabelled: the labelling view's first list, the flagged list, an unknown arm.
            prediction(t, 1, email_id=f"{t}@mail", arm=t, queue="triage", reason="low_confidence", confidence=0.35,
                       shadow={"model": t, "version": t, "queue": t}, **hostile),
            # A fallback routed to a queue of its own name, outside the experiment, with an agent's feedback.
            prediction(f"{t}-2", 2, email_id=f"{t}-2@mail", queue=t, fallback=True, reason=t, experiment=t, **hostile),
            # Routed, unsure, unlabelled: the labelling view's second list.
            prediction(f"{t}-3", 3, arm=t, proba={"billing": 0.5, "technical": 0.45, "general": 0.05}, **hostile),
        ]
    )  # fmt: skip
    log.record_feedback(FeedbackEvent(f"{t}-2", ts(0.5), "shipping", handling_seconds=3.0, agent_id=t))
    log.record_logs(
        [
            LogRecord(ts(1), t, "WARNING", f"component line {t}", t, f"{t}@mail"),
            LogRecord(ts(1.5), "router", "ERROR", f"cannot route {t}", f"{t}-2", f"{t}-2@mail"),
            LogRecord(ts(2), "router", "INFO", f"info {t}"),
        ]
    )
    reports = home.reports / "monitoring" / "drift"
    reports.mkdir(parents=True)
    report = reports / (re.sub(r"[/\x00]", "_", t) + ".html")
    report.write_text(f"<html><body><script>alert({json.dumps(t)})</script>{t}</body></html>")
    log.record_verdicts(
        [
            MonitorVerdict(t, ts(10), "drift", t, t, True, ts(70), ts(10), 0.9, 0.5, str(report), t),
            MonitorVerdict(t, ts(10), "drift", "all", "accuracy", False, ts(70), ts(10), detail=f"skipped: {t}"),
            MonitorVerdict(t, ts(10), "drift", "all", "confidence", False, ts(70), ts(10), 0.1, 0.5, t, t),
        ]
    )
    arms = {"arms": {t: {"weight": 0.5, "model": t, "version": t}, "linear": {"weight": 0.5}}}
    audit(log, t, arms, {"arms": {t: {"weight": 0.8, "model": t}}}, 0.3, kind="experiment", detail=t)
    audit(log, t, {"versions": {t: t}}, {"versions": {t: f"{t}:v2"}}, kind=t, detail=t)
    meta = {"name": t, "version": t, "kind": "linear", "labels": [t], "preprocessing_version": t,
            "data_fingerprint": t, "metrics": {}, "params": {}, "parent": t, "created": ts(60)}  # fmt: skip
    (home.registry / "linear" / "v1").mkdir(parents=True)  # a meta.json edited by hand: the arms table quotes it
    (home.registry / "linear" / "v1" / "meta.json").write_text(json.dumps(meta))
    step = Step(ts=ts(30), action=t, percent=5, actor=t, reason=t)
    save(log, RolloutState(
        model=t, candidate=t, previous=t, arm=t, canary_arm=t, arm_weight=0.5, steps=(5, 25), step=0,
        status="running", started=ts(30), step_started=ts(30), history=(step,), last_check=step,
    ))  # fmt: skip
    log.close()


def client(home: Home, configs: Path = CONFIGS, token: str | None = AGENT_TOKEN) -> TestClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(standalone_app(DashboardSources.from_files(home, configs)), headers=headers)


def csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match, "no CSRF token on the labelling page"
    return match.group(1)


def dashboard_pages(home: Home, t: str) -> dict[str, str]:
    """Every dashboard view, as an agent sees it, over a home filled with `t`."""
    web = client(home)
    pages: dict[str, str] = {}

    def get(name: str, path: str, **params: str) -> None:
        response = web.get(path, params=params)
        assert response.status_code == 200, (name, response.status_code, response.text[:300])
        pages[name] = response.text

    get("main", "/dashboard")
    get("search by request_id", "/dashboard", q=t)
    get("search by email_id, with feedback", "/dashboard", q=f"{t}-2@mail")
    get("search that finds nothing", "/dashboard", q=f"missing {t}")
    get("log filter", "/dashboard", component=t, level=t)
    get("log filter, INFO", "/dashboard", component="router", level="INFO")
    get("labelling", "/dashboard/label")
    get("labelling search", "/dashboard/label", q=t, agent=t)
    form = {"csrf": csrf(pages["labelling"]), "q": t, "agent": t, "assign": t, f"queue:{t}": t}
    result = web.post("/dashboard/label", data=form)  # an unknown queue: the result line quotes it
    assert result.status_code == 200 and 'id="result"' in result.text, result.text[:300]
    pages["labelling result (unknown queue)"] = result.text
    bulk = {"csrf": form["csrf"], "q": t, "assign_selected": "1", "pick": f"{t}-nope", "bulk_queue": "billing"}
    result = web.post("/dashboard/label", data=bulk)  # an unknown request_id
    assert result.status_code == 200 and 'id="result"' in result.text, result.text[:300]
    pages["labelling result (unknown request_id)"] = result.text
    login = client(home, token=None).get("/dashboard", params={"q": t})
    assert login.status_code == 401
    pages["login"] = login.text
    unreadable = open_event_log(f"sqlite:///{home.event_log}")
    unreadable.write_state("rollout", {"model": t})  # unreadable: the note quotes the error, which quotes the payload
    unreadable.close()
    get("rollout note", "/dashboard")
    return pages


def auth_off_configs(root: Path) -> Path:
    configs = root / "configs-auth-off"
    configs.mkdir()
    for name in ("queues.yaml", "experiments.yaml", "monitoring.yaml"):
        (configs / name).write_text((CONFIGS / name).read_text())
    (configs / "serving.yaml").write_text((CONFIGS / "serving.yaml").read_text() + "auth: {enabled: false}\n")
    return configs


def open_dashboard_pages(home: Home, configs: Path, t: str) -> dict[str, str]:
    """With authentication off the labeller names themself: the name reaches a form field and the feedback."""
    web = client(home, configs, token=None)
    page = web.get("/dashboard/label", params={"agent": t})
    assert page.status_code == 200
    form = {"csrf": csrf(page.text), "agent": t, "assign": f"{t}-3", f"queue:{t}-3": "billing"}
    labelled = web.post("/dashboard/label", data=form)
    assert labelled.status_code == 200 and "labelled 1" in labelled.text, labelled.text[:300]
    searched = web.get("/dashboard", params={"q": f"{t}-3"})
    assert searched.status_code == 200
    return {"labelling, named agent": page.text, "after labelling": labelled.text, "feedback by agent": searched.text}


def analysis_pages(home: Home, out: Path) -> dict[str, str]:
    """The experiment report and the error analysis, as `--html` writes them, and the KPI job's report."""
    from experiments.analysis.command import report_command
    from experiments.analyze_cli import errors_command
    from monitoring.config import load_monitoring
    from monitoring.kpi_job import run_kpi_report
    from serving.config import load_serving

    as_of = NOW + timedelta(hours=1)
    report_command(home, html=out / "report.html", now=as_of, out=io.StringIO())
    errors_command(home, html=out / "errors.html", now=as_of, out=io.StringIO())
    serving, monitoring = load_serving(CONFIGS / "serving.yaml"), load_monitoring(CONFIGS / "monitoring.yaml")
    kpi = run_kpi_report(home, CONFIGS, serving, monitoring, now=as_of)
    assert kpi is not None
    pages = {name: (out / f"{name}.html").read_text() for name in ("report", "errors")}
    pages["kpi job"] = Path(kpi["report"]).read_text()
    return {name: re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,", page)
            for name, page in pages.items()}  # fmt: skip


# ---- baselines, once per module ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every page over homes filled with BENIGN: one home per test below, as each test writes to its own."""
    root = tmp_path_factory.mktemp("baseline")
    homes = [Home(root / name) for name in ("dashboard", "open", "analysis")]
    for home in homes:
        fill(home, BENIGN)
    pages = dashboard_pages(homes[0], BENIGN)
    pages |= open_dashboard_pages(homes[1], auth_off_configs(root), BENIGN)
    return pages | analysis_pages(homes[2], root / "out")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


# ---- the tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", PAYLOADS)
def test_dashboard_and_labelling_pages_show_hostile_text_as_text(
    home: Home, baseline: dict[str, str], payload: str
) -> None:
    fill(home, payload)
    pages = dashboard_pages(home, payload)
    for name, page in pages.items():
        assert_inert(page, baseline[name], payload, name)
    assert 'id="kpis"' in pages["main"], "the experiment report section was not rendered"
    arms = pages["main"].split('id="arms"')[1].split("</table>")[0]
    assert "(candidate)</td>" in arms, "the registry's meta.json was not read"
    found = pages["search by request_id"].split('<section id="search">')[1]
    assert 'id="prediction"' in found and 'id="search-logs"' in found  # the hostile id was found, not just echoed
    assert 'id="feedback"' in pages["search by email_id, with feedback"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_labelling_with_authentication_off_shows_the_typed_agent_name_as_text(
    tmp_path: Path, home: Home, baseline: dict[str, str], payload: str
) -> None:
    fill(home, payload)
    for name, page in open_dashboard_pages(home, auth_off_configs(tmp_path), payload).items():
        assert_inert(page, baseline[name], payload, name)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_experiment_report_error_analysis_and_kpi_report_show_hostile_text_as_text(
    tmp_path: Path, home: Home, baseline: dict[str, str], payload: str
) -> None:
    fill(home, payload)
    for name, page in analysis_pages(home, tmp_path / "out").items():
        assert_inert(page, baseline[name], payload, name)


def test_every_report_file_is_served_sandboxed_and_unsniffed(home: Home) -> None:
    """A report file is served as it is (an Evidently report runs its own scripts), so whatever got into it runs in
    an opaque origin: CSP sandbox, no same-origin access to the dashboard or its cookie, and no type sniffing."""
    fill(home, "<script>alert(1)</script>")
    extra = {"x.svg": '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "x.json": '{"a": "</script>"}',
             "x.txt": "<script>alert(1)</script>", "x": "<script>alert(1)</script>"}  # fmt: skip
    for name, text in extra.items():
        (home.reports / "monitoring" / name).write_text(text)
    web = client(home)
    served = sorted(p.relative_to(home.reports).as_posix() for p in home.reports.rglob("*") if p.is_file())
    assert len(served) == 1 + len(extra)
    for path in served:
        response = web.get(f"/dashboard/reports/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == REPORT_CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert REPORT_CSP.split()[0] == "sandbox" and "allow-same-origin" not in REPORT_CSP
    drift = client(home).get("/dashboard").text.split('id="verdicts"')[1]
    assert 'href="/dashboard/reports/monitoring/drift/%3Cscript%3Ealert%281%29%3C_script%3E.html"' in drift


def _drift_report(path: Path, subject: str, body: str) -> None:
    """A real Evidently drift report (the monitoring job's checks) whose current window's texts are hostile."""
    import pandas as pd

    from monitoring.drift import PlannedCheck, run_drift, save_snapshot

    def frame(n: int, s: str, b: str) -> pd.DataFrame:
        return pd.DataFrame({"subject": [f"{s} {i}" for i in range(n)], "body": [f"{b} {i}" for i in range(n)],
                             "predicted": ["billing", "shipping"] * (n // 2),
                             "confidence": [0.5 + i / (3 * n) for i in range(n)]})  # fmt: skip

    checks = [PlannedCheck("text_drift.subject", "subject", "text_content_drift_p", 0.01, True),
              PlannedCheck("text_drift.body", "body", "text_content_drift_p", 0.01, True),
              PlannedCheck("prediction", "predicted", "chisquare_2sample", 0.01, True)]  # fmt: skip
    reference = frame(40, "invoice number", "please send the invoice")
    _, snapshot = run_drift(reference, frame(40, subject, body), frozenset({"invoice"}), checks, name="drift",
                            tags=["drift"], metadata={})  # fmt: skip
    save_snapshot(snapshot, path.with_suffix(".json"), path)


@pytest.fixture(scope="module")
def evidently_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("evidently")
    path = tmp_path_factory.mktemp("evidently") / "drift.html"
    _drift_report(path, "</script><script>alert(1)</script>", "'><svg onload=alert(1)>")
    return path


def _scripts(page: str) -> list[str]:
    """The text of every <script> element, as a browser's parser splits them."""

    class Scripts(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=False)
            self.inside = False
            self.bodies: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "script":
                self.inside = True
                self.bodies.append("")

        def handle_endtag(self, tag: str) -> None:
            self.inside = self.inside and tag != "script"

        def handle_data(self, data: str) -> None:
            if self.inside:
                self.bodies[-1] += data

    parser = Scripts()
    parser.feed(page)
    return parser.bodies


def test_an_evidently_report_is_served_only_sandboxed(home: Home, evidently_report: Path) -> None:
    """Evidently's HTML carries email texts (text-drift examples) inside its own <script>: the dashboard must serve
    it with the sandbox CSP, whatever it holds."""
    target = home.reports / "monitoring" / "drift" / "20260101T000000Z-0123abcd-all.html"
    target.parent.mkdir(parents=True)
    target.write_bytes(evidently_report.read_bytes())
    response = client(home).get("/dashboard/reports/monitoring/drift/20260101T000000Z-0123abcd-all.html")
    assert response.status_code == 200 and response.headers["content-security-policy"] == REPORT_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "</script><script>alert(1)</script>" in response.text or "<\\/script>" in response.text


def test_an_evidently_report_keeps_email_text_inside_its_data(evidently_report: Path) -> None:
    # Failed before monitoring.drift.save_snapshot escaped the report's embedded JSON: Evidently writes it with
    # json.dumps inside a plain <script>, and a subject holding "</script><script>..." started its own script (10
    # injected <script> elements in this report).
    page = evidently_report.read_text(encoding="utf-8")
    bodies = _scripts(page)
    injected = [b for b in bodies if b.strip() == "alert(1)"]
    assert not injected, f"{len(injected)} <script> element(s) came from an email's subject"
