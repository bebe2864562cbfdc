"""The arm weights in force over the report's window, from the audit log of runtime changes (`<home>/audit.jsonl`).

Each audit record (`serving.control.audit`) holds the experiment before (`old`) and after (`new`) a change. Over a
window `[since, until)` the weights are piecewise constant; the SRM check expects each arm's share of users to be
the time-weighted mean of its weights:

    expected(arm) = Σ_segments weight_in_segment(arm) × segment_hours / window_hours

e.g. 50/50 for the first 12 h of a 24 h window, then 80/20: linear 0.5·0.5 + 0.8·0.5 = 0.65, transformer 0.35.
Weighting by time assumes traffic is spread evenly over the window; a change at a quiet hour skews it a little.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightChange:
    ts: datetime
    old: dict[str, float]
    new: dict[str, float]


def _weights(exp: Mapping[str, Any]) -> dict[str, float]:
    arms = exp.get("arms") or {}
    raw = {name: float(spec.get("weight", 0.0)) for name, spec in arms.items()}
    total = sum(raw.values())
    return {a: w / total for a, w in raw.items()} if total > 0 else raw


def read_changes(path: Path, experiment: str) -> tuple[list[WeightChange], list[str]]:
    """Weight changes of `experiment` in the audit log, oldest first, and notes on lines that could not be read."""
    if not path.exists():
        return [], []
    changes, notes = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            old, new = record["old"], record["new"]
            if new.get("name") != experiment:
                continue
            ts = datetime.fromisoformat(record["ts"])
            if ts.tzinfo is None:
                raise ValueError("timestamp without a time zone")
            changes.append(WeightChange(ts, _weights(old), _weights(new)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            notes.append(f"audit log line {number} skipped ({type(err).__name__}: {err})")
    changes.sort(key=lambda c: c.ts)
    return changes, notes


def time_weighted_shares(
    changes: list[WeightChange], current: Mapping[str, float], since: datetime, until: datetime
) -> tuple[dict[str, float], list[str]]:
    """Expected share of users per arm over `[since, until)`, and a note per change inside the window."""
    inside = [c for c in changes if since < c.ts < until]
    before = [c for c in changes if c.ts <= since]
    if inside:
        first = inside[0].old
    elif before:
        first = before[-1].new
    else:
        after = [c for c in changes if c.ts >= until]
        first = after[0].old if after else dict(current)
    bounds = [since, *[c.ts for c in inside], until]
    weights = [first, *[c.new for c in inside]]
    total = (until - since).total_seconds()
    arms = sorted({a for w in weights for a in w} | set(current))
    shares = dict.fromkeys(arms, 0.0)
    for (lo, hi), w in zip(pairwise(bounds), weights, strict=True):
        for arm in arms:
            shares[arm] += w.get(arm, 0.0) * (hi - lo).total_seconds() / total
    notes = [
        f"weights changed at {c.ts.isoformat(timespec='seconds')}: "
        + ", ".join(f"{a} {c.old.get(a, 0):.2f}->{c.new.get(a, 0):.2f}" for a in arms)
        for c in inside
    ]
    return shares, notes
