"""The `mailroute monitor` group: drift and quality monitoring of the event log.

`monitor run` is one run (monitoring.job); its exit code tells a scheduler what it found: 0 no alarm, 3 drift or a
quality alarm, 2 bad arguments or config (a malformed monitoring.yaml, a missing --reference version), 1 a planned
check could not be computed (and nothing alarmed) or any other failure. `monitor schedule` repeats it
(monitoring.schedule) without a server. Commands import Evidently and pandas in their bodies, which keeps
`mailroute --help` fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from serving.commands import JsonOption

app = typer.Typer(help="drift and quality monitoring")

WindowOption = Annotated[
    str | None, typer.Option(help="window of the event log ending now: 30m, 24h, 7d (default: monitoring.yaml)")
]


def _duration(value: str | None, flag: str) -> float | None:
    from serving.clock import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=flag) from None


@app.command("run", help="one monitoring run over a window; exit 3 when a check alarms")
def run(
    ctx: typer.Context,
    window: WindowOption = None,
    as_json: JsonOption = False,
    reference: Annotated[
        str | None,
        typer.Option(help="compare every scope with this version's reference (name:vN) instead of the serving ones"),
    ] = None,
) -> None:
    from datetime import timedelta

    from monitoring.job import EXIT_USAGE, configured_arms, configured_triage_queue, run_monitoring
    from monitoring.schedule import monitoring_config
    from serving.cli import options, print_json
    from serving.config import config_dir, load_serving
    from serving.models.registry import RegistryError

    seconds = _duration(window, "--window")
    cfg, serving = monitoring_config(config_dir()), load_serving()
    home = options(ctx).resolve_home()
    from serving.store.location import existing_event_log_url

    existing_event_log_url(serving, home)  # a wrong --home must not pass as "no alarm"
    try:
        result = run_monitoring(
            home, cfg, serving, window=None if seconds is None else timedelta(seconds=seconds),
            reference=reference, arms=configured_arms(config_dir()), triage_queue=configured_triage_queue(config_dir()),
        )  # fmt: skip
    except RegistryError as err:
        print(f"mailroute monitor run: {err}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        print_json(result.to_json())
    else:
        _print(result)
    if result.failure is not None:
        print(f"mailroute monitor run: {result.failure}", file=sys.stderr)
    from monitoring.schedule import prune_component_logs

    prune_component_logs(home, serving, cfg.retention.logs_days)  # as a scheduled run does (cron users too)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _print(result: object) -> None:
    from monitoring.job import RunResult

    assert isinstance(result, RunResult)
    state = f"{len(result.alarms)} alarm(s)" if result.alarms else "no alarm"
    print(f"monitoring run {result.run_id[:8]}: {result.window_start} .. {result.window_end}: {state}")
    for v in result.verdicts:
        mark = "ALARM" if v.alarm else ("skip " if v.score is None and v.check != "window" else "ok   ")
        print(f"  {mark} {v.scope:<12} {v.check:<28} {v.detail}")
    for path in result.reports:
        print(f"  report: {path}")
    print(f"  summary: {result.summary}")
    if result.alert is not None:
        print(f"  webhook: {'sent' if result.alert.sent else result.alert.error or 'no URL configured'}")


@app.command(
    "schedule",
    help="run the monitoring job (every --every) and the KPI report (every schedule.kpi_report_every) without the "
    "server, the first runs at once; Ctrl-C stops",
)
def schedule(
    ctx: typer.Context,
    every: Annotated[str | None, typer.Option(help="interval: 15m, 1h (default: monitoring.yaml)")] = None,
) -> None:
    from monitoring.schedule import JobState, monitoring_config, run_forever
    from serving.cli import options
    from serving.config import config_dir, load_serving

    _duration(every, "--every")
    cfg = monitoring_config(config_dir())  # a malformed file fails here, once, with exit 2
    serving = load_serving()
    interval = every or cfg.schedule.monitor_every

    def report(states: dict[str, JobState]) -> None:
        state = states.get("monitor")
        if state is not None:
            last = f"last run {state.last_ok}" if state.last_error is None else f"last failure: {state.last_error}"
            print(f"monitor: {state.runs} runs, {state.failures} failed; {last}; next in {interval}", flush=True)

    print(f"monitoring every {interval} (Ctrl-C stops)", flush=True)
    try:
        run_forever(options(ctx).resolve_home(), config_dir(), serving, every=every, on_run=report)
    except KeyboardInterrupt:
        raise  # the entry point says "interrupted" and exits 130
