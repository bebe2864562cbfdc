"""The dashboard of the real Serve app in a real headless Chromium, after real traffic, feedback and an arm fault.

The set-up installs Debian's `chromium` and `chromium-driver` when they are missing (as root, with apt-get; about
35 s) and skips, saying why, where that is impossible. A screenshot of the page is kept in tests/artifacts/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_app import TOKEN, register_models, running_app, set_fault, small_serving_config, two_arm_experiment
from system_packages import apt_install

from monitoring.dashboard.data import DashboardSources
from monitoring.dashboard.routes import standalone_app
from serving.config import Home
from serving.store.eventlog import open_event_log
from training.synth import generate

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EVIL_SUBJECT = "<script>document.title='pwned'</script> refund please"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = apt_install(
        ["chromium", "chromium-driver"], lambda: os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
    )
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,2400")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    """The app after 60 emails with agent feedback, one hostile subject, and one email that hit a failing arm."""
    home = Home(tmp_path_factory.mktemp("dashboard-home"))
    register_models(home)
    with running_app(home, serve_port, small_serving_config(), two_arm_experiment()) as running:
        client = running["client"]
        mail = generate(60, seed=7)
        for i, row in enumerate(mail.itertuples()):
            body = {"user_id": f"user-{i % 30}", "subject": row.subject, "body": row.body, "email_id": f"mail-{i}"}
            answer = client.post("/v1/route", json=body).json()
            feedback = {"request_id": answer["request_id"], "true_queue": row.queue, "handling_seconds": 60}
            assert client.post("/v1/feedback", json=feedback).status_code == 200
        evil = {"user_id": "mallory", "subject": EVIL_SUBJECT, "body": "<b>bold</b> charged", "email_id": "evil-1"}
        running["evil"] = client.post("/v1/route", json=evil).json()
        set_fault("transformer", "error")
        try:
            failed = {"user_id": "victim", "subject": "Crash", "body": "the app crashes on start",
                      "email_id": "faulty-1", "force_arm": "transformer"}  # fmt: skip
            running["faulty"] = client.post(
                "/v1/route", json=failed, headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()
        finally:
            set_fault("transformer", None)
        assert running["faulty"]["reason"] == "fallback_to_linear:transformer_error"
        _scheduled_jobs(home, running["serving"], running["experiment"])
        yield running


def _scheduled_jobs(home: Home, serving: Any, experiment: Any) -> None:
    """The two jobs the scheduler runs beside the app (tests/ray/test_monitoring_jobs.py shows it running them
    unasked): a real monitoring run and a real KPI report, whose outputs the page shows."""
    from monitoring.schedule import run_kpi_report_job, run_monitor_job

    configs = Path(__file__).resolve().parents[2] / "configs"
    run_monitor_job(home, configs, serving, experiment)
    assert run_kpi_report_job(home, configs, serving, experiment) is not None


def _components_about(app: dict[str, Any], request_id: str, timeout_s: float = 20.0) -> set[str]:
    """The components with a log line about the email, once the replicas' log handlers have written them."""
    store = open_event_log(f"sqlite:///{app['home'].event_log}")
    deadline = time.monotonic() + timeout_s
    while True:
        found = {r.component for r in store.logs(min_level="DEBUG", request_id=request_id)}
        if {"router", "arm-transformer"} <= found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_arms_warnings_name_the_email_in_the_store(app: dict[str, Any]) -> None:
    assert _components_about(app, app["faulty"]["request_id"]) >= {"router", "arm-transformer"}
    store = open_event_log(f"sqlite:///{app['home'].event_log}")
    wanted = {("arm-transformer", "injected fault"), ("router", "arm transformer failed"), ("router", "fallback")}
    deadline = time.monotonic() + 30  # each replica's handler writes its lines on its own (1 s batches)
    while True:
        lines = store.logs(email_id="faulty-1")
        missing = {w for w in wanted if not any(w[0] == r.component and w[1] in r.message for r in lines)}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, (missing, [(r.component, r.message) for r in store.logs(min_level="DEBUG", limit=50)])


@pytest.mark.browser
def test_dashboard_in_chromium(app: dict[str, Any], browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    _components_about(app, app["faulty"]["request_id"])
    # The app has an admin token: the page shows the sign-in form first, and nothing from an email.
    browser.get(f"{app['url']}/dashboard")
    token_box = WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.NAME, "token")))
    page = browser.page_source
    assert "sign in with an agent's or an admin's token" in page and "Invoice" not in page, page[:300]
    token_box.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.ID, "arms")))
    arms = browser.find_element(By.ID, "arms").text
    assert "linear" in arms and "transformer" in arms and "50.0%" in arms
    logs = browser.find_element(By.ID, "log-lines").text
    assert "router" in logs and "arm-transformer" in logs and "injected fault" in logs
    flagged = browser.find_element(By.ID, "flagged-emails").text
    assert "fallback_to_linear:transformer_error" in flagged
    # The KPI job's report: both arms' KPIs with intervals, the recommendation, SRM and guardrails.
    kpis = browser.find_element(By.ID, "kpis").text
    assert "linear (control)" in kpis and "transformer" in kpis and "routing accuracy" in kpis and "[" in kpis
    assert "Recommendation:" in browser.find_element(By.ID, "recommendation").text
    assert browser.find_elements(By.ID, "srm") and browser.find_elements(By.ID, "guardrails")
    # The drift verdicts: the linear arm's version has a reference, so its checks ran (not only "skipped").
    verdicts = browser.find_element(By.ID, "verdicts").text
    assert "linear" in verdicts and "prediction_drift" in verdicts
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#verdicts tr")]
    assert any("linear" in row and ("no drift" in row or " drift" in row) for row in rows), rows

    # Search: paste the request id into the box, as ops would.
    box = browser.find_element(By.ID, "q")
    box.send_keys(app["faulty"]["request_id"])
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.ID, "prediction")))
    record = browser.find_element(By.ID, "prediction").text
    assert app["faulty"]["request_id"] in record and "faulty-1" in record and "fallback" in record
    components = {cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#search-logs td.component")}
    assert {"router", "arm-transformer"} <= components

    # A subject with a script tag shows as text, and runs nothing.
    browser.get(f"{app['url']}/dashboard?q=evil-1")
    assert browser.find_element(By.ID, "subject").text == EVIL_SUBJECT
    assert browser.find_element(By.ID, "feedback").text == "No feedback for this email yet."
    assert browser.title == "mailroute dashboard"
    assert browser.find_elements(By.TAG_NAME, "script") == []
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert

    browser.get(f"{app['url']}/dashboard?q={app['faulty']['request_id']}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_standalone_dashboard_reads_the_same_files(app: dict[str, Any]) -> None:
    sources = DashboardSources.from_files(app["home"], Path(__file__).resolve().parents[2] / "configs")
    web = TestClient(standalone_app(sources))
    assert web.get("/dashboard").status_code == 401  # the same admin token guards the standalone page
    page = web.get("/dashboard", params={"q": "faulty-1"}, headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert app["faulty"]["request_id"] in page and '<td class="component">arm-transformer</td>' in page
