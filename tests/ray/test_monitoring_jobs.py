"""Jobs that run by themselves: with the real Serve app up (one deployment for the module) and a short interval in
monitoring.yaml, monitoring runs appear in the store and the Evidently workspace without anyone calling them; a job
that raises (monitoring.yaml broken while the server runs) is logged as a "monitor" record and the app keeps
routing; fixed, the next tick runs again."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_app import REPO, register_models, running_app, small_serving_config, two_arm_experiment, wait_for

from serving.config import Home
from serving.store.eventlog import open_event_log
from training.config import load_training
from training.pipeline import DataSpec, train_linear
from training.synth import generate

pytestmark = [pytest.mark.ray, pytest.mark.slow]
MONITORING_YAML = """
window: 1h
min_rows: 5
html: false
checks: {quality: {min_feedback: 5}}
retention: {drift: 10, quality: 10, runs: 10, workspace: 10}
schedule: {monitor_every: 4s, kpi_report_every: 4s, first_run_after: 1s}
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("jobs-home"))
    register_models(home)
    # A linear version trained through the real pipeline, so it carries its reference sample: the linear arm's
    # champion (the latest version stands in while none is promoted).
    data = home.root / "train.jsonl"
    generate(1600, seed=41).to_json(data, orient="records", lines=True)
    cfg = load_training(REPO / "configs" / "training.yaml")
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"holdout_fraction": 0.5})})
    train_linear(DataSpec(data, label_col="queue"), cfg, home)
    configs = tmp_path_factory.mktemp("jobs-configs")
    for name in ("queues.yaml", "serving.yaml", "experiments.yaml", "training.yaml"):
        shutil.copy(REPO / "configs" / name, configs / name)
    (configs / "monitoring.yaml").write_text(MONITORING_YAML)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAILROUTE_CONFIG_DIR", str(configs))  # read by launch.start() for the scheduler
        with running_app(home, serve_port, small_serving_config(), two_arm_experiment()) as running:
            running["configs"] = configs
            yield running


def _route_some(app: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    frame = generate(n, seed=seed)
    items = [{"user_id": f"user-{seed}-{i}", "subject": s, "body": b}
             for i, (s, b) in enumerate(zip(frame["subject"], frame["body"], strict=True))]  # fmt: skip
    response = app["client"].post("/v1/route/batch", json=items)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()
    for row, queue in list(zip(results, frame["queue"], strict=True))[: n // 2]:
        assert (
            app["client"].post("/v1/feedback", json={"request_id": row["request_id"], "true_queue": queue}).is_success
        )
    return results


def _runs(home: Home) -> list[str]:
    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        return list(dict.fromkeys(v.run_id for v in store.verdicts(job="drift")))
    finally:
        store.close()


def test_scheduled_runs_appear_without_anyone_calling_them(app: dict[str, Any]) -> None:
    from evidently.ui.workspace import Workspace

    _route_some(app, 80, seed=51)
    home: Home = app["home"]
    runs = wait_for(lambda: _runs(home), lambda r: len(r) >= 2, timeout_s=120)
    assert len(runs) >= 2, "no scheduled monitoring run reached the store"
    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        latest = [v for v in store.verdicts(job="drift") if v.run_id == runs[0]]
    finally:
        store.close()
    checks = {(v.scope, v.check) for v in latest}
    assert {("linear", "text_drift.body"), ("transformer", "prediction_drift"), ("all", "window")} <= checks
    linear = {v.check: v for v in latest if v.scope == "linear"}
    assert linear["confidence_drift"].score is not None  # the linear arm's version has a reference: checks ran
    transformer = {v.check: v for v in latest if v.scope == "transformer"}
    # serve_app's tiny transformer was registered without a reference: its checks are skipped, in words
    assert "trained without a reference" in (transformer["text_drift.body"].detail or "")
    ws = Workspace(str(home.root / "evidently"))
    project = next(p for p in ws.list_projects() if p.name == "mailroute drift")
    assert ws.list_runs(project.id)
    # The KPI report ran unasked too, on the experiment the app runs (t-exp), not on experiments.yaml's.
    from experiments.analysis.report import ExperimentReport
    from monitoring.kpi_job import latest_report_file

    def latest() -> ExperimentReport | None:
        path = latest_report_file(home)
        return None if path is None else ExperimentReport.from_json(path.read_bytes())

    # The first KPI runs may predate this test's traffic (they start a second after the app): wait for one after it.
    report = wait_for(latest, lambda r: r is not None and len(r.arms) == 2, timeout_s=60)
    assert report is not None, "no scheduled KPI report was written"
    assert report.experiment == "t-exp" and {g.arm for g in report.arms} == {"linear", "transformer"}


def test_a_failing_job_is_logged_and_the_app_keeps_routing(app: dict[str, Any]) -> None:
    home: Home = app["home"]
    configs: Path = app["configs"]
    (configs / "monitoring.yaml").write_text("colour: blue\n")  # broken while the server runs
    try:

        def errors() -> list[str]:
            store = open_event_log(f"sqlite:///{home.event_log}")
            try:
                return [r.message for r in store.logs(component="monitor", min_level="ERROR")]
            finally:
                store.close()

        found = wait_for(errors, lambda e: any("unknown key 'colour'" in m for m in e), timeout_s=60)
        assert any("job failed: ConfigError" in m and "unknown key 'colour'" in m for m in found), found
        assert len(_route_some(app, 10, seed=52)) == 10  # routing is untouched
        assert app["client"].get("/readyz").status_code == 200
    finally:
        (configs / "monitoring.yaml").write_text(MONITORING_YAML)
    before = set(_runs(home))
    after = wait_for(lambda: set(_runs(home)), lambda r: bool(r - before), timeout_s=60)
    assert after - before, "the job did not run again after monitoring.yaml was fixed"
