"""The demo's closing summary. Every figure comes from the code behind `mailroute experiment report`
(`experiments.analysis.report.build_report`) over the demo's phases, from the registry and from the monitoring
verdicts in the event log: nothing is computed by the demo itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from experiments.analysis.report import build_report
from experiments.config import ExperimentsFile
from serving.config import Home, QueuesConfig
from serving.models.registry import VersionInfo, open_registry
from serving.ops.state import load_state_at
from serving.store.eventlog import open_event_log


@dataclass(frozen=True)
class Phase:
    name: str
    since: datetime
    until: datetime


def _interval(v: object) -> str:
    est, lo, hi = (getattr(v, k, None) for k in ("estimate", "lo", "hi"))
    if est is None:
        return "n/a"
    return f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else f"{est:+.2f}"


def _share(v: object) -> str:
    est = getattr(v, "estimate", None)
    return "n/a" if est is None else f"{est:.1%}"


def summary(home: Home, files: ExperimentsFile, queues: QueuesConfig, phases: list[Phase], url: str) -> list[str]:
    store_url = f"sqlite:///{home.event_log}"
    experiment = load_state_at(store_url, files.experiment)
    lines = ["== what the loop did, from the event log (experiments.analysis.report, as `mailroute experiment report`)"]
    for phase in phases:
        report = build_report(store_url, experiment=experiment, analysis=files.analysis, queues=queues,
                              since=phase.since, until=phase.until, as_of=phase.until)  # fmt: skip
        lines.append(f"-- {phase.name}: {phase.since:%a %d %b %H:%M} to {phase.until:%a %d %b %H:%M} (simulated)")
        for g in sorted(report.versions, key=lambda g: (g.arm, g.key)):
            v = g.values
            lines.append(
                f"   {g.arm:<14} {g.key:<16} {g.emails:>6} emails  accuracy {_share(v['accuracy']):>6}  "
                f"auto-routed {_share(v['auto_route_coverage']):>6}  net saving {_interval(v['net_saving'])} min/email"
            )
    whole = build_report(store_url, experiment=experiment, analysis=files.analysis, queues=queues,
                         since=phases[0].since, until=phases[-1].until, as_of=phases[-1].until)  # fmt: skip
    total = sum(g.values["net_saving_total"].estimate or 0.0 for g in whole.arms)
    hours = total / 60
    money = hours * queues.agent_cost_per_hour
    lines.append(
        f"-- net saving over the whole run: {total:,.0f} agent minutes ({hours:,.1f} h, "
        f"{money:,.0f} {queues.currency}) "
        f"on {sum(g.emails for g in whole.arms):,} emails, net of misroutes and triage"
    )
    lines.append(f"-- experiment report says: {whole.recommendation.sentence}")
    store = open_event_log(store_url)
    try:
        alarms = [v for v in store.verdicts(job="drift", limit=2000) if v.alarm]
    finally:
        store.close()
    if alarms:
        first = min(alarms, key=lambda v: v.ts)
        checks = sorted({f"{v.scope}/{v.check}" for v in alarms if v.run_id == first.run_id})
        more = f" and {len(checks) - 5} more" if len(checks) > 5 else ""
        lines.append(
            f"-- drift: the scheduled monitoring run of {first.ts[:16]} alarmed on {', '.join(checks[:5])}{more}"
        )
    else:
        lines.append("-- drift: no monitoring run alarmed")
    lines.append("-- versions and lineage (mailroute models list / show):")
    for item in open_registry(home).versions():
        if isinstance(item, VersionInfo):
            m = item.meta
            gate = m.metrics.get("gate") or {}
            extra = f", gate: {gate.get('reason')}" if gate else ""
            lines.append(f"   {m.name}:{m.version:<4} {item.stage:<9} parent {m.parent or '-':<12} "
                         f"data {m.data_fingerprint[:19]}{extra}")  # fmt: skip
    lines.append(f"-- reports: {home.reports}   event log (with the audit log and the saved layout): {home.event_log}")
    lines.append(f"-- dashboard: {url}/dashboard (labelling: {url}/dashboard/label)")
    return lines
