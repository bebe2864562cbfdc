"""The scheduler's bookkeeping and one tick without Ray: due jobs run, a failing job is logged in the store and
retried next tick without stopping the others, a broken monitoring.yaml fails the tick, not the loop; the KPI
report job writes its report and verdict rows."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from monitor_support import REPO, train_version

from monitoring import schedule
from monitoring.schedule import JobState, Ticker, run_due
from serving.config import Home, ServingConfig
from serving.store.eventlog import open_event_log, utc_now

pytestmark = pytest.mark.unit


def test_ticker_runs_each_job_once_per_interval() -> None:
    ticker = Ticker(first_after_s=5, start=100.0)
    assert ticker.due({"monitor": 60, "kpi_report": 30}, now=104) == []
    assert ticker.due({"monitor": 60, "kpi_report": 30}, now=105) == ["monitor", "kpi_report"]
    ticker.done("monitor", 60, now=110)  # a run that took 5 s: the next one is an interval after it ended
    ticker.done("kpi_report", 30, now=111)
    assert ticker.due({"monitor": 60, "kpi_report": 30}, now=141) == ["kpi_report"]
    assert ticker.sleep_s(now=112, cap=1000) == pytest.approx(29)
    ticker.postpone_all(now=200, default_s=60)  # a failed tick: each job again one interval later
    assert ticker.next_due == {"monitor": 260, "kpi_report": 230}


def _configs(tmp_path: Path, monitoring_yaml: str) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("queues.yaml", "serving.yaml", "experiments.yaml"):
        shutil.copy(REPO / "configs" / name, configs / name)
    (configs / "monitoring.yaml").write_text(monitoring_yaml)
    return configs


def _monitor_logs(home: Home) -> list[str]:
    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        return [r.message for r in store.logs(component="monitor", min_level="ERROR")]
    finally:
        store.close()


def test_a_failing_job_is_logged_and_the_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, serving = Home(tmp_path / "home"), ServingConfig()
    configs = _configs(tmp_path, "html: false\n")
    calls: list[str] = []

    def boom(home: Home, config_dir: Path, serving: ServingConfig, experiment: object) -> None:
        calls.append("kpi")
        raise RuntimeError("the KPI database is down")

    def fine(home: Home, config_dir: Path, serving: ServingConfig, experiment: object) -> dict[str, str]:
        calls.append("monitor")
        return {"run_id": "r1"}

    monkeypatch.setattr(
        schedule, "jobs", lambda cfg, every=None, rollout=None: {"kpi_report": (boom, 10.0), "monitor": (fine, 10.0)}
    )
    ticker, states = Ticker(first_after_s=0, start=time.monotonic()), dict[str, JobState]()
    run_due(home, configs, serving, ticker, states, time.monotonic())
    assert calls == ["kpi", "monitor"]
    assert states["kpi_report"] == JobState(
        runs=1, failures=1, last_ok=None, last_error="RuntimeError: the KPI database is down"
    )
    assert states["monitor"].last_ok == "r1"
    assert any("kpi_report job failed: RuntimeError: the KPI database is down" in m for m in _monitor_logs(home))
    run_due(home, configs, serving, ticker, states, time.monotonic())  # not due yet: nothing runs
    assert calls == ["kpi", "monitor"]
    run_due(home, configs, serving, ticker, states, time.monotonic() + 11)  # next tick: retried
    assert calls == ["kpi", "monitor", "kpi", "monitor"]


def test_a_broken_config_fails_the_tick_not_the_loop(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    configs = _configs(tmp_path, "family_alpha: 7\n")
    ticker, states = Ticker(first_after_s=0, start=time.monotonic()), dict[str, JobState]()
    run_due(home, configs, ServingConfig(), ticker, states, time.monotonic())
    assert states == {} and ticker.next_due  # nothing ran; the jobs are tried again later
    assert any("scheduler job failed: ConfigError" in m and "family_alpha" in m for m in _monitor_logs(home))


def test_kpi_report_job_writes_report_and_verdicts(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from monitoring.simulate import Arm, fill, route_frame
    from serving.models.predictor import load_version
    from serving.models.registry import ModelRegistry
    from serving.store.sqlite import SQLiteEventLog
    from training.synth import generate

    home = Home(tmp_path / "home")
    train_version(home, n=1200)
    predictor, meta = load_version(ModelRegistry(home.registry), "linear")
    arms = [Arm(a, predictor, "linear", meta.version) for a in ("linear", "transformer")]
    now = datetime.now(UTC)
    predictions, feedback = route_frame(
        generate(400, seed=3), arms, start=now - timedelta(hours=3), span=timedelta(hours=2),
        policy=ServingConfig().policy, experiment="linear-vs-minilm", users=200,
    )  # fmt: skip
    writer = SQLiteEventLog(str(home.event_log))
    fill(writer, predictions, feedback)
    writer.close()
    configs = _configs(tmp_path, "html: false\n")
    out = schedule.run_kpi_report_job(home, configs, ServingConfig())
    assert out is not None and Path(out["report"]).is_file()
    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        rows = store.verdicts(job="kpi")
    finally:
        store.close()
    checks = {v.check for v in rows}
    assert "srm" in checks and any(c.startswith("guardrail.") for c in checks)
    assert {v.run_id for v in rows} == {out["run_id"]}


def test_kpi_report_job_without_a_log_does_nothing(tmp_path: Path) -> None:
    assert schedule.run_kpi_report_job(Home(tmp_path), _configs(tmp_path, "html: false\n"), ServingConfig()) is None


def _fake_jobs(monitor: schedule.JobFunc) -> object:
    return lambda cfg, every=None, rollout=None: {"monitor": (monitor, 10.0)}


def test_component_logs_past_their_retention_go_once_per_monitoring_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.store.eventlog import LogRecord

    home, serving = Home(tmp_path / "home"), ServingConfig()
    configs = _configs(tmp_path, "html: false\nretention: {logs_days: 7}\n")
    store = open_event_log(f"sqlite:///{home.event_log}")
    old = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    store.record_logs([LogRecord(old, "router", "ERROR", "last week"), LogRecord(utc_now(), "router", "ERROR", "now")])
    pruned: list[float] = []
    real = schedule.prune_component_logs

    def counting(home: Home, serving: ServingConfig, days: float) -> int:
        pruned.append(days)
        return real(home, serving, days)

    monkeypatch.setattr(schedule, "prune_component_logs", counting)
    monkeypatch.setattr(schedule, "jobs", _fake_jobs(lambda *a: {"run_id": "r1"}))
    ticker, states = Ticker(first_after_s=3600, start=time.monotonic()), dict[str, JobState]()
    for _ in range(3):  # loop passes with no job due: no write lock taken
        run_due(home, configs, serving, ticker, states, time.monotonic())
    assert pruned == [] and len(store.logs()) == 2
    run_due(home, configs, serving, ticker, states, time.monotonic() + 3600)  # the monitoring run
    assert pruned == [7.0] and [r.message for r in store.logs()] == ["now"]
    store.close()


def test_a_job_past_its_timeout_is_a_failure_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    home, serving = Home(tmp_path / "home"), ServingConfig()
    configs = _configs(tmp_path, "html: false\nschedule: {job_timeout: 0.3s}\n")
    release = threading.Event()

    def hangs(*args: object) -> dict[str, str]:
        release.wait(30)
        return {"run_id": "late"}

    monkeypatch.setattr(schedule, "jobs", _fake_jobs(hangs))
    ticker, states = Ticker(first_after_s=0, start=time.monotonic()), dict[str, JobState]()
    started = time.monotonic()
    run_due(home, configs, serving, ticker, states, time.monotonic())
    assert time.monotonic() - started < 10
    state = states["monitor"]
    assert state.failures == 1 and (state.last_error or "").startswith("TimeoutError: still running after 0.3s")
    assert any("monitor job failed: TimeoutError" in m for m in _monitor_logs(home))
    run_due(home, configs, serving, ticker, states, time.monotonic() + 11)  # still hung: skipped, not piled up
    assert state.failures == 2 and "still going" in (state.last_error or "")
    release.set()
    assert state.running is not None
    state.running.join(5)
    run_due(home, configs, serving, ticker, states, time.monotonic() + 22)  # it finished: runs again
    assert state.failures == 2 and state.runs == 3


def test_jobs_run_at_lower_priority_in_their_own_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading

    seen: dict[str, int] = {}

    def record(*args: object) -> dict[str, str]:
        seen["job"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return {"run_id": "r1"}

    monkeypatch.setattr(schedule, "jobs", _fake_jobs(record))
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ticker, states = Ticker(first_after_s=0, start=time.monotonic()), dict[str, JobState]()
    run_due(Home(tmp_path / "home"), _configs(tmp_path, "html: false\n"), ServingConfig(), ticker, states,
            time.monotonic(), nice=max(before, 10))  # fmt: skip
    assert seen["job"] == max(before, 10) and states["monitor"].last_ok == "r1"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller's thread untouched
