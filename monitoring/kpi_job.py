"""The scheduled KPI report: `experiments.analysis.report.build_report` run by the scheduler beside the monitoring
job.

Each run writes `<home>/reports/experiments/<stamp>-kpi.{json,html}` (the last `retention.kpi` kept), records the
SRM check and every guardrail as verdict rows of job "kpi" (scope: the arm, or "all" for SRM), and posts an SRM
alarm or a broken guardrail to the webhook. The report covers the experiment since its first logged email, which
is what its always-valid intervals are built for.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig
from monitoring import reports
from monitoring.alerts import Alarm, payload, post_alarms
from monitoring.config import MonitoringConfig
from serving import clock
from serving.config import Home, ServingConfig
from serving.store.eventlog import LogRecord, MonitorVerdict, open_event_log, utc_now
from serving.store.location import event_log_url, is_missing

JOB = "kpi"
COMPONENT = "monitor"  # the scheduled jobs' component in the store's log records


def kpi_dir(home: Home) -> Path:
    return reports.monitoring_dir(home.reports).parent / "experiments"


def latest_report_file(home: Home) -> Path | None:
    """The newest report the KPI job wrote (file names start with the run's UTC stamp, so they sort by time)."""
    files = sorted(kpi_dir(home).glob("*-kpi.json")) if kpi_dir(home).is_dir() else []
    return files[-1] if files else None


def run_kpi_report(
    home: Home,
    config_dir: Path,
    serving: ServingConfig,
    cfg: MonitoringConfig,
    *,
    now: datetime | None = None,
    experiment: ExperimentConfig | None = None,
) -> dict[str, Any] | None:
    """One KPI report of `experiment` (None: experiments.yaml's, with its saved runtime state); None when there is
    nothing to report on (no log file yet, or an in-memory log)."""
    from experiments.analysis.render import render_html
    from experiments.analysis.report import build_report
    from experiments.config import load_experiments
    from serving.config import load_queues
    from serving.ops.state import load_state_at

    url = event_log_url(serving, home)
    if url == "memory://" or is_missing(url):
        return None
    now = now or clock.now()
    experiments = load_experiments(Path(config_dir) / "experiments.yaml")
    experiment = experiment or load_state_at(url, experiments.experiment)
    report = build_report(
        url, experiment=experiment, analysis=experiments.analysis, queues=load_queues(Path(config_dir) / "queues.yaml"),
        as_of=now,
    )  # fmt: skip
    run_id = uuid.uuid4().hex
    stem = kpi_dir(home) / f"{reports.stamp(now)}-{run_id[:8]}-kpi"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(report.to_json(), encoding="utf-8")
    stem.with_suffix(".html").write_text(render_html(report), encoding="utf-8")
    reports.prune(stem.parent, cfg.retention.kpi)
    html = str(stem.with_suffix(".html"))
    window = (report.since or now.isoformat(), now.isoformat())
    verdicts, alarms = _verdicts(report, run_id, window, html)
    store = open_event_log(url)
    try:
        store.record_verdicts(verdicts)

        def warn(message: str) -> None:  # a webhook that stays down: a log record the dashboard shows
            store.record_logs([LogRecord(ts=utc_now(), component=COMPONENT, level="WARNING", message=message)])

        alert = post_alarms(cfg.alerts, payload(run_id, utc_now(), window, alarms, JOB), warn=warn) if alarms else None
    finally:
        store.close()
    return {"run_id": run_id, "report": html, "alarms": [f"{a.scope}/{a.check}" for a in alarms],
            "alert_sent": None if alert is None else alert.sent}  # fmt: skip


def _verdicts(report: Any, run_id: str, window: tuple[str, str], html: str) -> tuple[list[MonitorVerdict], list[Alarm]]:
    ts = utc_now()
    verdicts, alarms = [], []
    srm = report.srm
    if srm is not None:
        verdicts.append(MonitorVerdict(run_id=run_id, ts=ts, job=JOB, scope="all", check="srm", alarm=bool(srm.alarm),
                                       window_start=window[0], window_end=window[1], score=srm.p_value,
                                       threshold=None, report=html, detail=srm.note or None))  # fmt: skip
        if srm.alarm:
            alarms.append(Alarm("srm", "all", "srm", srm.p_value, None, srm.note, html))
    for g in report.guardrails:
        broken = g.status == "broken"
        verdicts.append(MonitorVerdict(run_id=run_id, ts=ts, job=JOB, scope=g.arm, check=f"guardrail.{g.name}",
                                       alarm=broken, window_start=window[0], window_end=window[1], score=g.value,
                                       threshold=g.threshold, report=html, detail=g.text))  # fmt: skip
        if broken:
            alarms.append(Alarm("guardrail", g.arm, g.name, g.value, g.threshold, g.text, html))
    return verdicts, alarms
