"""`mailroute privacy export|delete|retain`: a user's records and text retention (docs/privacy.md).

The commands work on the home's event log directly, with or without a running server, and refuse a log that does not
exist (a wrong --home must not look like a user with no records). A user with no records is not an error: the command
says so and exits 0 (an export with --out still writes its empty file). Each run is audited in the event store.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli import options, print_json
from serving.commands import JsonOption

if TYPE_CHECKING:
    from serving.config import Home
    from serving.store.eventlog import EventLog

app = typer.Typer(help="a user's records in the event log (export, delete) and text retention")
UserIdOption = Annotated[str, typer.Option("--user-id", help="the user id clients send as user_id", show_default=False)]
SaltFileOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--salt-file",
        metavar="FILE",
        help="a file holding an earlier user salt, still in force during the retention window (repeatable): the "
        "user's pseudonym under it is looked up too",
        show_default=False,
    ),
]
ActorOption = Annotated[str | None, typer.Option("--actor", help="who asks, for the audit log (default: $USER)")]


def _actor(given: str | None) -> str:
    if given:
        return given
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "cli"


@contextmanager
def _user_store(
    ctx: typer.Context, user_id: str, salt_files: list[Path] | None
) -> Iterator[tuple[Home, EventLog, tuple[str, ...]]]:
    """The home, its open event log and the user's pseudonyms under the current salt and each older one given."""
    from serving.config import load_serving
    from serving.privacy.records import current_salt, open_existing_log, read_salt_file, user_keys
    from serving.store.location import is_shared

    if not user_id:
        raise typer.BadParameter("must not be empty", param_hint="--user-id")
    home, serving = options(ctx).resolve_home(), load_serving()
    store = open_existing_log(home, serving)  # first: a wrong --home is named as such, not as a missing salt
    try:
        current = current_salt(serving, home, shared=is_shared(store, 1))
        salts = [current, *(read_salt_file(p) for p in salt_files or ())]
        yield home, store, user_keys(user_id, salts)
    finally:
        store.close()


def _write_private(path: Path, lines: list[str]) -> None:
    """Write the export readable by its owner only (0600): it holds the user's emails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)


@app.command("export", help="write every record of one user as JSON lines (to stdout, or --out FILE)")
def export(
    ctx: typer.Context,
    user_id: UserIdOption,
    out: Annotated[Path | None, typer.Option(help="write here (0600) instead of stdout", show_default=False)] = None,
    salt_file: SaltFileOption = None,
    actor: ActorOption = None,
) -> None:
    from serving.privacy.records import audit_export, describe, find_user

    with _user_store(ctx, user_id, salt_file) as (home, store, keys):
        found = find_user(store, home, keys)
        # Audited before it leaves: no export goes out without its audit record.
        audit_export(store, _actor(actor), found, str(out) if out is not None else "stdout")
    lines = list(found.lines())
    if out is not None:
        _write_private(out, lines)
    else:
        for line in lines:
            print(line)
    summary = (
        f"no records of this user (user_key {', '.join(keys)}): nothing to export"
        if found.empty
        else f"exported {describe(found.counts())} of user_key {', '.join(keys)}"
    )
    # With the records on stdout, the summary goes to stderr so that a redirect captures exactly the JSON lines.
    where = f" to {out}" if out is not None and not found.empty else ""
    print(summary + where, file=sys.stdout if out is not None else sys.stderr)


@app.command("delete", help="delete every record of one user, and the report files that quote their emails")
def delete(
    ctx: typer.Context,
    user_id: UserIdOption,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    salt_file: SaltFileOption = None,
    actor: ActorOption = None,
) -> None:
    from serving.privacy.records import delete_user, describe, find_user

    with _user_store(ctx, user_id, salt_file) as (home, store, keys):
        found = find_user(store, home, keys)
        if not yes and not found.empty:
            if not sys.stdin.isatty():
                raise typer.BadParameter("stdin is not a terminal to confirm on; add --yes", param_hint="--yes")
            if not typer.confirm(f"delete {describe(found.counts())} of user_key {', '.join(keys)}?"):
                print("nothing deleted")
                raise typer.Exit(1)
        result = delete_user(store, home, keys, _actor(actor))
    if found.empty and not result.deleted.predictions:
        print(f"no records of this user (user_key {', '.join(keys)}): nothing deleted")
    else:
        print(f"deleted {describe(result.counts())} of user_key {', '.join(keys)}")
        for path in result.reports:
            print(f"  deleted report {path}")


@app.command("retain", help="blank the email text stored more than N days ago (every other field is kept)")
def retain(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=36_500,
            help="keep text this many days (default: serving.yaml's event_log.retention_days)",
            show_default=False,
        ),
    ] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    from serving.config import load_serving
    from serving.privacy.records import open_existing_log, retain_text

    home, serving = options(ctx).resolve_home(), load_serving()
    days = days if days is not None else serving.event_log.retention_days
    if days is None:
        raise typer.BadParameter("no retention period: give --days N or set event_log.retention_days in serving.yaml")
    store = open_existing_log(home, serving)
    try:
        result = retain_text(store, home, days, _actor(actor))
    finally:
        store.close()
    b = result.blanked
    if as_json:
        print_json({"days": days, "before": result.before, "predictions": b.predictions, "labelled": b.labelled})
    else:
        print(f"text stored before {result.before} ({days} days) blanked: {b.predictions} predictions, "
              f"{b.labelled} imported labelled emails; no record deleted, every other field kept")  # fmt: skip
