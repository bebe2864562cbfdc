"""One monitoring run (`mailroute monitor run`, and each tick of the scheduler): read a window of the event log,
compare each arm and all traffic with the serving versions' references, save the reports, record verdict rows, keep
the last N reports, post alarms.

Verdict rows (job "drift", one per scope and check, plus one "window" row per run that describes the window) are
what the dashboard and later the rollout logic read; `latest_verdicts()` picks the newest run's rows. A check that
could not run is a row with `alarm` false, `score` None and the reason in `detail`: never a NaN.

Exit codes of `mailroute monitor run`: 0 no alarm, 3 at least one check alarmed (`EXIT_DRIFT`), 2 bad arguments or
config (a malformed monitoring.yaml, a missing `--reference` version), 1 a planned check could not be computed (a
drift report that raised: `RunResult.not_computed`) and nothing alarmed, or any other failure.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring import reports
from monitoring.alerts import Alarm, AlertOutcome, payload, post_alarms
from monitoring.config import MonitoringConfig
from monitoring.reference import Reference, load_reference, mix
from monitoring.scopes import ALL, TRIAGE_QUEUE, Planned, ScopeRows, bonferroni_plan, plan_scope, split_scopes
from monitoring.stats import accuracy_p_value, expected_accuracy
from serving import clock
from serving.config import Home, ServingConfig
from serving.models.registry import ModelRegistry, RegistryError, RegistryUnavailableError, open_registry
from serving.store.eventlog import EventLog, LogRecord, MonitorVerdict, open_event_log, utc_now
from serving.store.location import event_log_url

log = logging.getLogger(__name__)

JOB = "drift"
COMPONENT = "monitor"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3
PROJECTS = {"drift": "mailroute drift", "quality": "mailroute quality"}


@dataclass(frozen=True)
class RunResult:
    """What one run found and wrote."""

    run_id: str
    ts: str
    window_start: str
    window_end: str
    verdicts: tuple[MonitorVerdict, ...]
    reports: tuple[str, ...]  # HTML (or JSON when html is off) of every report written
    summary: str  # path of the run's JSON summary
    seconds: float
    alert: AlertOutcome | None = None
    timings: dict[str, float] = field(default_factory=dict)
    not_computed: tuple[str, ...] = ()  # "scope/check" of every planned (not skipped) check that gave no result

    @property
    def alarms(self) -> list[MonitorVerdict]:
        return [v for v in self.verdicts if v.alarm]

    @property
    def exit_code(self) -> int:
        if self.alarms:
            return EXIT_DRIFT
        return EXIT_ERROR if self.not_computed else EXIT_OK

    @property
    def failure(self) -> str | None:
        """Why the run exits 1, in one line; None when it does not."""
        if self.alarms or not self.not_computed:
            return None
        shown = ", ".join(self.not_computed[:5]) + (", ..." if len(self.not_computed) > 5 else "")
        return f"{len(self.not_computed)} planned check(s) could not be computed (see the logs): {shown}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ts": self.ts,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "alarm": bool(self.alarms),
            "alarms": [f"{v.scope}/{v.check}" for v in self.alarms],
            "verdicts": [asdict(v) for v in self.verdicts],
            "reports": list(self.reports),
            "summary": self.summary,
            "seconds": round(self.seconds, 2),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "alert": None if self.alert is None else asdict(self.alert),
            "not_computed": list(self.not_computed),
        }


def latest_verdicts(event_log: EventLog, job: str = JOB) -> list[MonitorVerdict]:
    """The rows of the newest run of `job` (every scope and check, with report paths): what the dashboard shows."""
    rows = event_log.verdicts(job=job, limit=2000)
    if not rows:
        return []
    newest = max(rows, key=lambda v: v.ts).run_id
    return [v for v in rows if v.run_id == newest]


def configured_arms(config_dir: Path) -> tuple[str, ...]:
    """The arms of experiments.yaml in `config_dir` (none when it is missing or unreadable: the log's arms count)."""
    from experiments.config import load_experiments

    try:
        return tuple(load_experiments(Path(config_dir) / "experiments.yaml").experiment.arms)
    except Exception as err:
        log.debug("no configured arms (%s)", err)
        return ()


def configured_triage_queue(config_dir: Path) -> str:
    """queues.yaml's triage queue in `config_dir` (the default one when the file is missing or unreadable)."""
    from serving.config import load_queues

    try:
        return load_queues(Path(config_dir) / "queues.yaml").triage_queue
    except Exception as err:
        log.debug("no configured triage queue (%s)", err)
        return TRIAGE_QUEUE


def open_job_event_log(home: Home, serving: ServingConfig) -> EventLog:
    """The store the serving config names (the SQLite file of the home by default)."""
    return open_event_log(event_log_url(serving, home))


@dataclass
class _Run:
    """Mutable state of one run while it is being built."""

    cfg: MonitoringConfig
    home: Home
    run_id: str
    stamp: str
    window: tuple[str, str]
    logs: list[LogRecord] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def note(self, level: str, message: str) -> None:
        getattr(log, level.lower())("%s", message)
        self.logs.append(LogRecord(ts=utc_now(), component=COMPONENT, level=level, message=message))

    def timed(self, key: str, started: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started


def _references(
    scopes: Sequence[ScopeRows], registry: ModelRegistry, override: Reference | None, run: _Run
) -> dict[str, tuple[Reference | None, str | None]]:
    """Per scope: its reference, or None and the reason in words."""
    cache: dict[str, Reference | None | str] = {}

    def one(model: str) -> Reference | None | str:
        if model not in cache:
            try:  # verified: on a remote registry this fetches the node's checked copy, reference sample included
                info = registry.get(model)
            except RegistryUnavailableError as err:
                cache[model] = str(err)
            except RegistryError as err:
                cache[model] = f"{model} is not in the registry ({err})"
            else:
                cache[model] = load_reference(info.path, model)
        return cache[model]

    out: dict[str, tuple[Reference | None, str | None]] = {}
    for scope in scopes:
        if override is not None:
            out[scope.scope] = (override, None)
            continue
        if not scope.versions:
            nothing = "no emails were routed to this arm in the window" if scope.excluded == 0 and scope.scope != ALL \
                else "no email of the window was answered by a model"  # fmt: skip
            out[scope.scope] = (None, nothing)
            continue
        parts: list[tuple[Reference, float]] = []
        for version in scope.versions:
            found = one(version.model)
            if isinstance(found, str) or found is None:
                why = found if isinstance(found, str) else f"{version.model} was trained without a reference sample"
                out[scope.scope] = (None, why + "; retrain it to monitor it")
                break
            parts.append((found, float(version.rows)))
        else:
            out[scope.scope] = (mix(parts, run.cfg.reference.sample_size, run.cfg.reference.seed), None)
    return out


RULES_CONFIDENCE = (
    "a rules arm's confidence is the fixed precision of the rule that fired: it moves only with the mix of rules, "
    "which prediction_drift watches (a test for continuous scores would alarm on its ties)"
)


def _confidence_skip(scope: ScopeRows, registry: ModelRegistry) -> str | None:
    """Why the confidence check does not apply to a scope: every version that answered it is a rules version."""
    kinds = set()
    for version in scope.versions:
        name, _, number = version.model.partition(":")
        try:
            kinds.add(registry.read_meta(name, number).kind)
        except RegistryError:  # the reference lookup already says what is wrong with it
            return None
    return RULES_CONFIDENCE if kinds == {"rules"} else None


def _text_skip(reference: Reference | None, current: pd.DataFrame, serving: ServingConfig) -> str | None:
    policy = serving.event_log.text_policy
    if policy == "none" or (len(current) and current["body"].isna().all() and current["subject"].isna().all()):
        return "the event log keeps no email text (serving text_policy: none)"
    if reference is not None and reference.text_policy not in (policy, "mixed"):
        return (
            f"the reference was stored under text_policy '{reference.text_policy}' and the log now keeps "
            f"'{policy}': retrain to compare like with like"
        )
    return None


def _empty_text_columns(reference: Reference | None, current: pd.DataFrame, floor: int) -> list[str]:
    if reference is None:
        return []
    out = []
    for column in ("subject", "body"):
        counts = [int((frame[column].fillna("").astype(str).str.strip() != "").sum()) for frame in
                  (reference.frame, current)]  # fmt: skip
        if min(counts) < floor:
            out.append(column)
    return out


def _feedback(current: pd.DataFrame, cfg: MonitoringConfig) -> pd.DataFrame:
    has = current["true_queue"].notna() & current["feedback_source"].isin(cfg.checks.quality.sources)
    return current[has]


def _verdict(
    run: _Run, p: Planned, alarm: bool, score: float | None, detail: str, report: str | None
) -> MonitorVerdict:
    return MonitorVerdict(
        run_id=run.run_id, ts=utc_now(), job=JOB, scope=p.scope, check=p.check, alarm=alarm,
        window_start=run.window[0], window_end=run.window[1], score=score,
        threshold=None if p.skip else p.threshold, report=report, detail=detail,
    )  # fmt: skip


def _save(run: _Run, kind: str, scope: str, snapshot: Any) -> str:
    from monitoring import drift

    started = time.perf_counter()
    stem = reports.report_stem(run.home.reports, kind, run.stamp, run.run_id, scope)
    html = stem.with_suffix(".html") if run.cfg.html else None
    drift.save_snapshot(snapshot, stem.with_suffix(".json"), html)
    path = str(html or stem.with_suffix(".json"))
    run.reports.append(path)
    run.timed("save", started)
    started = time.perf_counter()
    try:
        drift.add_to_workspace(reports.workspace_dir(run.home.root), PROJECTS[kind], snapshot)
    except Exception as err:  # the workspace is a view of the history; losing one snapshot must not lose the run
        run.note("WARNING", f"monitor: could not add the {kind} report of {scope} to the Evidently workspace: {err}")
    run.timed("workspace", started)
    return path


def _scope_checks(
    run: _Run, scope: ScopeRows, reference: Reference | None, planned: list[Planned]
) -> list[MonitorVerdict]:
    from monitoring import drift

    note = "; ".join(scope.notes)
    current = scope.current
    if len(current) > run.cfg.max_rows:
        current = current.sample(run.cfg.max_rows, random_state=run.cfg.reference.seed)
        note = f"{note}; a random {run.cfg.max_rows} of {len(scope.current)} rows checked"
    meta = {"run_id": run.run_id, "scope": scope.scope, "window_start": run.window[0], "window_end": run.window[1],
            "reference": reference.source if reference else "none"}  # fmt: skip
    verdicts: list[MonitorVerdict] = []
    to_run = [p for p in planned if p.skip is None and p.check != "accuracy"]
    report_path: str | None = None
    outcomes: dict[str, drift.CheckOutcome] = {}
    if to_run and reference is not None:
        started = time.perf_counter()
        checks = [drift.PlannedCheck(p.check, p.column, p.method, float(p.threshold or 0), p.p_value) for p in to_run]
        try:
            found, snapshot = drift.run_drift(
                reference.frame, current, reference.vocabulary, checks,
                name=f"drift {scope.scope} {run.window[0]} .. {run.window[1]}", tags=["drift", scope.scope],
                metadata=meta,
            )  # fmt: skip
        except Exception as err:
            run.note("ERROR", f"monitor: drift report for {scope.scope} failed: {type(err).__name__}: {err}")
            found, snapshot = [], None
        run.timed("drift", started)
        outcomes = {o.name: o for o in found}
        if snapshot is not None:
            report_path = _save(run, "drift", scope.scope, snapshot)
    for p in planned:
        if p.check == "accuracy":
            verdicts.append(_accuracy(run, scope, reference, p, current, meta))
            continue
        if p.skip is not None:
            verdicts.append(_verdict(run, p, False, None, f"skipped: {p.skip}", None))
            continue
        got = outcomes.get(p.check)
        if got is None:
            verdicts.append(_verdict(run, p, False, None, "not computed: the drift report failed (see logs)", None))
            continue
        detail = got.detail + (f" ({note})" if note else "")
        verdicts.append(_verdict(run, p, got.alarm, got.score, detail, report_path))
    return verdicts


def _accuracy(
    run: _Run, scope: ScopeRows, reference: Reference | None, p: Planned, current: pd.DataFrame, meta: dict[str, Any]
) -> MonitorVerdict:
    from monitoring import drift

    rows = _feedback(current, run.cfg)
    report = None
    if len(rows) and reference is not None:
        started = time.perf_counter()
        try:
            snapshot = drift.run_quality(
                rows, name=f"quality {scope.scope} {run.window[0]} .. {run.window[1]}", tags=["quality", scope.scope],
                metadata={**meta, "feedback_rows": len(rows)},
            )  # fmt: skip
            report = _save(run, "quality", scope.scope, snapshot)
        except Exception as err:
            run.note("ERROR", f"monitor: quality report for {scope.scope} failed: {type(err).__name__}: {err}")
        run.timed("quality", started)
    if p.skip is not None or reference is None:
        return _verdict(run, p, False, None, f"skipped: {p.skip or 'no reference'}", report)
    correct = int((rows["predicted"] == rows["true_queue"]).sum())
    accuracy = correct / len(rows)
    tolerance = run.cfg.checks.quality.tolerance
    # what the reference's per-queue accuracy gives on this feedback's queue mix: feedback concentrated on a hard
    # (or easy) queue must not read as a drop (or rise)
    mix = {str(q): int(n) for q, n in rows["true_queue"].astype(str).value_counts().items()}
    reference_accuracy = expected_accuracy(reference.queue_accuracy, reference.accuracy, mix)
    expected = max(reference_accuracy - tolerance, 0.0)
    p_value = accuracy_p_value(correct, len(rows), expected)
    threshold = float(p.threshold or 0)
    alarm = p_value < threshold
    detail = (
        f"accuracy {accuracy:.3f} on {len(rows)} feedback records vs reference {reference_accuracy:.3f} "
        f"(per-queue, weighted by the feedback's queues) - {tolerance:g}: binomial p = {p_value:.3g} "
        f"{'<' if alarm else '>='} {threshold:.3g}"
    )
    return _verdict(run, p, alarm, p_value, detail, report)


def run_monitoring(
    home: Home,
    cfg: MonitoringConfig,
    serving: ServingConfig,
    *,
    window: timedelta | None = None,
    end: datetime | None = None,
    event_log: EventLog | None = None,
    reference: str | None = None,
    arms: Sequence[str] = (),
    triage_queue: str = TRIAGE_QUEUE,
) -> RunResult:
    """One run over [end - window, end). `reference` ("name:vN") compares every scope with that version's reference
    instead of the serving versions' (a missing version is a RegistryError, for the CLI's exit 2). `arms` are the
    configured arms: one without traffic in the window still gets its rows, saying so. `triage_queue`: queues.yaml's
    (an email a model answered but the router sent there is compared by the model's guess)."""
    started = time.perf_counter()
    end = end or clock.now()
    start = end - (window if window is not None else cfg.window_delta)
    run = _Run(cfg, home, uuid.uuid4().hex, reports.stamp(end), (start.isoformat(), end.isoformat()))
    registry = open_registry(home)
    override = None
    if reference is not None:
        info = registry.get(reference)  # RegistryError: the caller's bad argument (verified: fetched when remote)
        override = load_reference(info.path, f"{info.meta.name}:{info.meta.version}")
        if override is None:
            raise RegistryError(f"{info.meta.name}:{info.meta.version} was trained without a reference sample")
    own_log = event_log is None
    store = event_log if event_log is not None else open_job_event_log(home, serving)
    try:
        t = time.perf_counter()
        joined = store.joined_frame(run.window[0], run.window[1])
        run.timed("read", t)
        scopes = split_scopes(joined, arms, triage_queue)
        refs = _references(scopes, registry, override, run)
        plan: list[Planned] = []
        for scope in scopes:
            ref, why = refs[scope.scope]
            plan += plan_scope(
                scope.scope, cfg, rows=len(scope.current), reference_rows=0 if ref is None else len(ref.frame),
                skip_all=why, skip_text=_text_skip(ref, scope.current, serving),
                feedback_rows=len(_feedback(scope.current, cfg)),
                empty_text_columns=_empty_text_columns(ref, scope.current, max(10, cfg.min_rows // 5)),
                skip_confidence=_confidence_skip(scope, registry),
            )  # fmt: skip
        plan, m = bonferroni_plan(plan, cfg.family_alpha)
        verdicts = [_window_row(run, joined, scopes, m)]
        for scope in scopes:
            verdicts += _scope_checks(run, scope, refs[scope.scope][0], [p for p in plan if p.scope == scope.scope])
        alert = _alert(run, verdicts)
        planned = {(p.scope, p.check) for p in plan if p.skip is None}
        missing = tuple(f"{v.scope}/{v.check}" for v in verdicts if (v.scope, v.check) in planned and v.score is None)
        if missing and not any(v.alarm for v in verdicts):
            run.note("ERROR", f"monitor: {len(missing)} planned check(s) not computed: {', '.join(missing)}")
        summary = reports.report_stem(home.reports, "runs", run.stamp, run.run_id).with_suffix(".json")
        result = RunResult(run.run_id, utc_now(), run.window[0], run.window[1], tuple(verdicts), tuple(run.reports),
                           str(summary), time.perf_counter() - started, alert, run.timings, missing)  # fmt: skip
        reports.write_run_summary(summary, result.to_json())
        store.record_verdicts(list(result.verdicts))
        _retain(run)
        if run.logs:
            store.record_logs(run.logs)
        return result
    finally:
        if own_log:
            store.close()


def _window_row(run: _Run, joined: pd.DataFrame, scopes: Sequence[ScopeRows], m: int) -> MonitorVerdict:
    if joined.empty:
        detail = "the window holds no routed emails: every check skipped"
    else:
        feedback = int(joined["true_queue"].notna().sum())
        arms = ", ".join(f"{s.scope} {len(s.current)}" for s in scopes if s.scope != ALL)
        detail = (
            f"{len(joined)} emails, {feedback} with feedback; rows checked per arm: {arms}; "
            f"{m} p-value tests share family alpha {run.cfg.family_alpha:g} (Bonferroni)"
        )
    p = Planned(ALL, "window", "", "", False, None, None)
    return _verdict(run, p, False, float(len(joined)), detail, None)


def _alert(run: _Run, verdicts: Sequence[MonitorVerdict]) -> AlertOutcome | None:
    alarms = [
        Alarm(
            "quality" if v.check == "accuracy" else "drift",
            v.scope,
            v.check,
            v.score,
            v.threshold,
            v.detail or "",
            v.report,
        )
        for v in verdicts
        if v.alarm
    ]
    if not alarms:
        return None
    outcome = post_alarms(
        run.cfg.alerts, payload(run.run_id, utc_now(), run.window, alarms, JOB), warn=lambda m: run.note("WARNING", m)
    )
    return outcome


def _retain(run: _Run) -> None:
    from monitoring import drift

    keep = run.cfg.retention
    for kind, n in (("drift", keep.drift), ("quality", keep.quality), ("runs", keep.runs)):
        reports.prune(reports.monitoring_dir(run.home.reports) / kind, n)
    workspace = reports.workspace_dir(run.home.root)
    if workspace.is_dir():
        for project in PROJECTS.values():
            try:
                drift.prune_workspace(workspace, project, keep.workspace)
            except Exception as err:
                run.note("WARNING", f"monitor: could not prune workspace project {project}: {err}")


def report_failure(home: Home, serving: ServingConfig, err: BaseException, *, job: str = "monitor") -> None:
    """Log a job that raised, in the process log and as a LogRecord in the store (so the dashboard shows it)."""
    message = f"{job} job failed: {type(err).__name__}: {err}"
    log.error("%s", message)
    try:
        store = open_job_event_log(home, serving)
        try:
            store.record_logs([LogRecord(ts=utc_now(), component=COMPONENT, level="ERROR", message=message)])
        finally:
            store.close()
    except Exception as store_err:  # the store itself may be what failed
        log.error("could not record the failure in the event log: %s", store_err)
