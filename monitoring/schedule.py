"""Jobs that run by themselves: the monitoring run and the KPI report, on the intervals of
`configs/monitoring.yaml`, and beside the app the rollout checks, every `rollout.check_every` of
`configs/experiments.yaml` (`experiments.rollout.job`). Intervals are in the app's time (`serving.clock`): a
simulation on a scaled clock runs them that much more often on the wall clock.

Three ways to run the same job function (`run_monitor_job`):

- beside `mailroute serve`: `serving.ops.launch.start()` starts `SchedulerActor`, a small Ray actor owned by the serving
  driver with `num_cpus=0` (it never takes a CPU reservation the replicas need). Its loop runs each due job in a
  worker thread at a lower OS priority (nice 10, set on that thread: on Linux a nice value is per thread, and the
  threads the job starts inherit it), so on a busy machine the routing path wins. A job that raises, or runs past
  `schedule.job_timeout`, is logged (process log and a `LogRecord` of component "monitor" in the store) and runs
  again on the next tick; the actor leaves by itself when the Serve app is gone, and `launch.stop()` ends it;
- `mailroute monitor schedule --every 1h`: the same loop in the foreground, without a server or Ray;
- on a cluster, from any scheduler you already have: `ray job submit -- mailroute monitor run` (exit code 3 on drift).

monitoring.yaml is read again at every tick, so a changed interval or threshold applies without a restart, and a
file broken while the server runs fails that tick (logged) instead of the server. Component log retention
(`retention.logs_days`) runs once per monitoring-job run, not at every pass of the loop (each takes SQLite's write
lock). Email text retention (serving.yaml's `event_log.retention_days`, when set) runs as its own job once a day.

A job past its timeout cannot be stopped from outside (Python has no way to kill a thread): it is recorded as
failed and the loop goes on, while its thread is left to finish in the background; until it does, that job's next
runs are skipped (and logged as failed), so a hung job never piles up threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig
from monitoring.config import MonitoringConfig, load_monitoring
from serving import clock
from serving.clock import parse_duration
from serving.config import Home, ServingConfig
from serving.store.location import event_log_url, is_missing

log = logging.getLogger(__name__)

ACTOR_NAME = "mailroute-scheduler"
JOB_NICE = 10  # the actor's job threads' nice value
APP_CHECK_EVERY_S = 10.0
RETRY_AFTER_S = 60.0  # after a failed tick whose job intervals are not known yet
_HANDLES: dict[str, Any] = {}  # the scheduler actor's handle, held by the serving driver


def monitoring_config(config_dir: Path) -> MonitoringConfig:
    """monitoring.yaml of `config_dir`, or the defaults where there is none (a malformed one is a ConfigError)."""
    path = Path(config_dir) / "monitoring.yaml"
    return load_monitoring(path) if path.exists() else MonitoringConfig()


def run_monitor_job(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None = None
) -> dict[str, Any]:
    """One monitoring run with the config as it is now; returns the run's summary (RunResult.to_json()).
    `experiment`: the running one (its arms are the scopes); None reads experiments.yaml."""
    from monitoring.job import configured_arms, configured_triage_queue, run_monitoring

    arms = tuple(experiment.arms) if experiment is not None else configured_arms(config_dir)
    result = run_monitoring(
        home, monitoring_config(config_dir), serving, arms=arms, triage_queue=configured_triage_queue(config_dir)
    )
    return result.to_json()


def run_kpi_report_job(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None = None
) -> dict[str, Any] | None:
    """The KPI report of the running experiment (experiments.analysis.report) over its whole life so far: written under
    `<home>/reports/experiments/`, its SRM and guardrail results recorded as verdict rows (job "kpi"), and a broken
    guardrail or an SRM alarm posted to the webhook. `experiment` None: the configured one (with its saved state)."""
    from monitoring.kpi_job import run_kpi_report

    return run_kpi_report(home, config_dir, serving, monitoring_config(config_dir), experiment=experiment)


def live_experiment(app_name: str) -> ExperimentConfig | None:
    """The experiment the running Serve app's routers use (the Router's user_config: runtime changes included),
    or None when no such app runs on this Ray."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        configs: dict[str, Any] = dict(ray.get(controller.get_app_configs.remote(), timeout=30))
    except Exception as err:  # Serve is gone or busy: the jobs fall back to the configured experiment
        log.warning("could not read the running experiment (%s): using experiments.yaml", err)
        return None
    app = configs.get(app_name)
    for dep in [] if app is None else app.model_dump(exclude_unset=True).get("deployments", []):
        if dep.get("name") == "Router" and (dep.get("user_config") or {}).get("experiment"):
            return ExperimentConfig.model_validate(dep["user_config"]["experiment"])
    return None


JobFunc = Callable[[Home, Path, ServingConfig, "ExperimentConfig | None"], "dict[str, Any] | None"]


def run_rollout_check(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None = None
) -> dict[str, Any] | None:
    """One check of the running rollout (experiments.rollout.job): widen, promote, roll back or wait."""
    from experiments.rollout.job import run_rollout_job

    return run_rollout_job(home, config_dir, serving, experiment)


RETENTION_EVERY = "1d"  # text retention: a day's granularity is all a retention period in days needs


def run_retention_job(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None = None
) -> dict[str, Any] | None:
    """Text retention (serving.yaml's `event_log.retention_days`): blank the email text stored before then, audited
    (serving.privacy.records.retain_text). None when no period is set or nothing was routed yet."""
    from serving.privacy.records import open_existing_log, retain_text

    days = serving.event_log.retention_days
    if days is None or is_missing(event_log_url(serving, home)):
        return None
    store = open_existing_log(home, serving)
    try:
        result = retain_text(store, home, days, "retention-job")
    finally:
        store.close()
    return {"run_id": "ok", "before": result.before, "predictions": result.blanked.predictions,
            "labelled": result.blanked.labelled}  # fmt: skip


def wall_seconds(duration: str) -> float:
    """A configured duration in wall-clock seconds: intervals are in the app's time, which a simulation scales."""
    return clock.current().real_seconds(parse_duration(duration).total_seconds())


def rollout_every(config_dir: Path) -> str | None:
    """experiments.yaml's rollout.check_every, or None when the file is missing or unreadable (no rollout job)."""
    from experiments.config import load_experiments

    path = Path(config_dir) / "experiments.yaml"
    try:
        return load_experiments(path).rollout.check_every if path.exists() else None
    except Exception as err:  # the rollout job then waits for a readable file; the other jobs run
        log.warning("no rollout checks: %s", err)
        return None


def jobs(
    cfg: MonitoringConfig, monitor_every_s: float | None = None, rollout_check: str | None = None
) -> dict[str, tuple[JobFunc, float]]:
    """The scheduled jobs and their intervals in wall-clock seconds (`monitor_every_s` overrides the config's)."""
    every = monitor_every_s or wall_seconds(cfg.schedule.monitor_every)
    found: dict[str, tuple[JobFunc, float]] = {
        "monitor": (run_monitor_job, every),
        "kpi_report": (run_kpi_report_job, wall_seconds(cfg.schedule.kpi_report_every)),
    }
    if rollout_check is not None:
        found["rollout"] = (run_rollout_check, wall_seconds(rollout_check))
    return found


@dataclass
class Ticker:
    """When each job is due next. Pure bookkeeping: the loops below call `due` and `done`."""

    first_after_s: float
    start: float
    next_due: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)  # the last interval seen per job

    def due(self, intervals: dict[str, float], now: float) -> list[str]:
        for name, interval in intervals.items():
            # A rollout check never waits longer than its own interval: a broken canary must not wait an hour.
            first = min(self.first_after_s, interval) if name == "rollout" else self.first_after_s
            self.next_due.setdefault(name, self.start + first)
            self.intervals[name] = interval
        return [name for name in intervals if self.next_due[name] <= now]

    def done(self, name: str, interval_s: float, now: float) -> None:
        """A run of `name` ended at `now` (ok or failed): the next is one interval later, never in a burst."""
        self.next_due[name] = now + interval_s

    def postpone_all(self, now: float, default_s: float) -> None:
        """Nothing could run this tick (a broken config): try again one interval later."""
        for name in self.intervals or {"monitor": default_s}:
            self.done(name, self.intervals.get(name, default_s), now)

    def sleep_s(self, now: float, cap: float) -> float:
        if not self.next_due:
            return min(cap, max(0.0, self.start + self.first_after_s - now))
        return max(0.0, min(cap, min(self.next_due.values()) - now))


@dataclass
class JobState:
    runs: int = 0
    failures: int = 0
    last_ok: str | None = None  # run_id or "ok"
    last_error: str | None = None
    running: threading.Thread | None = field(default=None, compare=False, repr=False)  # a run past its timeout


def _run_in_thread(
    func: Callable[[], dict[str, Any] | None], timeout_s: float, nice: int | None, name: str
) -> tuple[threading.Thread, dict[str, Any] | None]:
    """Run `func` in a daemon thread (at `nice` on Linux) and wait up to `timeout_s`. Returns the thread and the
    job's output; the output is None and the thread still alive when it timed out. An exception is re-raised."""
    box: dict[str, Any] = {}

    def target() -> None:
        if nice is not None:
            with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: run at normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        try:
            box["out"] = func()
        except BaseException as err:
            box["err"] = err

    thread = threading.Thread(target=target, name=f"mailroute-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "err" in box:
        raise box["err"]
    return thread, box.get("out")


def run_due(
    home: Home,
    config_dir: Path,
    serving: ServingConfig,
    ticker: Ticker,
    states: dict[str, JobState],
    now: float,
    monitor_every_s: float | None = None,
    experiment: Callable[[], ExperimentConfig | None] | None = None,
    nice: int | None = None,
    rollout: bool = False,
) -> None:
    """Run every due job once, each in its own thread with `schedule.job_timeout` (at OS priority `nice` where
    given); failures and timeouts are logged and recorded, never raised. After a monitoring-job run, component log
    records past `retention.logs_days` are deleted. `experiment` gives the running experiment (the scheduler beside
    the app asks Serve); None: the configured one. `rollout`: also the rollout checks (they change the running app,
    so only the scheduler beside it runs them)."""
    from monitoring.job import report_failure

    try:
        cfg = monitoring_config(config_dir)
    except Exception as err:  # a broken monitoring.yaml fails this tick; the next one reads it again
        report_failure(home, serving, err, job="scheduler")
        ticker.postpone_all(now, RETRY_AFTER_S)
        return
    timeout_s = parse_duration(cfg.schedule.job_timeout).total_seconds()  # wall clock: it bounds work, not waiting
    due = jobs(cfg, monitor_every_s, rollout_every(config_dir) if rollout else None)
    if serving.event_log.retention_days is not None:
        due["retention"] = (run_retention_job, wall_seconds(RETENTION_EVERY))
    for name, (func, interval) in due.items():
        if name not in ticker.due({name: interval}, now):
            continue
        state = states.setdefault(name, JobState())
        try:
            if state.running is not None and state.running.is_alive():
                raise TimeoutError("the run that passed its timeout is still going: this run skipped")
            state.running = None
            running = experiment() if experiment is not None else None

            def call(func: JobFunc = func, running: ExperimentConfig | None = running) -> dict[str, Any] | None:
                return func(home, config_dir, serving, running)

            thread, out = _run_in_thread(call, timeout_s, nice, name)
            if thread.is_alive():
                state.running = thread
                raise TimeoutError(
                    f"still running after {cfg.schedule.job_timeout} (schedule.job_timeout); left to finish"
                )
            state.last_ok = str((out or {}).get("run_id", "ok"))
            state.last_error = None
        except Exception as err:
            state.failures += 1
            state.last_error = f"{type(err).__name__}: {err}"
            report_failure(home, serving, err, job=name)
        state.runs += 1
        if name == "monitor":
            prune_component_logs(home, serving, cfg.retention.logs_days)
        ticker.done(name, interval, time.monotonic())


def prune_component_logs(home: Home, serving: ServingConfig, days: float) -> int:
    """Delete component log records older than `days` (retention.logs_days); a failure only warns."""
    from datetime import timedelta

    from monitoring.job import open_job_event_log

    if is_missing(event_log_url(serving, home)):
        return 0  # nothing routed yet: do not create the file
    try:
        store = open_job_event_log(home, serving)
    except Exception as err:
        log.warning("log retention skipped: %s", err)
        return 0
    try:
        return store.prune_logs((clock.now() - timedelta(days=days)).isoformat())
    except Exception as err:
        log.warning("log retention failed: %s", err)
        return 0
    finally:
        store.close()


def run_forever(
    home: Home,
    config_dir: Path,
    serving: ServingConfig,
    *,
    every: str | None = None,
    stop: threading.Event | None = None,
    on_run: Callable[[dict[str, JobState]], None] | None = None,
) -> dict[str, JobState]:
    """`mailroute monitor schedule`: run the jobs in this process until `stop` is set (Ctrl-C for the CLI).
    `every` overrides the monitoring interval of the config; the first run is at once."""
    stop = stop or threading.Event()
    ticker = Ticker(first_after_s=0.0, start=time.monotonic())
    states: dict[str, JobState] = {}
    override = wall_seconds(every) if every else None
    while not stop.is_set():
        before = sum(state.runs for state in states.values())
        run_due(home, config_dir, serving, ticker, states, time.monotonic(), override)
        if on_run is not None and sum(state.runs for state in states.values()) != before:
            on_run(states)
        stop.wait(ticker.sleep_s(time.monotonic(), 30.0))
    return states


class SchedulerActor:
    """The Ray actor beside the Serve app (wrapped with `ray.remote` in `start_scheduler`)."""

    def __init__(self, home: str, config_dir: str, serving: dict[str, Any], app_name: str) -> None:
        self.home, self.config_dir = Home(Path(home)), Path(config_dir)
        self.serving = ServingConfig.model_validate(serving)
        self.app_name = app_name
        self.states: dict[str, JobState] = {}
        self.ticker: Ticker | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        cfg = monitoring_config(self.config_dir)
        first = wall_seconds(cfg.schedule.first_run_after)
        self.ticker = Ticker(first_after_s=first, start=time.monotonic())
        self.task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def _loop(self) -> None:
        assert self.ticker is not None
        checked = time.monotonic()
        while True:
            now = time.monotonic()
            if now - checked >= APP_CHECK_EVERY_S:
                checked = now
                if not await asyncio.to_thread(self._app_running):
                    log.warning("the Serve app %s is gone: the scheduled jobs stop", self.app_name)
                    return
            try:
                await asyncio.to_thread(
                    run_due, self.home, self.config_dir, self.serving, self.ticker, self.states, time.monotonic(),
                    None, lambda: live_experiment(self.app_name), JOB_NICE, True,
                )  # fmt: skip
            except Exception:  # run_due records job failures itself; this is a bug in the loop: keep ticking
                log.exception("scheduler tick failed")
                self.ticker.postpone_all(time.monotonic(), RETRY_AFTER_S)
            await asyncio.sleep(max(0.2, self.ticker.sleep_s(time.monotonic(), APP_CHECK_EVERY_S)))

    def _app_running(self) -> bool:
        from ray import serve

        try:
            return self.app_name in serve.status().applications
        except Exception:  # Serve shut down
            return False


def start_scheduler(home: Home, config_dir: Path, serving: ServingConfig, app_name: str) -> Any | None:
    """Start (or restart) the scheduler actor on the running Ray, unless monitoring.yaml switches it off.
    A malformed monitoring.yaml is a ConfigError here, before anything is started."""
    import ray

    cfg = monitoring_config(config_dir)
    stop_scheduler()
    if not cfg.schedule.enabled:
        log.info("scheduled jobs are off (monitoring.yaml schedule.enabled: false)")
        return None
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(SchedulerActor)
    options: dict[str, Any] = {"name": ACTOR_NAME}
    if clock.env():  # the jobs must stamp and schedule on the app's clock
        options["runtime_env"] = {"env_vars": clock.env()}
    handle: Any = actor_cls.options(**options).remote(
        str(home.root), str(Path(config_dir).absolute()), serving.model_dump(mode="json"), app_name
    )
    ray.get(handle.start.remote(), timeout=60)
    # Ray ends an actor (named or not) once no handle to it is left: the driver keeps this one while it serves.
    _HANDLES[ACTOR_NAME] = handle
    log.info("scheduled jobs started: monitoring every %s", cfg.schedule.monitor_every)
    return handle


def stop_scheduler() -> None:
    """End the scheduler actor of this Ray namespace, if one runs."""
    import ray

    _HANDLES.pop(ACTOR_NAME, None)
    with contextlib.suppress(ValueError):  # ValueError: none running
        ray.kill(ray.get_actor(ACTOR_NAME))
