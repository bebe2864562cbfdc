"""The runtime changes the dashboard lists: the audit log's records in words, and where the rollout stands.

Split from `monitoring.dashboard.data` (which keeps the page together) so that each stays small. The audit log
(the event store's, written by `serving.ops.state.audit`) holds every change of the running app; its `kind` says
what its old and new are: experiments (experiment, and a rollout or rollback that changes arm weights), decision
policies (policy), or `{"versions": {arm: model:version}}` (a rollout or rollback that only repins versions). The
rollout is `experiments.rollout.state.load(store)`, the store's `rollout` document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from experiments.rollout.state import RolloutState, RolloutStateError, load
from serving.store.eventlog import EventLog, EventLogError

AUDIT_LIMIT = 50  # changes shown


@dataclass(frozen=True)
class AuditEntry:
    ts: str
    actor: str
    summary: str
    moved_share: float | None
    kind: str = "experiment"  # experiment | policy | rollout | rollback
    detail: str | None = None  # the change's reason in words, when it gave one


def read_audit(store: EventLog | None, limit: int = AUDIT_LIMIT) -> list[AuditEntry]:
    """The newest changes, newest first, from the event store's audit log (no store yet: none)."""
    if store is None:
        return []
    return [audit_entry(r) for r in reversed(store.audit_records(limit=limit)) if isinstance(r, dict)]


def _experiment_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    old_arms, new_arms = old.get("arms") or {}, new.get("arms") or {}
    for arm in sorted(set(old_arms) | set(new_arms)):
        a, b = old_arms.get(arm) or {}, new_arms.get(arm) or {}
        for key in ("weight", "model", "version"):
            if a.get(key) != b.get(key):
                changes.append(f"{arm} {key} {a.get(key)} → {b.get(key)}")
    for key in ("coverage", "active", "holdout_arm", "fallback_order", "shadow"):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key)} → {new.get(key)}")
    return changes


def _policy_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = [
        f"{key.replace('_', ' ')} {old.get(key)} → {new.get(key)}"
        for key in ("confidence_threshold", "secondary_margin")
        if old.get(key) != new.get(key)
    ]
    before, after = old.get("queue_thresholds") or {}, new.get("queue_thresholds") or {}
    for queue in sorted(set(before) | set(after)):
        if before.get(queue) != after.get(queue):
            a = before.get(queue, f"default {old.get('confidence_threshold')}")
            b = after.get(queue, f"default {new.get('confidence_threshold')}")
            changes.append(f"{queue} threshold {a} → {b}")
    return changes


def _version_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    arms = sorted(set(old) | set(new))
    return [f"{arm} {old.get(arm)} → {new.get(arm)}" for arm in arms if old.get(arm) != new.get(arm)]


def audit_entry(record: dict[str, Any]) -> AuditEntry:
    """One audit record in words: what changed from old to new, by its kind."""
    old, new = record.get("old") or {}, record.get("new") or {}
    kind = str(record.get("kind") or "experiment")
    if kind == "policy":
        changes = _policy_changes(old, new)
    elif "versions" in old or "versions" in new:
        changes = _version_changes(old.get("versions") or {}, new.get("versions") or {})
    else:
        changes = _experiment_changes(old, new)
    moved = record.get("moved_share")
    detail = record.get("detail")
    return AuditEntry(
        ts=str(record.get("ts", "")),
        actor=str(record.get("actor", "")),
        summary="; ".join(changes) or "no field changed",
        moved_share=float(moved) if isinstance(moved, int | float) else None,
        kind=kind,
        detail=str(detail) if detail else None,
    )


def read_rollout(store: EventLog | None) -> tuple[RolloutState | None, str | None]:
    """The last rollout (None: there has been none) and, when the saved rollout cannot be read, why."""
    if store is None:
        return None, None
    try:
        return load(store), None
    except (RolloutStateError, EventLogError) as err:
        return None, f"The saved rollout could not be read: {' '.join(str(err).split())[:300]}"
