"""The arm weights in force over the report's window, from the audit log of runtime changes (the event store's).

Each audit record (`serving.ops.state.audit`) holds the experiment before (`old`) and after (`new`) a change. Over a
window `[since, until)` the weights are piecewise constant. The SRM check counts each user once, in the arm that
first served them in the window, so a user is expected in an arm with the weights in force when they first wrote:

    expected(arm) = Σ_segments (users first seen in the segment) × weight_in_segment(arm) / users

e.g. 50/50 until noon, then 80/20, with 1,000 users first seen before noon and 600 after: linear
(1000·0.5 + 600·0.8) / 1600 = 0.6125. A user moved by the change appears in both arms' logs; counting users by
their first arm (and weighting by their arrival, not by the hours) is what keeps that from raising a false alarm.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
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


def read_changes(records: Iterable[str], experiment: str) -> tuple[list[WeightChange], list[str]]:
    """Weight changes of `experiment` in the audit log's records (JSON text, oldest first), oldest first, and notes
    on records that could not be read."""
    changes, notes = [], []
    for number, line in enumerate(records, 1):
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
            notes.append(f"audit record {number} skipped ({type(err).__name__}: {err})")
    changes.sort(key=lambda c: c.ts)
    return changes, notes


@dataclass(frozen=True)
class Segment:
    lo: datetime
    hi: datetime
    weights: dict[str, float]


def segments(
    changes: list[WeightChange], current: Mapping[str, float], since: datetime, until: datetime
) -> tuple[list[Segment], list[str]]:
    """The weights in force over `[since, until)`, piece by piece, and a note per change inside the window."""
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
    arms = sorted({a for w in weights for a in w} | set(current))
    notes = [
        f"weights changed at {c.ts.isoformat(timespec='seconds')}: "
        + ", ".join(f"{a} {c.old.get(a, 0):.2f}->{c.new.get(a, 0):.2f}" for a in arms)
        for c in inside
    ]
    return [Segment(lo, hi, w) for (lo, hi), w in zip(pairwise(bounds), weights, strict=True)], notes


def expected_shares(pieces: list[Segment], first_seen: list[datetime]) -> dict[str, float]:
    """Expected share of users per arm (module docstring): each user weighted by the segment of their first email."""
    arms = sorted({a for s in pieces for a in s.weights})
    shares = dict.fromkeys(arms, 0.0)
    if not first_seen:
        return {a: pieces[-1].weights.get(a, 0.0) for a in arms} if pieces else shares
    starts = [s.lo for s in pieces[1:]]
    for ts in first_seen:
        piece = pieces[bisect.bisect_right(starts, ts)]
        for arm in arms:
            shares[arm] += piece.weights.get(arm, 0.0) / len(first_seen)
    return shares
