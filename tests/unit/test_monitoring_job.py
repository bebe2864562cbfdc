"""One monitoring run end to end on a memory log: verdict rows (including the empty and skipped cases, in words),
reports and workspace, retention, and alerts to a real local webhook (a failing one does not fail the run)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from monitor_support import END, REPO, WINDOW, train_version, window_log

from monitoring.alerts import AlertOutcome, post_alarms
from monitoring.config import AlertSpec, MonitoringConfig
from monitoring.job import EXIT_DRIFT, EXIT_OK, latest_verdicts, run_monitoring
from monitoring.reports import prune
from serving.config import Home, ServingConfig, load_serving
from serving.models.registry import ModelRegistry, RegistryError
from serving.store.eventlog import PredictionEvent
from serving.store.memory import MemoryEventLog

pytestmark = pytest.mark.unit
SERVING = load_serving(REPO / "configs" / "serving.yaml")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("monitor-home"))
    train_version(home, n=2400)
    return home


def _cfg(**overrides: Any) -> MonitoringConfig:
    data: dict[str, Any] = {"html": False, "min_rows": 40}
    data.update(overrides)
    return MonitoringConfig.model_validate(data)


def _no_nan(rows: Any) -> None:
    for v in rows:
        for value in (v.score, v.threshold):
            assert value is None or math.isfinite(value)
        assert v.detail and "nan" not in v.detail.lower()


def test_reference_is_written_with_the_version(home: Home) -> None:
    info = ModelRegistry(home.registry).get("linear:v1", verify=True)  # checksummed with the model
    assert {"monitoring/reference.parquet", "monitoring/vocabulary.txt", "monitoring/reference.json"} <= set(
        info.meta.files
    )
    meta = json.loads((info.path / "monitoring" / "reference.json").read_text())
    assert meta["rows"] == 600 and meta["text_policy"] == "redacted"  # a quarter of 2,400: the held-out half's half


def test_empty_window_says_so(home: Home) -> None:
    store = MemoryEventLog()
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store, arms=["linear"])
    assert result.exit_code == EXIT_OK and not result.alarms
    by = {(v.scope, v.check): v for v in result.verdicts}
    assert "holds no routed emails" in (by[("all", "window")].detail or "")
    assert "no emails were routed to this arm" in (by[("linear", "prediction_drift")].detail or "")
    assert by[("linear", "accuracy")].score is None
    _no_nan(result.verdicts)
    assert {v.run_id for v in store.verdicts(job="drift")} == {result.run_id}  # recorded in the store


def test_window_without_feedback_and_idle_arm(home: Home) -> None:
    store = window_log(home, n=300, seed=11, feedback=0.0)
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store,
                            arms=["linear", "transformer"])  # fmt: skip
    by = {(v.scope, v.check): v for v in result.verdicts}
    assert "only 0 feedback records" in (by[("linear", "accuracy")].detail or "")
    assert "no emails were routed to this arm" in (by[("transformer", "text_drift.body")].detail or "")
    assert by[("linear", "descriptor.oov_share")].score is not None  # the checks with data did run
    # 2 scopes (linear, all) x 8 p-value tests (2 text, 4 descriptors, prediction, confidence; accuracy skipped)
    assert by[("linear", "prediction_drift")].threshold == pytest.approx(0.01 / 16)
    _no_nan(result.verdicts)
    report = by[("linear", "prediction_drift")].report
    assert report and Path(report).is_file() and report.endswith(".json")  # html off: the JSON is the report
    assert latest_verdicts(store) == list(store.verdicts(job="drift"))


def test_version_without_reference_or_missing_is_skipped_in_words(home: Home, tmp_path: Path) -> None:
    registry = ModelRegistry(home.registry)

    def model_only(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"x")

    if "legacy" not in registry.names():  # a version trained before references existed: model files only
        registry.register(
            "legacy", model_only, kind="linear", labels=["a", "b"],
            preprocessing_version="2", data_fingerprint="x", metrics={}, params={},
        )  # fmt: skip
    store = MemoryEventLog()
    rows = [
        PredictionEvent(
            request_id=f"r{i}",
            ts="2026-01-01T12:00:00+00:00",
            user_key="u",
            arm=arm,
            model_name=model,
            model_version=version,
            queue="billing",
            confidence=0.9,
            fallback=False,
            reason="confident",
            latency_ms=1.0,
            subject="Invoice",
            body="My invoice is wrong",
        )
        for i in range(120)
        for arm, model, version in [("old", "legacy", "v1"), ("gone", "linear", "v9")][i % 2 : i % 2 + 1]
    ]
    store.record_predictions(rows)
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store)
    by = {(v.scope, v.check): v for v in result.verdicts}
    assert "legacy:v1 was trained without a reference sample" in (by[("old", "text_drift.body")].detail or "")
    assert "linear:v9 is not in the registry" in (by[("gone", "confidence_drift")].detail or "")
    assert result.exit_code == EXIT_OK
    _no_nan(result.verdicts)
    with pytest.raises(RegistryError, match="no version 'v99'"):
        run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store, reference="linear:v99")


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alarms", handler
    finally:
        server.shutdown()


def test_drifted_window_alarms_posts_webhook_and_fills_workspace(home: Home, hook: tuple[str, type[_Hook]]) -> None:
    from evidently.ui.workspace import Workspace

    url, handler = hook
    store = window_log(home, n=600, seed=12, drift=0.8)
    cfg = _cfg(html=True, alerts={"webhook_url": url, "webhook_url_env": None})
    result = run_monitoring(home, cfg, SERVING, window=WINDOW, end=END, event_log=store)
    assert result.exit_code == EXIT_DRIFT
    assert result.alert is not None and result.alert.sent and result.alert.attempts == 1
    (body,) = handler.received
    assert body["run_id"] == result.run_id and body["alarms"]
    assert {a["check"] for a in body["alarms"]} == {v.check for v in result.alarms}
    assert all(Path(p).is_file() and p.endswith(".html") for p in result.reports)
    summary = json.loads(Path(result.summary).read_text())
    assert summary["alarm"] is True and len(summary["verdicts"]) == len(result.verdicts)
    ws = Workspace(str(home.root / "evidently"))
    projects = {p.name: p for p in ws.list_projects()}
    assert {"mailroute drift", "mailroute quality"} <= set(projects)
    runs = ws.list_runs(projects["mailroute drift"].id)
    assert runs and ws.get_run(projects["mailroute drift"].id, runs[-1]) is not None


def test_failing_webhook_does_not_fail_the_run(home: Home, hook: tuple[str, type[_Hook]]) -> None:
    url, handler = hook
    handler.status = 500
    store = window_log(home, n=300, seed=13, drift=0.8)
    cfg = _cfg(alerts={"webhook_url": url, "webhook_url_env": None, "attempts": 2, "timeout_s": 2})
    result = run_monitoring(home, cfg, SERVING, window=WINDOW, end=END, event_log=store)
    assert result.exit_code == EXIT_DRIFT  # the run's answer stands
    assert result.alert is not None and not result.alert.sent and result.alert.attempts == 2
    assert len(handler.received) == 2
    logged = store.logs(component="monitor")
    assert any("alert webhook" in r.message and "failed after 2 attempts" in r.message for r in logged)


def test_post_alarms_to_nowhere_and_without_url() -> None:
    body = {"alarms": [{"check": "x"}]}
    out = post_alarms(AlertSpec(webhook_url="http://127.0.0.1:9/x", webhook_url_env=None, attempts=2, timeout_s=1),
                      body, wait_s=0.01)  # fmt: skip
    assert not out.sent and out.attempts == 2 and "ConnectError" in (out.error or "")
    assert post_alarms(AlertSpec(webhook_url=None, webhook_url_env=None), body) == AlertOutcome(False, 0)


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    for stamp in ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]:
        for ext in (".json", ".html"):
            (tmp_path / f"{stamp}-abcd1234-linear{ext}").write_text("{}")
    removed = prune(tmp_path, keep=2)
    assert len(removed) == 2 and sorted(p.name for p in tmp_path.iterdir())[0].startswith("20260102")
    assert prune(tmp_path / "missing", keep=1) == []


def test_retention_in_a_run(home: Home) -> None:
    store = window_log(home, n=120, seed=14)
    cfg = _cfg(retention={"drift": 1, "quality": 1, "runs": 1, "workspace": 2})
    for hours in (0, 1):
        run_monitoring(home, cfg, SERVING, window=WINDOW, end=END.replace(hour=hours), event_log=store)
    folder = home.reports / "monitoring"
    stems = {p.name.split(".")[0].rsplit("-", 1)[0] for p in (folder / "drift").iterdir()}
    assert len(stems) == 1 and len(list((folder / "runs").iterdir())) == 1


def test_serving_config_is_used_for_text_policy(home: Home) -> None:
    store = window_log(home, n=120, seed=15)
    no_text = ServingConfig.model_validate({"event_log": {"text_policy": "none"}})
    result = run_monitoring(home, _cfg(), no_text, window=WINDOW, end=END, event_log=store)
    body = [v for v in result.verdicts if v.check == "text_drift.body"]
    assert body and all("keeps no email text" in (v.detail or "") for v in body)
    _no_nan(result.verdicts)
    assert asdict(result.verdicts[0])["job"] == "drift"
