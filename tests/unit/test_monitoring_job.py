"""One monitoring run end to end on a memory log: verdict rows (including the empty and skipped cases, in words),
reports and workspace, retention, and alerts to a real local webhook (a failing one does not fail the run)."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from monitor_support import END, REPO, WINDOW, train_version, window_log

from monitoring.alerts import AlertOutcome, post_alarms
from monitoring.config import AlertSpec, MonitoringConfig
from monitoring.job import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, latest_verdicts, run_monitoring
from monitoring.reference import Reference, mix
from monitoring.reports import prune
from monitoring.scopes import ALL, split_scopes
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


def _secret_url(url: str) -> str:
    """The hook's URL with a user:password and a secret path, as webhook URLs often are."""
    host = url.removeprefix("http://").split("/", 1)[0]
    return f"http://alice:hunter2pw@{host}/hooks/T0KEN-s3cr3t?key=qu3ry-s3cr3t"


SECRETS = ("alice", "hunter2pw", "T0KEN-s3cr3t", "qu3ry-s3cr3t", "/hooks")


def test_failing_webhook_does_not_fail_the_run_nor_leak_its_url(
    home: Home, hook: tuple[str, type[_Hook]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = hook
    handler.status = 500
    secret = _secret_url(url)
    store = window_log(home, n=300, seed=13, drift=0.8)
    cfg = _cfg(alerts={"webhook_url": secret, "webhook_url_env": None, "attempts": 2, "timeout_s": 2})
    with caplog.at_level(logging.WARNING):
        result = run_monitoring(home, cfg, SERVING, window=WINDOW, end=END, event_log=store)
    assert result.exit_code == EXIT_DRIFT  # the run's answer stands
    assert result.alert is not None and not result.alert.sent and result.alert.attempts == 2  # 5xx: retried
    assert len(handler.received) == 2
    logged = store.logs(component="monitor")
    assert any("alert webhook" in r.message and "failed after 2 attempts" in r.message for r in logged)
    host = url.removeprefix("http://").split("/", 1)[0]
    assert f"http://{host} " in (result.alert.error or "")  # scheme://host:port only
    shown = [r.message for r in logged] + [r.getMessage() for r in caplog.records] + [
        json.dumps(result.to_json()), Path(result.summary).read_text()
    ]  # fmt: skip
    for text in shown:
        assert not any(s in text for s in SECRETS), text


def test_a_4xx_webhook_answer_is_not_retried(hook: tuple[str, type[_Hook]]) -> None:
    url, handler = hook
    handler.status = 404
    warned: list[str] = []
    spec = AlertSpec(webhook_url=_secret_url(url), webhook_url_env=None, attempts=3, timeout_s=2)
    out = post_alarms(spec, {"alarms": [{"check": "x"}]}, warn=warned.append, wait_s=0.01)
    assert not out.sent and out.attempts == 1 and len(handler.received) == 1
    assert "404" in (out.error or "") and warned == [out.error]
    assert not any(s in (out.error or "") for s in SECRETS)


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


def test_retention_leaves_files_it_does_not_own(tmp_path: Path) -> None:
    for stamp in ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]:
        (tmp_path / f"{stamp}-abcd1234-linear.json").write_text("{}")
    mine = [".gitkeep", "README.md", "weekly-review.html", "20260101-notes.txt"]
    for name in mine:
        (tmp_path / name).write_text("keep me")
    removed = prune(tmp_path, keep=1)
    assert sorted(p.name for p in removed) == ["20260101T000000Z-abcd1234-linear.json",
                                               "20260102T000000Z-abcd1234-linear.json"]  # fmt: skip
    assert all((tmp_path / name).is_file() for name in mine)


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


def _fallback_rows(n: int, *, guess: str | None, start: int) -> list[PredictionEvent]:
    """Emails the linear arm answered as another arm's fallback, unsure, so the router sent them to triage."""
    fields = dict(ts="2026-01-01T12:00:00+00:00", user_key="u", arm="linear", model_name="linear", model_version="v1",
                  queue="triage", confidence=0.3, fallback=True, reason="fallback_to_linear:transformer_timeout",
                  latency_ms=1.0, secondary_queue=guess, subject="Invoice question",
                  body="My invoice is wrong, please check the charge")  # fmt: skip
    return [PredictionEvent(request_id=f"fb{start + i}", **fields) for i in range(n)]  # type: ignore[arg-type]


def test_fallback_answers_sent_to_triage_are_compared_by_the_model_guess(home: Home) -> None:
    store = window_log(home, n=400, seed=21)
    store.record_predictions(_fallback_rows(12, guess="billing", start=0) + _fallback_rows(3, guess=None, start=100))
    joined = store.joined_frame((END - WINDOW).isoformat(), END.isoformat())
    scopes = {s.scope: s for s in split_scopes(joined, ["linear"])}
    for name in ("linear", ALL):
        predicted = set(scopes[name].current["predicted"])
        assert "triage" not in predicted and "billing" in predicted
        assert any("3 rows sent to triage without the model's guess left out" in n for n in scopes[name].notes)
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store)
    by = {(v.scope, v.check): v for v in result.verdicts}
    for name in ("linear", ALL):
        assert by[(name, "prediction_drift")].score is not None and not by[(name, "prediction_drift")].alarm


def test_a_drift_report_that_raises_exits_1(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitoring import drift

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("evidently fell over")

    monkeypatch.setattr(drift, "run_drift", broken)
    store = window_log(home, n=120, seed=22)
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store)
    assert not result.alarms and result.exit_code == EXIT_ERROR
    assert "linear/prediction_drift" in result.not_computed and "all/text_drift.body" in result.not_computed
    assert result.failure and "could not be computed" in result.failure and "\n" not in result.failure
    assert "linear/accuracy" not in result.not_computed  # computed without the drift report
    alarm = replace(result.verdicts[-1], alarm=True)
    assert replace(result, verdicts=(*result.verdicts, alarm)).exit_code == EXIT_DRIFT  # an alarm still says 3


def test_accuracy_is_compared_on_the_feedback_queue_mix(home: Home) -> None:
    """Feedback all from a hard queue, right as often as on the reference: no alarm (the overall reference accuracy,
    0.915 here, would alarm)."""
    from monitoring.job import _accuracy, _Run
    from monitoring.scopes import Planned, ScopeRows

    queue = ["general"] * 100 + ["billing"] * 900
    predicted = ["general"] * 60 + ["sales"] * 40 + ["billing"] * 855 + ["sales"] * 45
    ref = pd.DataFrame({"subject": "s", "body": "b", "confidence": 0.9, "queue": queue, "predicted": predicted})
    reference = Reference(ref, frozenset(), "redacted", "linear:v1")
    assert reference.accuracy == pytest.approx(0.915) and reference.queue_accuracy["general"] == pytest.approx(0.6)
    current = pd.DataFrame({"subject": "s", "body": "b", "confidence": 0.5, "feedback_source": "audit",
                            "true_queue": "general", "predicted": ["general"] * 180 + ["sales"] * 120})  # fmt: skip
    run = _Run(_cfg(), home, "f" * 32, "20260102T000000Z", ((END - WINDOW).isoformat(), END.isoformat()))
    planned = Planned("linear", "accuracy", "", "binomial", True, 0.01 / 27)
    verdict = _accuracy(run, ScopeRows("linear", current, ()), reference, planned, current, {})
    assert verdict.score is not None and not verdict.alarm, verdict.detail
    assert "vs reference 0.600" in (verdict.detail or "")
    worse = current.assign(predicted=["general"] * 120 + ["sales"] * 180)  # 0.4 on that queue: an alarm
    assert _accuracy(run, ScopeRows("linear", worse, ()), reference, planned, worse, {}).alarm


def test_mixed_reference_keeps_the_traffic_proportions() -> None:
    def ref(name: str, n: int) -> Reference:
        frame = pd.DataFrame({"subject": name, "body": "b", "queue": "billing", "predicted": "billing",
                              "confidence": 0.9}, index=range(n))  # fmt: skip
        return Reference(frame, frozenset({name}), "redacted", f"{name}:v1")

    mixed = mix([(ref("big", 2000), 500.0), (ref("small", 300), 500.0)], size=2000)
    assert mixed.frame["subject"].value_counts().to_dict() == {"big": 300, "small": 300}  # 50/50, as the traffic
    mixed = mix([(ref("big", 2000), 700.0), (ref("small", 300), 300.0)], size=2000)
    assert mixed.frame["subject"].value_counts().to_dict() == {"big": 700, "small": 300}
    assert mixed.vocabulary == {"big", "small"} and mixed.source == "big:v1+small:v1"


def test_a_zero_window_is_not_the_default_one(home: Home) -> None:
    result = run_monitoring(home, _cfg(), SERVING, window=timedelta(0), end=END, event_log=MemoryEventLog())
    assert result.window_start == result.window_end == END.isoformat()


def test_a_remote_registry_gives_the_reference_sample(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the registry on shared storage ($MAILROUTE_REGISTRY_URI), the job on a node that never served the
    version still finds its reference sample: it fetches a checked copy, not a folder that is not there."""
    import shutil
    import uuid

    source = home.registry / "linear" / "v1"
    meta = json.loads((source / "meta.json").read_text())
    bucket = f"memory://bucket-{uuid.uuid4().hex[:8]}/registry"

    def copy(folder: Path) -> None:
        for rel in meta["files"]:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / rel, folder / rel)

    ModelRegistry(bucket, cache=home.root / "trainer-node").register(
        "linear", copy, kind="linear", labels=meta["labels"], preprocessing_version=meta["preprocessing_version"],
        data_fingerprint=meta["data_fingerprint"], metrics={}, params={},
    )  # fmt: skip
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", bucket)
    store = window_log(home, n=300, seed=11, feedback=0.0)
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store, arms=["linear"])
    by = {(v.scope, v.check): v for v in result.verdicts}
    assert by[("linear", "text_drift.body")].score is not None, by[("linear", "text_drift.body")].detail


def test_a_rules_arm_skips_the_confidence_check_and_says_why(home: Home) -> None:
    """A rules arm's confidence is its rule's fixed precision: its distribution moves only with the mix of rules,
    which the prediction check already watches. Every other check runs on it as on a model."""
    from serving.config import load_queues
    from training.pipeline import DataSpec
    from training.rules import register_rules
    from training.synth import generate, write_corpus

    data = home.root / "rules-data.jsonl"
    write_corpus(generate(1600, seed=8), data)
    register_rules(REPO / "configs" / "rules.yaml", DataSpec(data, label_col="queue"),
                   load_queues(REPO / "configs" / "queues.yaml"), home, threshold=0.6)  # fmt: skip
    store = window_log(home, n=400, seed=9, arms=("rules",), model="rules")
    result = run_monitoring(home, _cfg(), SERVING, window=WINDOW, end=END, event_log=store, arms=["rules"])
    by = {(v.scope, v.check): v for v in result.verdicts}
    assert "rules" in (by[("rules", "confidence_drift")].detail or "")
    assert (by[("rules", "confidence_drift")].detail or "").startswith("skipped")
    assert by[("rules", "prediction_drift")].score is not None  # the rest runs
    assert by[("rules", "text_drift.body")].score is not None
