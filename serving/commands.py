"""Serving's commands: `mailroute serve`, `models list|show|promote`, `replay`, `log stats`, `tokens`.

The registry commands read the registry folder directly (no server needed); `serve` starts Ray Serve and blocks;
`replay` plays a labelled file against a running server. Each command imports what it needs in its body, so
`mailroute models list` pays for neither Ray nor torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from serving.cli import options, print_json

if TYPE_CHECKING:
    from serving.models.registry import ModelRegistry

app = typer.Typer()
models_app = typer.Typer(help="the model registry")
log_app = typer.Typer(help="the event log")
tokens_app = typer.Typer(help="access tokens in the secrets file (client, agent, admin); no restart needed")
app.add_typer(models_app, name="models")
app.add_typer(log_app, name="log")
app.add_typer(tokens_app, name="tokens")

JsonOption = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
UrlOption = Annotated[str, typer.Option(help="the running service")]
DEFAULT_URL = "http://127.0.0.1:8000"


class FeedbackSource(str, Enum):
    agent = "agent"
    audit = "audit"
    labelling = "labelling"


# ---- registry ------------------------------------------------------------------------------------------------
def _registry(ctx: typer.Context) -> ModelRegistry:
    from serving.models.registry import open_registry

    return open_registry(options(ctx).resolve_home())


@models_app.command("list", help="list registered versions")
def models_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="only this model's versions", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    from serving.models.registry import VersionInfo

    rows = []
    for item in _registry(ctx).versions(name):
        if isinstance(item, VersionInfo):
            m = item.meta
            rows.append(
                {
                    "model": f"{m.name}:{m.version}",
                    "kind": m.kind,
                    "stage": item.stage,
                    "created": m.created,
                    "labels": len(m.labels),
                    "accuracy": m.metrics.get("accuracy"),
                    "macro_f1": m.metrics.get("macro_f1"),
                }
            )
        else:
            rows.append({"model": f"{item[0]}:{item[1]}", "stage": "corrupt", "error": item[2]})
    if as_json:
        print_json(rows)
    elif not rows:
        print("no models registered yet (train one: mailroute train linear --data PATH)")
    else:
        for row in rows:
            if row["stage"] == "corrupt":
                print(f"{row['model']:<24} CORRUPT  {row['error']}")
            else:
                print(
                    f"{row['model']:<24} {row['kind']:<12} {row['stage']:<10} {row['created']}  "
                    f"labels {row['labels']:<3} accuracy {row['accuracy']}  macro-F1 {row['macro_f1']}"
                )


@models_app.command("show", help="show one version")
def models_show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="name, name:champion, name:canary, name:latest or name:vN")],
    as_json: JsonOption = False,
) -> None:
    info = _registry(ctx).get(model, verify=True)
    data = {**info.meta.to_json(), "stage": info.stage, "path": str(info.path)}
    if as_json:
        print_json(data)
        return
    data.pop("files")
    warnings = data.pop("warnings")
    for key, value in data.items():
        print(f"{key}: {value}")
    for warning in warnings:
        print(f"WARNING: {warning}")


@models_app.command(
    "promote",
    help="mark a version champion (or canary) in the registry only; the running app keeps the versions it pinned "
    "(put a version in front of users with: mailroute rollout start)",
)
def models_promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="name:vN, name:latest, ...")],
    stage: Annotated[Literal["champion", "canary"], typer.Option()] = "champion",
) -> None:
    from experiments.rollout import state as rollout_state
    from serving.config import load_serving
    from serving.store.location import existing_store

    with existing_store(load_serving(), options(ctx).resolve_home()) as store:
        rollout = None if store is None else rollout_state.load(store)
    if rollout is not None and rollout.running and model.partition(":")[0] == rollout.model:
        raise ValueError(
            f"a rollout of {rollout.ref} is running: it promotes the candidate itself, or `mailroute rollback` ends it"
        )
    info = _registry(ctx).promote(model, stage)
    print(f"{info.meta.name}:{info.meta.version} is now {info.stage}")


# ---- serving -------------------------------------------------------------------------------------------------
@app.command("serve", help="serve the A/B experiment over HTTP (local Ray, or $RAY_ADDRESS)")
def serve(
    ctx: typer.Context,
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default: serving.yaml's, 8000)", show_default=False)
    ] = None,
    exit_after_start: Annotated[bool, typer.Option("--exit-after-start", hidden=True)] = False,
) -> None:
    import signal
    import time

    from experiments.config import load_experiments
    from serving.config import load_queues, load_serving
    from serving.ops import launch

    queues, serving = load_queues(), load_serving()
    experiment = load_experiments().experiment

    running = launch.start(options(ctx).resolve_home(), queues, serving, experiment, port=port)

    def terminate(signum: int, frame: object) -> None:  # SIGTERM stops as cleanly as Ctrl-C: no orphan proxy
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # after ray.init, which installs a handler of its own
    print(f"mailroute serving at {running.url} ({running.proxy} proxy); Ctrl-C stops", flush=True)
    if exit_after_start:
        launch.stop(running.started_ray)
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping (flushing the event log)...", file=sys.stderr)
        launch.stop(running.started_ray)


@app.command(
    "replay", help="send a labelled file's emails (and labels as feedback) to a server, as a mail gateway would"
)
def replay(
    data: Annotated[Path, typer.Option(help="CSV, JSONL, mbox or .eml folder")],
    label_col: Annotated[str, typer.Option(help="column holding the true queue")] = "label",
    url: UrlOption = DEFAULT_URL,
    n: Annotated[int, typer.Option("--n", help="at most this many emails (0: all)")] = 0,
    feedback: Annotated[
        bool, typer.Option("--feedback", help="send each label back as agent feedback, as a helpdesk would")
    ] = False,
    feedback_source: Annotated[
        FeedbackSource,
        typer.Option(
            help="what the feedback stands for: agent (corrections, as agents send them), audit (every email "
            "reviewed, the unbiased sample), labelling"
        ),
    ] = FeedbackSource.agent,
) -> None:
    from serving.client import MailrouteClient, env_token
    from training.data import read_dataset

    loaded = read_dataset(data, label_col=label_col, require_labels=feedback)
    frame = loaded.frame.head(n) if n else loaded.frame
    routed = correct = triaged = 0
    with MailrouteClient(url, retries=3, token=env_token()[0]) as client:
        for row in frame.itertuples():
            user = str(row.user_id or f"replay-{row.Index}")
            answer = client.route(user, subject=str(row.subject), body=str(row.body), email_id=str(row.email_id))
            routed += 1
            triaged += answer["queue"] == "triage"
            correct += answer["queue"] == row.label
            if feedback:
                client.feedback(
                    answer["request_id"], str(row.label), handling_seconds=30.0, source=feedback_source.value
                )
    auto = routed - triaged
    print(f"routed {routed} emails: {auto} auto-routed ({correct} to the right queue), {triaged} to triage"
          + (f"; sent {routed} feedback records" if feedback else ""))  # fmt: skip


@log_app.command("stats", help="count logged emails by arm, queue and fallback reason")
def log_stats(ctx: typer.Context, as_json: JsonOption = False) -> None:
    from serving.config import load_serving

    home = options(ctx).resolve_home()
    from serving.store.location import open_existing_event_log

    stats = open_existing_event_log(load_serving(), home).stats()
    data: dict[str, Any] = {"predictions": stats.predictions, "feedback": stats.feedback, "by_arm": stats.by_arm,
            "by_queue": stats.by_queue, "by_fallback_reason": stats.by_fallback_reason,
            "feedback_accuracy": stats.feedback_accuracy}  # fmt: skip
    if as_json:
        print_json(data)
        return
    print(f"{stats.predictions} routed emails, {stats.feedback} with feedback")
    for key in ("by_arm", "by_queue", "by_fallback_reason"):
        print(
            f"  {key.removeprefix('by_')}: " + (", ".join(f"{k} {v}" for k, v in sorted(data[key].items())) or "none")
        )
    if stats.feedback_accuracy is not None:
        print(f"  accuracy on feedback: {stats.feedback_accuracy:.4f}")


# ---- access tokens ---------------------------------------------------------------------------------------------
class RoleName(str, Enum):
    client = "client"
    agent = "agent"
    admin = "admin"


def _secrets_path(ctx: typer.Context) -> Path:
    from serving.auth import secrets_path
    from serving.config import load_serving

    return secrets_path(load_serving(), options(ctx).resolve_home())


@tokens_app.command("add", help="make a token for a holder (replacing its old one) and print it once")
def tokens_add(
    ctx: typer.Context,
    holder: Annotated[str, typer.Option(help="who holds it: a client system, an agent, an admin")],
    role: Annotated[RoleName, typer.Option(help="what it may do")],
) -> None:
    from serving.auth import add_token

    path = _secrets_path(ctx)
    token = add_token(path, holder, role.value)
    print(token)
    print(f"{holder} ({role.value}): token written to {path} as its SHA-256; it is shown only now", file=sys.stderr)


@tokens_app.command("revoke", help="remove a holder's token; running servers stop accepting it within a second")
def tokens_revoke(ctx: typer.Context, holder: Annotated[str, typer.Option(help="whose token")]) -> None:
    from serving.auth import revoke_token

    path = _secrets_path(ctx)
    in_env = holder in _env_tokens()
    if not revoke_token(path, holder):
        where = " (its token comes from the environment: remove the variable and restart)" if in_env else ""
        raise typer.BadParameter(f"{path} has no token for '{holder}'{where}", param_hint="--holder")
    print(f"revoked the token of {holder}")
    if in_env:  # the file's token shadowed the environment's: that one is valid again
        print(f"warning: {holder} also has a token in the environment, valid again until the variable is removed and "
              "the servers restarted", file=sys.stderr)  # fmt: skip


@tokens_app.command("list", help="the holders and their roles (never the tokens)")
def tokens_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    from serving.auth import read_secrets

    tokens = read_secrets(_secrets_path(ctx)).tokens
    rows = {holder: {"role": spec.role, "from": "environment"} for holder, spec in _env_tokens().items()}
    rows.update({holder: {"role": spec.role, "from": "file"} for holder, spec in tokens.items()})  # the file wins
    if as_json:
        print_json(dict(sorted(rows.items())))
        return
    for holder, row in sorted(rows.items()):
        print(f"{holder}\t{row['role']}\t{row['from']}")


def _env_tokens() -> dict[str, Any]:
    """The tokens this process's environment gives (the servers started from the same environment see them)."""
    import os

    from serving.auth import env_tokens
    from serving.config import load_serving

    serving = load_serving()
    return env_tokens(os.environ, serving.auth.token_env_prefix, serving.admin_token_env)
