"""The rollout job: at every `rollout.check_every`, read how the canary does and widen, promote or roll it back.

Scheduled beside the app like the monitoring jobs (`monitoring.schedule`, in the scheduler actor, which can reach
Serve). One check:

1. nothing to do unless the saved rollout (the event store's) says one is running;
2. the experiment report (`experiments.analysis.report.build_report`) over the rollout so far, with the arm the
   candidate would replace as the control, gives the canary's guardrails and the always-valid interval of
   (canary - arm) on the primary metric; a count of the canary's emails since the current step began gives the
   step's exposure;
3. `experiments.rollout.rule.decide` turns them into wait, widen, promote or roll back;
4. a step is applied through `experiments.rollout.service.step` (under the change lock, checked again against the
   rollout file, audited); every check is recorded: in the rollout file (`last_check`), as a verdict row (job
   "rollout", scope the canary arm), as a log line of component "rollout" (the dashboard shows all three), and a
   rollback is posted to the alert webhook.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from experiments.analysis.queries import open_engine
from experiments.config import ExperimentConfig
from experiments.rollout import state as rollout_state
from experiments.rollout.rule import PROMOTE, ROLLBACK, WIDEN, Decision, Evidence, decide
from experiments.rollout.state import RolloutState, Step
from serving import clock
from serving.config import Home, ServingConfig
from serving.store.eventlog import EventLog, LogRecord, MonitorVerdict, open_event_log, utc_now
from serving.store.location import event_log_url

log = logging.getLogger(__name__)
JOB = "rollout"
COMPONENT = "rollout"
ACTOR = "rollout-job"


def canary_emails_since(url: str, arm: str, since: str) -> int:
    """Emails the experiment assigned to `arm` at or after `since` (log text)."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            sql = sa.text("SELECT COUNT(*) FROM predictions WHERE arm = :arm AND ts >= :since")
            return int(conn.execute(sql, {"arm": arm, "since": since}).scalar_one())
    finally:
        engine.dispose()


def evidence(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig, rs: RolloutState, now: datetime
) -> Evidence:
    """What the rule needs: the report over the rollout with the replaced arm as control, and the step's exposure."""
    from experiments.analysis.kpi import kpis
    from experiments.analysis.report import build_report
    from experiments.config import load_experiments
    from serving.config import load_queues

    files = load_experiments(Path(config_dir) / "experiments.yaml")
    queues = load_queues(Path(config_dir) / "queues.yaml")
    url = event_log_url(serving, home)
    started = datetime.fromisoformat(rs.started)
    report = build_report(
        url, experiment=experiment.model_copy(update={"control": rs.arm}), analysis=files.analysis, queues=queues,
        since=started, as_of=now,
    )  # fmt: skip
    comparison = next((c for c in report.comparisons if c.challenger == rs.canary_arm), None)
    primary = None
    if comparison is not None:
        primary = comparison.net_saving if files.analysis.primary_metric == "net_saving" else comparison.accuracy
    groups = {g.arm: g for g in report.arms}
    srm = report.srm
    ev = Evidence(
        now=now,
        step_started=datetime.fromisoformat(rs.step_started),
        canary_emails_at_step=canary_emails_since(url, rs.canary_arm, rs.step_started),
        verdicts={a: groups[a].verdicts if a in groups else 0 for a in (rs.arm, rs.canary_arm)},
        rails=[g for g in report.guardrails if g.arm == rs.canary_arm],
        primary=primary,
        primary_unit=kpis(queues)[files.analysis.primary_metric].unit,
        srm_alarm=bool(srm is not None and srm.alarm),
        srm_note=srm.note if srm is not None else "",
    )
    return ev


def run_rollout_job(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None = None
) -> dict[str, Any] | None:
    """One check of the running rollout (module docstring); None when no rollout is running."""
    store = open_event_log(event_log_url(serving, home))
    try:
        return _check(home, config_dir, serving, experiment, store)
    finally:
        store.close()


def _check(
    home: Home, config_dir: Path, serving: ServingConfig, experiment: ExperimentConfig | None, store: EventLog
) -> dict[str, Any] | None:
    from experiments.config import load_experiments
    from experiments.rollout import service
    from serving.config import load_queues
    from serving.ops.changes import Context, run_sync

    rs = rollout_state.load(store)
    if rs is None or not rs.running:
        return None
    if experiment is None or rs.canary_arm not in experiment.arms:
        raise RuntimeError(
            f"rollout of {rs.ref} is running but the live experiment has no arm {rs.canary_arm} "
            "(the app was restarted from a config?): roll it back with mailroute rollback"
        )
    files = load_experiments(Path(config_dir) / "experiments.yaml")
    now = clock.now()
    ev = evidence(home, config_dir, serving, experiment, rs, now)
    decision = decide(rs.canary_arm, rs.arm, rs.steps, rs.step, ev, files.rollout)
    queues = load_queues(Path(config_dir) / "queues.yaml").model_dump(mode="json")
    ctx = Context(home, queues, serving, ACTOR, Path(config_dir), store=store)
    applied = None
    if decision.action in (WIDEN, PROMOTE, ROLLBACK):
        applied = run_sync(service.step(ctx, rs, decision.action, "; ".join(decision.reasons)))
    else:
        _note_check(ctx, rs, decision)
    _record(home, config_dir, serving, rs, decision, now)
    log.info("rollout %s: %s", rs.ref, decision.sentence)
    return {"rollout": rs.ref, "action": decision.action, "reasons": list(decision.reasons),
            "applied": applied is not None}  # fmt: skip


def _note_check(ctx: Any, rs: RolloutState, decision: Decision) -> None:
    """Keep the last check in the rollout file (under the change lock, and only if the rollout has not moved)."""
    lock = ctx.store.change_lock()
    lock.acquire(timeout=60)
    try:
        current = rollout_state.load(ctx.store)
        if current is None or (current.ref, current.step, current.status) != (rs.ref, rs.step, rs.status):
            return
        check = Step(ts=clock.now().isoformat(), action="check", percent=rs.percent, actor=ACTOR,
                     reason=decision.sentence)  # fmt: skip
        rollout_state.save(ctx.store, current.model_copy(update={"last_check": check}))
    finally:
        lock.release()


def _record(
    home: Home, config_dir: Path, serving: ServingConfig, rs: RolloutState, decision: Decision, now: datetime
) -> None:
    """The check as a verdict row and a log line; a rollback also goes to the alert webhook."""
    from monitoring.alerts import Alarm, payload, post_alarms
    from monitoring.schedule import monitoring_config

    store = open_event_log(event_log_url(serving, home))
    try:
        run_id = uuid.uuid4().hex
        ts = utc_now()
        store.record_verdicts([MonitorVerdict(
            run_id=run_id, ts=ts, job=JOB, scope=rs.canary_arm, check=f"step.{decision.action.replace(' ', '_')}",
            alarm=decision.action == ROLLBACK, window_start=rs.started, window_end=now.isoformat(),
            score=decision.percent, threshold=None, detail=f"{rs.ref}: {decision.sentence}"[:1000],
        )])  # fmt: skip
        level = "WARNING" if decision.action == ROLLBACK else "INFO"
        store.record_logs([LogRecord(ts=ts, component=COMPONENT, level=level,
                                     message=f"rollout {rs.ref}: {decision.sentence}"[:2000])])  # fmt: skip
        if decision.action == ROLLBACK:
            cfg = monitoring_config(Path(config_dir))
            alarm = Alarm("rollout", rs.canary_arm, "rollback", None, None, decision.sentence)
            post_alarms(cfg.alerts, payload(run_id, ts, (rs.started, now.isoformat()), [alarm], JOB))
    finally:
        store.close()
