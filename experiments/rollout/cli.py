"""`mailroute rollout start|status` and `mailroute rollback`: put a candidate in front of users as a canary, see
where it stands, or take it (or a bad champion) back. They call the running server's admin API, which applies the
change without restarting anything (`experiments.rollout.service`); the rollout job then widens, promotes or rolls
the canary back by the rule of `configs/experiments.yaml`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from serving.commands import DEFAULT_URL, JsonOption, UrlOption

app = typer.Typer(help="canary rollouts of a new model version")


def _client(url: str, what: str) -> Any:
    from serving.client import admin_client

    return admin_client(url, needed_for=what)


def _describe(rollout: dict[str, Any] | None) -> list[str]:
    if rollout is None:
        return ["no rollout has been started"]
    r = rollout
    lines = [
        f"rollout of {r['model']}:{r['candidate']} replacing {r['model']}:{r['previous']} on arm {r['arm']}: "
        f"{r['status']}"
        + (
            f", {r['steps'][r['step']]:g}% of {r['arm']}'s users on {r['canary_arm']}"
            if r["status"] == "running"
            else ""
        ),
        "  steps: " + " -> ".join(f"{s:g}%" for s in r["steps"]) + f"   started {r['started']}",
    ]
    for step in r.get("history", []):
        lines.append(
            f"  {step['ts']}  {step['action']:<9} {step['percent']:>5g}%  by {step['actor']}: {step['reason']}"
        )
    check = r.get("last_check")
    if check and r["status"] == "running":
        lines.append(f"  last check {check['ts']}: {check['reason']}")
    return lines


@app.command("start", help="serve VERSION to a share of the users of the arm it would replace")
def start(
    version: Annotated[str, typer.Argument(help="the candidate, e.g. linear:v2")],
    canary: Annotated[
        float | None,
        typer.Option("--canary", help="percent of the arm's users (default: the first step)", show_default=False),
    ] = None,
    arm: Annotated[str | None, typer.Option(help="the arm to replace, when several serve the model")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    if canary is not None and not 0 < canary < 100:
        raise typer.BadParameter(f"--canary {canary:g}: expected a percentage between 0 and 100 (exclusive)")
    with _client(url, "a rollout") as client:
        result = client.start_rollout(version, canary, arm)
    print("\n".join(_describe(result.get("rollout"))))


@app.command("status", help="where the rollout stands and why")
def status(url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    from serving.cli import print_json

    with _client(url, "the rollout status") as client:
        data = client.rollout()
    if as_json:
        print_json(data)
        return
    print("\n".join(_describe(data.get("rollout"))))
    arms = ", ".join(f"{a} {s['model']}:{s['version']} ({s['weight']:.3g})" for a, s in data.get("arms", {}).items())
    print(f"  arms now: {arms}")


def rollback(
    arm: Annotated[
        str | None,
        typer.Argument(help="the arm (default: the running rollout's); with no rollout, restore its previous champion"),
    ] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """End the running rollout (its users go back to the arm's version), or restore an arm's previous champion."""
    with _client(url, "a rollback") as client:
        result = client.rollback(arm)
    experiment = result.get("experiment") or {}
    arms = ", ".join(f"{a} {s['model']}:{s['version']}" for a, s in experiment.get("arms", {}).items())
    print(f"rolled back: arms now {arms}")
