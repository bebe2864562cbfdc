"""`mailroute retrain [--model linear|transformer|all|NAME]`: retrain from the feedback in the event log.

Progress goes to stderr, a line per stage with counts and times; stdout gets the side-by-side evaluation and, as
its last line, the registered candidate (`linear:v2`) for scripts to pass to `mailroute rollout start`. Exit codes:
0 a candidate was registered (for every model asked), 3 the gate registered nothing (the candidate did not beat the
champion), 1 a data check stopped the retrain (the report names each failed check), 2 bad arguments or configs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli import options, print_json

if TYPE_CHECKING:
    from serving.store.eventlog import EventLog
    from training.retrain.job import RetrainOutcome

EXIT_NOT_BETTER = 3


def _models(which: str, store: EventLog) -> list[str]:
    """The registry names to retrain: one, or every model an arm of the running experiment serves."""
    if which != "all":
        return [which]
    from experiments.config import load_experiments
    from serving.ops.state import load_state

    experiment = load_state(store, load_experiments().experiment)
    suffix = load_experiments().rollout.canary_suffix
    return sorted({spec.model for arm, spec in experiment.arms.items() if not arm.endswith(suffix)})


def _print(outcome: RetrainOutcome) -> None:
    print(f"{outcome.model}: candidate vs champion {outcome.champion} on the same held-out emails")
    print(f"  {'slice':<8} {'emails':>6}  {'accuracy':>17}  {'macro-F1':>17}  {'net saving min/email':>21}")
    for name, pair in outcome.evaluation.items():
        ours, theirs = pair["candidate"], pair["champion"]
        if not ours.n:
            continue

        def both(a: float | None, b: float | None) -> str:
            return "n/a" if a is None or b is None else f"{a:.4f} vs {b:.4f}"

        acc, f1 = both(ours.accuracy, theirs.accuracy), both(ours.macro_f1, theirs.macro_f1)
        print(f"  {name:<8} {ours.n:>6}  {acc:>17}  {f1:>17}  {both(ours.net_saving, theirs.net_saving):>21}")
    for note in outcome.details.get("notes", []):
        print(f"  note: {note}")
    print(f"  gate: {outcome.gate.reason}")


def retrain(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option(help="linear, transformer, all (every model an arm serves), or a registry model name")
    ] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="print the outcomes as JSON")] = False,
) -> None:
    """Retrain from the base data and the agents' feedback; register the candidate only if it beats the champion."""
    from monitoring.job import open_job_event_log
    from serving.config import load_queues, load_serving
    from serving.ops.state import load_policy
    from training.config import load_training
    from training.retrain.job import NotRetrainable, RetrainStopped, retrain_model

    home = options(ctx).resolve_home()
    cfg, queues, serving = load_training(), load_queues(), load_serving()
    from serving.store.location import event_log_url, is_missing

    if is_missing(event_log_url(serving, home)):
        raise FileNotFoundError(
            f"no event log at {home.event_log}: nothing was routed yet, so no feedback to learn from"
        )
    store = open_job_event_log(home, serving)
    outcomes = []
    try:
        policy, _ = load_policy(store, serving.policy)
        for name in _models(model, store):
            try:
                outcomes.append(retrain_model(home, store, name, cfg, queues, policy,
                                              progress=lambda line: print(line, file=sys.stderr, flush=True),
                                              show_ray_logs=options(ctx).verbose))  # fmt: skip
            except NotRetrainable as why:
                if model != "all":
                    raise
                print(f"{name}: skipped: {why}", file=sys.stderr)  # "all" means every model that learns
            except RetrainStopped as stopped:
                print(f"{name}: data checks", file=sys.stderr)
                print("\n".join([*stopped.report.lines(), *(f"  note: {n}" for n in stopped.notes)]), file=sys.stderr)
                for outcome in outcomes:  # the models retrained before this one keep their candidates
                    print(outcome.candidate or f"no {outcome.model} candidate registered")
                raise
    finally:
        store.close()
    if as_json:
        print_json([o.to_json() for o in outcomes])
    else:
        for outcome in outcomes:
            _print(outcome)
        for outcome in outcomes:
            print(outcome.candidate or f"no {outcome.model} candidate registered")
    if any(o.candidate is None for o in outcomes):
        raise typer.Exit(EXIT_NOT_BETTER)
