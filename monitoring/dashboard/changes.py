"""The runtime changes the dashboard lists: the audit log's records in words, and where the rollout stands.

Split from `monitoring.dashboard.data` (which keeps the page together) so that each stays small. The audit log
(`<home>/audit.jsonl`, written by `serving.ops.state.audit`) holds every change of the running app; its `kind` says
what its old and new are: experiments (experiment, and a rollout or rollback that changes arm weights), decision
policies (policy), or `{"versions": {arm: model:version}}` (a rollout or rollback that only repins versions). The
rollout is `experiments.rollout.state.load(home)`, `<home>/rollout.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from experiments.rollout.state import RolloutState, RolloutStateError, load
from serving.config import Home
from serving.ops.state import AUDIT_FILE

AUDIT_LIMIT = 50  # changes shown
AUDIT_TAIL_BYTES = 256 * 1024  # read at most this much of the end of audit.jsonl


@dataclass(frozen=True)
class AuditEntry:
    ts: str
    actor: str
    summary: str
    moved_share: float | None
    kind: str = "experiment"  # experiment | policy | rollout | rollback
    detail: str | None = None  # the change's reason in words, when it gave one


def read_audit(home: Home, limit: int = AUDIT_LIMIT) -> list[AuditEntry]:
    """The newest changes, from the tail of `<home>/audit.jsonl` (never the whole file)."""
    path = home.root / AUDIT_FILE
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - AUDIT_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = tail.splitlines()
    if size > AUDIT_TAIL_BYTES:
        lines = lines[1:]  # the first line was cut by the seek
    entries = []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            entries.append(audit_entry(record))
        if len(entries) >= limit:
            break
    return entries


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


def read_rollout(home: Home) -> tuple[RolloutState | None, str | None]:
    """The last rollout (None: there has been none) and, when `<home>/rollout.json` cannot be read, why."""
    try:
        return load(home), None
    except (RolloutStateError, OSError) as err:
        return None, f"The rollout file could not be read: {' '.join(str(err).split())[:300]}"
