"""The labelling queue: which unlabelled emails a person should label next, and writing their verdicts.

The emails the router was unsure of teach the next model the most: those it sent to the triage queue, and those it
routed with the two best queues close together (the lowest margin). `next_batch` lists both from the event log;
`assign` stores a person's verdicts as feedback with source "labelling". The CLI (`mailroute label`) and the
dashboard's labelling view (`monitoring.dashboard.labelling`) both call these, so they check input the same way.

`assign` is all-or-nothing on bad input (an unknown queue or request_id writes nothing), and never overwrites: the
store keeps the first feedback per email, so an email already labelled is reported with the verdict it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from serving import clock
from serving.config import QueuesConfig
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent, margin_of

DEFAULT_BATCH = 50
MAX_BATCH = 500
MAX_AGENT_CHARS = 100
MAX_QUERY_CHARS = 200
SNIPPET_CHARS = 240
SOURCE = "labelling"


class LabellingError(ValueError):
    """Input the labelling queue refuses; nothing was written. The message is one line meant for a person."""


@dataclass(frozen=True)
class LabelRow:
    """One email to label, with what the model thought of it."""

    request_id: str
    email_id: str | None
    ts: str
    arm: str
    model: str  # name:version
    routed_queue: str
    guess: str | None  # the model's best guess: the second queue for a triaged email, else the routed queue
    margin: float | None  # top probability minus the runner-up's (None: no probabilities were logged)
    confidence: float
    subject: str | None
    snippet: str | None  # the start of the body, on one line


@dataclass(frozen=True)
class LabelQueue:
    """The next emails to label: the triage queue's (newest first) and the least sure auto-routed ones."""

    triaged: tuple[LabelRow, ...]
    uncertain: tuple[LabelRow, ...]

    def __len__(self) -> int:
        return len(self.triaged) + len(self.uncertain)

    def to_json(self) -> dict[str, Any]:
        return {"triaged": [asdict(r) for r in self.triaged], "uncertain": [asdict(r) for r in self.uncertain]}


@dataclass(frozen=True)
class AlreadyLabelled:
    """An email that had feedback before this assignment; its stored verdict stands."""

    request_id: str
    asked: str  # the queue this assignment wanted
    queue: str  # the queue it is labelled as
    source: str
    agent_id: str | None

    def __str__(self) -> str:
        by = f"{self.source} {self.agent_id}" if self.agent_id else self.source
        return f"{self.request_id} already labelled (as {self.queue}, by {by})"


@dataclass(frozen=True)
class AssignResult:
    labelled: tuple[tuple[str, str], ...]  # (request_id, queue) written now
    already: tuple[AlreadyLabelled, ...]

    def summary(self) -> str:
        """One line: how many were labelled as what, and which were labelled before."""
        counts = Counter(queue for _, queue in self.labelled)
        line = f"labelled {len(self.labelled)} email(s)"
        if counts:
            line += " (" + ", ".join(f"{q} {c}" for q, c in sorted(counts.items())) + ")"
        if self.already:
            line += f"; {len(self.already)} not changed: " + "; ".join(str(a) for a in self.already[:5])
            line += f"; and {len(self.already) - 5} more" if len(self.already) > 5 else ""
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "labelled": [{"request_id": r, "queue": q} for r, q in self.labelled],
            "already": [{**asdict(a), "message": str(a)} for a in self.already],
        }


def _names(items: Sequence[str], shown: int = 5) -> str:
    """'a', 'b' and 3 more: a list cut short for a one-line message."""
    quoted = ", ".join(f"'{i}'" for i in items[:shown])
    return quoted + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _one_line(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _row(p: PredictionEvent, triage_queue: str) -> LabelRow:
    return LabelRow(
        request_id=p.request_id,
        email_id=p.email_id,
        ts=p.ts,
        arm=p.arm,
        model=f"{p.model_name}:{p.model_version}",
        routed_queue=p.queue,
        guess=p.secondary_queue if p.queue == triage_queue else p.queue,
        margin=margin_of(p.proba),
        confidence=p.confidence,
        subject=p.subject,
        snippet=_one_line(p.body, SNIPPET_CHARS),
    )


def check_agent(agent_id: str) -> str:
    """The agent id stripped; an empty or over-long one is a LabellingError."""
    agent = agent_id.strip()
    if not agent or len(agent) > MAX_AGENT_CHARS:
        raise LabellingError(f"the agent name must be 1 to {MAX_AGENT_CHARS} characters")
    return agent


def next_batch(
    store: EventLog, queues: QueuesConfig, *, n: int = DEFAULT_BATCH, query: str | None = None, since: str | None = None
) -> LabelQueue:
    """Up to `n` unlabelled emails: the triage queue's newest first, then the auto-routed ones with the lowest margin.

    Each list gets at least half of `n` when it has that many; what one list cannot fill goes to the other.
    `query` keeps the emails whose subject or body contains it (case-insensitive); `since` is an ISO timestamp.
    """
    if not 1 <= n <= MAX_BATCH:
        raise LabellingError(f"the batch size must be between 1 and {MAX_BATCH}; got {n}")
    query = (query or "").strip() or None
    if query is not None and len(query) > MAX_QUERY_CHARS:
        raise LabellingError(f"a search is at most {MAX_QUERY_CHARS} characters")
    common: dict[str, Any] = {"triage_queue": queues.triage_queue, "since": since, "query": query, "limit": n}
    triaged = store.unlabelled(triaged=True, **common)
    uncertain = store.unlabelled(triaged=False, **common)
    take_uncertain = min(len(uncertain), n - min(len(triaged), (n + 1) // 2))
    take_triaged = min(len(triaged), n - take_uncertain)
    tq = queues.triage_queue
    return LabelQueue(
        triaged=tuple(_row(p, tq) for p in triaged[:take_triaged]),
        uncertain=tuple(_row(p, tq) for p in uncertain[:take_uncertain]),
    )


def _validate(store: EventLog, queues: QueuesConfig, assignments: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The assignments without repeats; every problem found is one LabellingError, before anything is written."""
    if not assignments:
        raise LabellingError("no email to label was given")
    names = queues.names
    bad_queues = list(dict.fromkeys(q for _, q in assignments if q not in names))
    if bad_queues:
        raise LabellingError(f"unknown queue {_names(bad_queues)}: the queues are {', '.join(names)}; nothing labelled")
    chosen: dict[str, str] = {}
    conflicts = []
    for request_id, queue in assignments:
        if chosen.setdefault(request_id, queue) != queue:
            conflicts.append(request_id)
    if conflicts:
        raise LabellingError(f"request_id {_names(conflicts)} given two different queues; nothing labelled")
    unknown = [r for r in chosen if not r or store.get_prediction(r) is None]
    if unknown:
        raise LabellingError(f"unknown request_id {_names(unknown)}: not in the event log; nothing labelled")
    return list(chosen.items())


def assign(
    store: EventLog, queues: QueuesConfig, assignments: Sequence[tuple[str, str]], *, agent_id: str
) -> AssignResult:
    """Store each (request_id, queue) as labelling feedback by `agent_id`, unless the email has feedback already.

    Every queue must be in the taxonomy and every request_id in the log, else nothing is written (LabellingError).
    """
    agent = check_agent(agent_id)
    checked = _validate(store, queues, assignments)
    ts = clock.now().isoformat()
    labelled, already = [], []
    for request_id, queue in checked:
        stored = store.record_feedback(FeedbackEvent(request_id, ts, queue, agent_id=agent, source=SOURCE))
        if stored.created:
            labelled.append((request_id, queue))
        else:
            e = stored.event
            already.append(AlreadyLabelled(request_id, queue, e.true_queue, e.source, e.agent_id))
    return AssignResult(tuple(labelled), tuple(already))
