"""The `mailroute label` group: list the emails to label next, label them, import an old helpdesk's labels.

The commands read and write the home's event log directly (the store `serving.yaml` names, else
`<home>/events.db`), so they work with or without a running server; the logic is in `training.labels.labelling` and
`training.labels.importer`. `next` and `assign` refuse a log that does not exist (a wrong --home must not look like
an empty queue) and create nothing; `import` may create it.
"""

from __future__ import annotations

import csv
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli import options, print_json
from serving.commands import JsonOption

if TYPE_CHECKING:
    from serving.config import Home
    from serving.store.eventlog import EventLog
    from training.labels.labelling import LabelRow

app = typer.Typer(help="label the emails the router was unsure of, or import old labels")
QueueArgument = Annotated[
    str | None, typer.Argument(metavar="QUEUE", help="the queue the emails belong in", show_default=False)
]
RequestIdsArgument = Annotated[
    list[str] | None, typer.Argument(metavar="REQUEST_ID", help="emails to label", show_default=False)
]
AgentOption = Annotated[str | None, typer.Option("--agent", help="who labels (default: your user name)")]


def _existing_log(home: Home) -> EventLog:
    from serving.config import load_serving
    from serving.store.location import open_existing_event_log

    return open_existing_event_log(load_serving(), home)


def _since(value: str | None) -> str | None:
    from serving.clock import now, parse_duration
    from serving.store.eventlog import EventLogError, normalize_ts

    if value is None:
        return None
    try:
        return (now() - parse_duration(value)).isoformat()
    except ValueError:
        pass
    try:
        return normalize_ts(value)
    except EventLogError:
        message = f"'{value}' is neither a duration (7d, 24h) nor an ISO time with a time zone"
        raise typer.BadParameter(message, param_hint="--since") from None


def _agent(value: str | None) -> str:
    if value is not None:
        return value
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "cli"


def _print_rows(title: str, rows: tuple[LabelRow, ...]) -> None:
    print(f"{title} ({len(rows)})")
    for r in rows:
        margin = "   —  " if r.margin is None else f"{r.margin:6.3f}"
        print(f"  {r.request_id}  {r.ts[:19]}  {r.routed_queue:<12} guess {r.guess or '—':<12} margin {margin}  "
              f"{(r.subject or '(no text stored)')[:60]}")  # fmt: skip


@app.command("next", help="list the next emails to label: the triage queue's, then the least sure routed ones")
def next_(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, max=500, help="how many emails at most")] = 50,
    query: Annotated[str | None, typer.Option(help="only emails whose subject or body contains this")] = None,
    since: Annotated[str | None, typer.Option(help="only emails routed since: a duration (7d) or an ISO time")] = None,
    as_json: JsonOption = False,
) -> None:
    from serving.config import load_queues
    from training.labels.labelling import next_batch

    start = _since(since)
    queues = load_queues()
    store = _existing_log(options(ctx).resolve_home())
    try:
        batch = next_batch(store, queues, n=n, query=query, since=start)
    finally:
        store.close()
    if as_json:
        print_json(batch.to_json())
        return
    _print_rows(f"in the {queues.triage_queue} queue, newest first", batch.triaged)
    _print_rows("routed, least sure first", batch.uncertain)
    if not len(batch):
        print("nothing to label" + (" matches the search" if query else ""))


def _read_assignments(path: Path) -> list[tuple[str, str]]:
    """(request_id, queue) pairs from a CSV file with those two columns; any bad row refuses the file."""
    from training.labels.labelling import LabellingError

    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"request_id", "queue"} - set(reader.fieldnames or ())
            if missing:
                shown = ", ".join(reader.fieldnames or ()) or "none"
                raise LabellingError(f"{path}: missing column {', '.join(sorted(missing))}; columns are: {shown}")
            pairs = []
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                request_id, queue = (row.get("request_id") or "").strip(), (row.get("queue") or "").strip()
                if not request_id and not queue:
                    continue
                if not request_id or not queue:
                    raise LabellingError(f"{path}: line {number} lacks a request_id or a queue; nothing labelled")
                pairs.append((request_id, queue))
    except UnicodeDecodeError as err:
        raise LabellingError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise LabellingError(f"{path}: not a readable CSV file: {err}") from None
    if not pairs:
        raise LabellingError(f"{path}: no assignment in the file")
    return pairs


@app.command("assign", help="label emails: QUEUE REQUEST_ID..., or --file CSV with columns request_id,queue")
def assign_(
    ctx: typer.Context,
    queue: QueueArgument = None,
    request_ids: RequestIdsArgument = None,
    file: Annotated[
        Path | None, typer.Option("--file", exists=True, dir_okay=False, help="CSV with columns request_id,queue")
    ] = None,
    agent: AgentOption = None,
    as_json: JsonOption = False,
) -> None:
    from serving.config import load_queues
    from training.labels.labelling import assign

    queues = load_queues()
    if file is not None:
        if queue is not None:
            raise typer.BadParameter("give QUEUE REQUEST_ID... or --file, not both", param_hint="--file")
        pairs = _read_assignments(file)
    else:
        if queue is None or not request_ids:
            raise typer.BadParameter("give QUEUE and at least one REQUEST_ID, or --file CSV", param_hint="QUEUE")
        if queue not in queues.names:
            raise typer.BadParameter(f"'{queue}' is not a queue: {', '.join(queues.names)}", param_hint="QUEUE")
        pairs = [(r, queue) for r in request_ids]
    store = _existing_log(options(ctx).resolve_home())
    try:
        result = assign(store, queues, pairs, agent_id=_agent(agent))
    finally:
        store.close()
    if as_json:
        print_json(result.to_json())
    else:
        print(result.summary())


@app.command("import", help="import an old helpdesk's queue assignments (CSV, JSONL, mbox, .eml folder)")
def import_(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, help="CSV, JSONL, mbox file or folder of .eml files")],
    text_col: Annotated[
        str | None, typer.Option(help="column holding the whole text (else subject + body)", show_default=False)
    ] = None,
    label_col: Annotated[str, typer.Option(help="column holding the queue")] = "queue",
    agent: Annotated[str | None, typer.Option("--agent", help="who labelled them (default: unknown)")] = None,
    as_json: JsonOption = False,
) -> None:
    from serving.config import load_queues, load_serving
    from serving.store.eventlog import open_event_log
    from training.labels.importer import import_labels

    queues, serving = load_queues(), load_serving()
    home = options(ctx).resolve_home()
    from serving.store.location import event_log_url

    store = open_event_log(event_log_url(serving, home))
    try:
        result = import_labels(
            store, path, queues, text_col=text_col, label_col=label_col, agent_id=agent,
            text_policy=serving.event_log.text_policy,
        )  # fmt: skip
    finally:
        store.close()
    if as_json:
        print_json({**vars(result), "summary": result.summary()})
    else:
        print(f"{result.path}: {result.summary()}")
        if result.skipped:
            print(f"skipped {result.skipped} malformed records (see the warnings above)", file=sys.stderr)
