"""The `mailroute experiment` group: read and change the experiment a running server serves.

The whole group lives here, next to the experiment's config and assignment, so that commands about the experiment
(`report` and later ones) join `show`, `set-weights` and `stop` in one module whatever they read: these three talk
to the server's admin API through `serving.client` (imported in their bodies), a report reads the event log.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.commands import DEFAULT_URL, JsonOption, UrlOption

if TYPE_CHECKING:
    from serving.client import MailrouteClient

app = typer.Typer(help="read or change the running experiment")
NameOption = Annotated[str | None, typer.Option(help="experiment name (default: the running one)", show_default=False)]


def _admin_client(url: str, needed_for: str | None = None) -> MailrouteClient:
    from serving.client import admin_client

    return admin_client(url, needed_for=needed_for)


@app.command("show", help="show the running experiment")
def show(url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    from serving.cli import print_json

    with _admin_client(url) as client:
        data = client.experiment()
    if as_json:
        print_json(data)
        return
    exp = data["experiment"]
    print(f"experiment {exp['name']} ({'active' if exp['active'] else 'stopped'}), coverage {exp['coverage']}")
    for arm, spec in exp["arms"].items():
        print(f"  {arm:<14} {spec['model']}:{spec['version']:<10} weight {spec['weight']}")
    print("  ranges: " + ", ".join(f"{r['arm']} [{r['start']:.4f}, {r['end']:.4f})" for r in data["ranges"]))


def _parse_weights(items: list[str]) -> list[str]:
    for item in items:
        arm, sep, value = item.partition("=")
        try:
            float(value)
        except ValueError:
            sep = ""
        if not sep or not arm:
            raise typer.BadParameter(f"expected ARM=WEIGHT, got '{item}'")
    return items


@app.command("set-weights", help="change arm weights (admin token from env)")
def set_weights(
    weights: Annotated[
        list[str],
        typer.Argument(metavar="ARM=WEIGHT", help="weights sum to 1", callback=_parse_weights, show_default=False),
    ],
    url: UrlOption = DEFAULT_URL,
    name: NameOption = None,
) -> None:
    arms = {arm: float(value) for arm, _, value in (item.partition("=") for item in weights)}
    with _admin_client(url, "changing weights") as client:
        name = name or client.experiment()["experiment"]["name"]
        result = client.change_experiment(name, {"arms": arms})
    print(f"experiment {name}: weights {arms}; {result['moved_share']:.2%} of users changed arm")


@app.command("stop", help="stop the experiment: everyone gets the holdout arm")
def stop(url: UrlOption = DEFAULT_URL, name: NameOption = None) -> None:
    with _admin_client(url, "stopping the experiment") as client:
        name = name or client.experiment()["experiment"]["name"]
        client.change_experiment(name, {"active": False})
    print(f"experiment {name} stopped: every user is served by the holdout arm")


@app.command("report", help="KPIs, intervals, SRM, guardrails and a recommendation, from the event log")
def report(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="window start: ISO 8601, a local date (2026-01-31), or a span back (24h, 7d)"),
    ] = None,
    until: Annotated[str | None, typer.Option(help="window end (exclusive), same forms; default now")] = None,
    as_json: JsonOption = False,
    html: Annotated[Path | None, typer.Option(help="also write a self-contained HTML page here")] = None,
    csv: Annotated[Path | None, typer.Option(help="also write the daily counts per queue as CSV here")] = None,
) -> None:
    from experiments.analysis.command import report_command
    from experiments.analysis.days import ReportInputError
    from serving.cli import options

    try:
        report_command(options(ctx).resolve_home(), since=since, until=until, as_json=as_json, html=html, csv=csv)
    except ReportInputError as err:
        raise typer.BadParameter(str(err)) from None
