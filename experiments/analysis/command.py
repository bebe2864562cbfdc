"""`mailroute experiment report`: load the configs and the running experiment, build the report, write it out.

The Typer command in `experiments/cli.py` is a thin wrapper around `report_command`, which tests call directly.
A bad `--since`/`--until` raises `ReportInputError` (one line; the CLI exits 2).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

from experiments.analysis.days import ReportInputError, parse_time
from experiments.analysis.render import counts_csv, render_html, render_text
from experiments.analysis.report import ExperimentReport, build_report
from experiments.config import load_experiments
from serving import clock
from serving.config import Home, load_queues, load_serving
from serving.store.eventlog import EventLogError
from serving.store.location import existing_event_log_url


def event_log_sql_url(home: Home) -> str:
    """The SQLAlchemy URL of the event log that `serving.yaml` names (default `<home>/events.db`)."""
    try:
        return existing_event_log_url(load_serving(), home)
    except EventLogError as err:  # an in-memory store
        raise ReportInputError(str(err)) from None


def report_command(
    home: Home,
    *,
    since: str | None = None,
    until: str | None = None,
    as_json: bool = False,
    html: Path | None = None,
    csv: Path | None = None,
    now: datetime | None = None,
    out: TextIO | None = None,
) -> ExperimentReport:
    """Build the report of the running experiment over `[since, until)` and print it (text, or JSON with
    `as_json`); `html` and `csv` also write the HTML page and the daily counts per queue."""
    from serving.ops.state import load_state_at

    out = out or sys.stdout
    now = now or clock.now()
    experiments = load_experiments()
    analysis = experiments.analysis
    url = event_log_sql_url(home)
    experiment = load_state_at(url, experiments.experiment)  # with its runtime changes (the store's layout)
    start = None if since is None else parse_time(since, analysis.zone, now, "--since")
    end = None if until is None else parse_time(until, analysis.zone, now, "--until")
    if start is not None and end is not None and end <= start:
        raise ReportInputError(f"--until ({until}) must be after --since ({since})")
    if start is not None and start >= now:
        raise ReportInputError(f"--since ({since}) is in the future")
    report = build_report(
        url,
        experiment=experiment,
        analysis=analysis,
        queues=load_queues(),
        since=start,
        until=end,
        as_of=now,
    )
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(report), encoding="utf-8")
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text(counts_csv(report), encoding="utf-8")
    out.write(report.to_json() + "\n" if as_json else render_text(report))
    return report
