"""The `mailroute analyze` group: error analysis of the event log, and the threshold what-if applied to a server.

`analyze errors` reads the home's event log and the configs and prints (or writes as JSON/HTML) where the model goes
wrong and what other confidence thresholds would have done; `analyze apply-thresholds` picks the best thresholds
from that what-if (or takes explicit ones) and sends them to the running server's PUT /v1/policy, which validates
them with the same `PolicyConfig` and writes the change to the audit log. The logic lives in
`experiments.analysis.errors` and `experiments.analysis.thresholds`; the command functions here return their
result objects, so tests call them directly. Bad arguments become `typer.BadParameter` (one line, exit 2); a
missing log or nothing to analyse is a one-line error with exit 1 (`serving.cli.main` maps both).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from serving.commands import DEFAULT_URL, JsonOption, UrlOption

if TYPE_CHECKING:
    import pandas as pd

    from experiments.analysis.config import AnalysisConfig
    from experiments.analysis.errors import ErrorAnalysis
    from experiments.analysis.thresholds import ThresholdPlan, WhatIf
    from serving.client import MailrouteClient
    from serving.config import Home, PolicyConfig, QueuesConfig

app = typer.Typer(help="error analysis and the confidence-threshold what-if, from the event log")
ArmOption = Annotated[str | None, typer.Option(help="only this arm's emails", show_default=False)]
SinceOption = Annotated[
    str | None,
    typer.Option(help="window start: ISO 8601, a local date (2026-01-31), or a span back (24h, 7d)"),
]


@dataclass(frozen=True)
class Loaded:
    """One window of the joined event log with the configs that judge it."""

    frame: pd.DataFrame
    queues: QueuesConfig
    analysis: AnalysisConfig
    as_of: datetime
    since: str | None  # as given on the command line


def _event_log_url(home: Home) -> str:
    from serving.config import load_serving
    from serving.store.location import existing_event_log_url

    return existing_event_log_url(load_serving(), home)


def load_window(home: Home, since: str | None, now: datetime | None = None) -> Loaded:
    """The configs, and the joined frame of the emails routed since `since` (all of them without)."""
    from experiments.analysis.days import ReportInputError, log_ts, parse_time
    from experiments.config import load_experiments
    from serving import clock
    from serving.config import load_queues
    from serving.store.eventlog import open_event_log

    now = now or clock.now()
    queues, analysis = load_queues(), load_experiments().analysis
    start = None if since is None else parse_time(since, analysis.zone, now, "--since")
    if start is not None and start >= now:
        raise ReportInputError(f"--since ({since}) is in the future")
    log = open_event_log(_event_log_url(home))
    try:
        frame = log.joined_frame(since=None if start is None else log_ts(start))
    finally:
        log.close()
    return Loaded(frame, queues, analysis, now, since)


def _sample(data: Loaded, arm: str | None, version: str | None = None) -> pd.DataFrame:
    """The what-if's judged emails with a probability vector; NoDataError when there are none."""
    from experiments.analysis.errors import NoDataError, prepare, what_if_sample

    judged = prepare(
        data.frame, data.queues, data.analysis, as_of=data.as_of, since=data.since, arm=arm, version=version
    )
    if not judged["judged"].any():
        raise NoDataError(f"none of the {len(judged)} emails has a verdict yet: no threshold what-if")
    sample = what_if_sample(judged)
    if sample.empty:
        raise NoDataError(
            f"none of the {int(judged['judged'].sum())} judged emails has a probability vector (fallbacks where no "
            "model answered, or logged before vectors were kept): no threshold what-if"
        )
    return sample


def errors_command(
    home: Home,
    *,
    arm: str | None = None,
    version: str | None = None,
    since: str | None = None,
    as_json: bool = False,
    html: Path | None = None,
    now: datetime | None = None,
    out: TextIO | None = None,
) -> tuple[ErrorAnalysis, WhatIf | None]:
    """The error analysis (and the what-if, when judged emails carry probability vectors), printed as text or
    JSON; `html` also writes the page."""
    from experiments.analysis import error_render
    from experiments.analysis.errors import analyze_errors, prepare, what_if_sample
    from experiments.analysis.thresholds import what_if
    from serving.config import load_serving
    from serving.ops.state import load_policy
    from serving.store.location import existing_store

    data = load_window(home, since, now)
    at = data.as_of
    judged = prepare(data.frame, data.queues, data.analysis, as_of=at, since=since, arm=arm, version=version)
    analysis = analyze_errors(judged, data.queues, data.analysis, as_of=at, since=since, arm=arm, version=version)
    sample = what_if_sample(judged)
    serving = load_serving()
    with existing_store(serving, home) as store:
        policy = serving.policy if store is None else load_policy(store, serving.policy)[0]
    w = what_if(sample, data.queues, policy) if not sample.empty else None
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(error_render.render_html(analysis, w), encoding="utf-8")
    (out or sys.stdout).write(
        error_render.to_json(analysis, w) + "\n" if as_json else error_render.render_text(analysis, w)
    )
    return analysis, w


def _current_policy(home: Home, url: str, dry_run: bool) -> tuple[PolicyConfig, str]:
    """The policy in force: the server's (when changing it), else the one `mailroute serve` would start with."""
    from serving.config import PolicyConfig, load_serving, parse_config
    from serving.ops.state import load_policy
    from serving.store.location import existing_store

    if dry_run:
        serving = load_serving()
        with existing_store(serving, home) as store:
            policy, note = (serving.policy, None) if store is None else load_policy(store, serving.policy)
        return policy, note or "current policy: serving.yaml's (dry run: the server was not asked)"
    with _admin_client(url) as client:
        return parse_config(client.policy()["policy"], PolicyConfig, f"{url} policy"), f"current policy: {url}'s"


def _admin_client(url: str) -> MailrouteClient:
    from serving.client import admin_client

    return admin_client(url, needed_for="changing the policy (or use --dry-run)")


def apply_thresholds_command(
    home: Home,
    *,
    url: str = DEFAULT_URL,
    global_only: bool = False,
    threshold: float | None = None,
    queue_specs: Sequence[str] = (),
    arm: str | None = None,
    since: str | None = None,
    dry_run: bool = False,
    as_json: bool = False,
    now: datetime | None = None,
    out: TextIO | None = None,
) -> ThresholdPlan:
    """Pick (or take) the thresholds, print them with their expected effect, and send them unless `dry_run`."""
    from experiments.analysis import error_render
    from experiments.analysis import thresholds as th
    from experiments.analysis.errors import NoDataError
    from serving.config import load_queues

    out = out or sys.stdout
    given = th.parse_queue_specs(queue_specs, load_queues().names)
    explicit = threshold is not None or bool(given)
    if threshold is not None:
        th.check_threshold(threshold)
    if global_only and given:
        raise th.ThresholdInputError("--global-only drops every per-queue threshold: it cannot be given --queue too")
    notes = []
    try:
        data = load_window(home, since, now)
        sample = _sample(data, arm)
    except (NoDataError, FileNotFoundError) as err:
        if not explicit:
            raise
        sample, notes = None, [f"no estimate: {err}"]
    current, source = _current_policy(home, url, dry_run)
    notes.append(source)
    w = None
    if explicit:
        proposed = th.explicit_policy(current, threshold=threshold, queue_thresholds=given, global_only=global_only)
    else:
        assert sample is not None
        w = th.what_if(sample, data.queues, current)
        proposed = th.choose_thresholds(w, current, global_only=global_only)
    result = th.plan("explicit" if explicit else "what-if", current, proposed, sample, load_queues(), notes)
    if as_json:
        out.write(json.dumps({**result.to_dict(), "what_if": w and w.to_dict()}, indent=2, allow_nan=False) + "\n")
    else:
        out.write("\n".join([*error_render.what_if_text(w), "", ""]) if w else "")
        out.write(error_render.plan_text(result, dry_run))
    if not dry_run and result.changed:
        with _admin_client(url) as client:
            client.change_policy(result.change())
        if not as_json:
            out.write(f"applied at {url} (recorded in the server's audit log)\n")
    return result


@app.command("errors", help="confusion, frequent misroutes, accuracy by confidence, and the threshold what-if")
def errors(
    ctx: typer.Context,
    arm: ArmOption = None,
    version: Annotated[
        str | None, typer.Option(help="only this model version: name:vN, or vN", show_default=False)
    ] = None,
    since: SinceOption = None,
    html: Annotated[Path | None, typer.Option(help="also write a self-contained HTML page here")] = None,
    as_json: JsonOption = False,
) -> None:
    from serving.cli import options

    with _usage_errors():
        errors_command(options(ctx).resolve_home(), arm=arm, version=version, since=since, as_json=as_json, html=html)


@app.command("apply-thresholds", help="send the what-if's best thresholds (or given ones) to the running server")
def apply_thresholds(
    ctx: typer.Context,
    url: UrlOption = DEFAULT_URL,
    global_only: Annotated[bool, typer.Option("--global-only", help="one global threshold, no per-queue ones")] = False,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="this global threshold instead of the what-if's")
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", metavar="QUEUE=T", help="this queue's threshold (repeatable)", show_default=False),
    ] = None,
    arm: ArmOption = None,
    since: SinceOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be applied, send nothing")] = False,
    as_json: JsonOption = False,
) -> None:
    from serving.cli import options

    with _usage_errors():
        apply_thresholds_command(
            options(ctx).resolve_home(), url=url, global_only=global_only, threshold=threshold,
            queue_specs=queue or (), arm=arm, since=since, dry_run=dry_run, as_json=as_json,
        )  # fmt: skip


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Bad arguments (a time, a filter, a threshold spec) as typer.BadParameter: one line, exit 2."""
    from experiments.analysis.days import ReportInputError
    from experiments.analysis.errors import AnalysisInputError
    from experiments.analysis.thresholds import ThresholdInputError

    try:
        yield
    except (ReportInputError, AnalysisInputError, ThresholdInputError) as err:
        raise typer.BadParameter(str(err)) from None
