"""Sticky, deterministic arm assignment: a user's hash bucket, the arms' ranges of [0, 1), the chosen arm.

Pure and stdlib-only, in the manner of growthbook-python's core.py, so that every replica (and any other
language) computes the same arm for the same user, and `golden_vectors.json` pins the contract.

Contract, hash version 1 (`HASH_VERSION`):

    digest = sha256(f"{salt}:{user_id}".encode("utf-8", "surrogatepass"))
    bucket = (int.from_bytes(digest[:8], "big") >> 11) / 2**53

i.e. the top 53 bits of the first 8 bytes, big-endian, over 2**53. Keeping 53 bits (not all 64 over 2**64)
makes every bucket an exact double and keeps it below 1.0: 64-bit values near 2**64 would round up to 1.0.
User ids are opaque: no case folding, no Unicode normalisation ("é" and "e" + combining accent differ). A salt
may not contain ":", so that no (salt, user id) pair can collide with another one's hash input.

Layout: ranges are half-open `[start, end)` with ends on the buckets' own grid (multiples of 2**-53), so
every boundary is exact and a layout read back from JSON or YAML is the same layout. Arms own `[0, coverage)`
between them; whatever no arm owns is the holdout. Without a previous layout, arms lie contiguously in name
order and the holdout is `[coverage, 1)`. With one, see `arm_ranges`: the new layout moves the fewest users.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

HASH_VERSION = 1
WEIGHT_TOLERANCE = 1e-9
_GRID = 2**53  # buckets are k / 2**53; range ends live on the same grid

Label = str | None  # an arm name, or None for the holdout


@dataclass(frozen=True)
class ArmRange:
    """Users whose bucket b satisfies start <= b < end get `arm`. One arm may own several ranges."""

    arm: str
    start: float
    end: float


@dataclass(frozen=True)
class Assignment:
    """The outcome for one user; `arm` None with `in_experiment` False means the holdout."""

    arm: str | None
    bucket: float
    in_experiment: bool


def bucket(salt: str, user_id: str) -> float:
    """The user's position in [0, 1) for this salt (hash version 1; formula in the module docstring)."""
    if ":" in salt:
        raise ValueError(f"salt {salt!r} must not contain ':' (it separates the salt from the user id)")
    digest = hashlib.sha256(f"{salt}:{user_id}".encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / _GRID


def choose_arm(salt: str, user_id: str, ranges: Sequence[ArmRange]) -> Assignment:
    """The arm whose range holds the user's bucket, or the holdout when none does."""
    b = bucket(salt, user_id)
    # A linear scan: an experiment has a handful of ranges, and this sits on the request path.
    for r in ranges:
        if r.start <= b < r.end:
            return Assignment(arm=r.arm, bucket=b, in_experiment=True)
    return Assignment(arm=None, bucket=b, in_experiment=False)


def arm_ranges(
    weights: Mapping[str, float], coverage: float = 1.0, previous: Sequence[ArmRange] | None = None
) -> tuple[ArmRange, ...]:
    """Ranges (sorted by start) giving each arm `weight * coverage` of [0, 1); the rest is the holdout.

    With `previous`, the new layout keeps as many users where they were as is possible: every label (each arm
    and the holdout) keeps min(old share, new share) of its old ground, so the moved share equals the lower
    bound, half the sum of |share change| over the labels. A shrinking label gives up ground on the side a
    gaining neighbour touches; when both or neither neighbour gains, an arm gives up the end of its ranges
    and the holdout its start (so coverage grows and shrinks at the arms' end). Freed ground goes first to a
    gaining label whose range touches it, then left to right to the gaining arms in name order, holdout last.
    Arms may therefore own several ranges after a few changes. Arms missing from `weights` free all
    their ground; zero-weight arms own nothing.
    """
    targets = _targets(weights, coverage)
    if previous is None:
        return _to_ranges(_default_layout(targets))
    old = _segments(previous)
    kept, need = _keep(old, targets)
    ends = {e: lab for _, e, lab in kept}
    starts = {s: lab for s, _, lab in kept}
    placed = list(kept)
    leftovers: list[tuple[int, int]] = []
    for s, e in _gaps(kept):
        before, after = ends.get(s, ""), starts.get(e, "")
        if need.get(before, 0) > 0:
            take = min(e - s, need[before])
            placed.append((s, s + take, before))
            need[before] -= take
            s += take
        if s < e and need.get(after, 0) > 0:
            take = min(e - s, need[after])
            placed.append((e - take, e, after))
            need[after] -= take
            e -= take
        if s < e:
            leftovers.append((s, e))
    order: list[Label] = [*sorted(a for a in targets if a is not None), None]
    for s, e in leftovers:
        for label in order:
            if s >= e:
                break
            take = min(e - s, need[label])
            if take > 0:
                placed.append((s, s + take, label))
                need[label] -= take
                s += take
    # Shares sum to exactly 2**53 units before and after, so the free ground always fills every need.
    assert not any(need.values()), need
    return _to_ranges(placed)


def moved_share(old_ranges: Sequence[ArmRange], new_ranges: Sequence[ArmRange]) -> float:
    """The exact share of [0, 1) whose label (arm or holdout) differs between the two layouts."""
    old, new = _exact_segments(old_ranges), _exact_segments(new_ranges)
    points = sorted({p for s, e, _ in old + new for p in (s, e)})
    moved = Fraction(0)
    for lo, hi in pairwise(points):
        if _label_at(old, lo) != _label_at(new, lo):
            moved += hi - lo
    return float(moved)


def shares(ranges: Sequence[ArmRange]) -> dict[str, float]:
    """Each arm's total share of [0, 1) in a layout (the holdout is 1 minus their sum)."""
    total: dict[str, Fraction] = {}
    for s, e, arm in _exact_segments(ranges):
        if arm is not None:
            total[arm] = total.get(arm, Fraction(0)) + (e - s)
    return {arm: float(v) for arm, v in sorted(total.items())}


def validate_ranges(ranges: Sequence[ArmRange]) -> None:
    """Raise ValueError unless the ranges are named, inside [0, 1), non-empty and non-overlapping."""
    _exact_segments(ranges)


def _targets(weights: Mapping[str, float], coverage: float) -> dict[Label, int]:
    """Grid units per label: the arms share round(coverage * 2**53) by largest remainder; holdout the rest."""
    if isinstance(coverage, bool) or not isinstance(coverage, int | float) or not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    if not weights:
        raise ValueError("an experiment needs at least one arm, got no weights")
    for arm, w in weights.items():
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"arm names must be non-empty strings, got {arm!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of arm '{arm}' must be a finite number >= 0, got {w!r}")
    total = sum((Fraction(w) for w in weights.values()), Fraction(0))
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise ValueError(f"arm weights sum to {float(total):.12g}, expected 1 (±{WEIGHT_TOLERANCE:g})")
    covered = round(Fraction(coverage) * _GRID)
    quotas = {arm: Fraction(w) / total * covered for arm, w in weights.items()}
    units: dict[Label, int] = {arm: math.floor(q) for arm, q in quotas.items()}
    # Hand the few leftover units to the largest remainders, ties by name, so the split is deterministic.
    short = covered - sum(units.values())
    for arm in sorted(quotas, key=lambda a: (-(quotas[a] - math.floor(quotas[a])), a))[:short]:
        units[arm] += 1
    units[None] = _GRID - covered
    return units


def _keep(
    old: list[tuple[int, int, Label]], targets: Mapping[Label, int]
) -> tuple[list[tuple[int, int, Label]], dict[Label, int]]:
    """The ground each label keeps (min of old and new share) and what it still needs, in grid units."""
    had: dict[Label, int] = {}
    for s, e, label in old:
        had[label] = had.get(label, 0) + e - s
    gains = {label for label, units in targets.items() if units > had.get(label, 0)}
    owner_ending = {e: label for _, e, label in old}
    owner_starting = {s: label for s, _, label in old}
    kept: list[tuple[int, int, Label]] = []
    need = dict(targets)
    for label in had:
        mine = [(s, e) for s, e, lab in old if lab == label]
        before, after = owner_ending.get(mine[0][0], ""), owner_starting.get(mine[-1][1], "")
        give_up_end = label is not None
        if (before in gains) != (after in gains):
            # Cede the side a gaining neighbour touches, so that it grows without a new fragment.
            give_up_end = after in gains
        for s, e in mine if give_up_end else reversed(mine):
            take = min(e - s, need.get(label, 0))
            if take > 0:
                kept.append((s, s + take, label) if give_up_end else (e - take, e, label))
                need[label] -= take
    kept.sort(key=lambda seg: seg[0])
    return kept, need


def _default_layout(targets: Mapping[Label, int]) -> list[tuple[int, int, Label]]:
    placed: list[tuple[int, int, Label]] = []
    at = 0
    for arm in sorted(a for a in targets if a is not None):
        placed.append((at, at + targets[arm], arm))
        at += targets[arm]
    return placed


def _segments(ranges: Sequence[ArmRange]) -> list[tuple[int, int, Label]]:
    """A validated layout as grid segments tiling [0, 1), gaps labelled None (holdout)."""
    out: list[tuple[int, int, Label]] = []
    at = 0
    for s, e, arm in _exact_segments(ranges):
        lo, hi = round(s * _GRID), round(e * _GRID)
        if lo > at:
            out.append((at, lo, None))
        if hi > lo and out and out[-1][1] == lo and out[-1][2] == arm:
            out[-1] = (out[-1][0], hi, arm)  # touching ranges of one arm are one stretch of ground
        elif hi > lo:
            out.append((lo, hi, arm))
        at = max(at, hi)
    if at < _GRID:
        out.append((at, _GRID, None))
    return out


def _exact_segments(ranges: Sequence[ArmRange]) -> list[tuple[Fraction, Fraction, Label]]:
    out: list[tuple[Fraction, Fraction, Label]] = []
    for r in sorted(ranges, key=lambda r: (r.start, r.end)):
        if not isinstance(r.arm, str) or not r.arm:
            raise ValueError(f"range arm names must be non-empty strings, got {r.arm!r}")
        if not (math.isfinite(r.start) and math.isfinite(r.end) and 0 <= r.start < r.end <= 1):
            raise ValueError(f"range of arm '{r.arm}' must satisfy 0 <= start < end <= 1, got {r.start}..{r.end}")
        if out and Fraction(r.start) < out[-1][1]:
            raise ValueError(f"ranges of arms '{out[-1][2]}' and '{r.arm}' overlap at {r.start}")
        out.append((Fraction(r.start), Fraction(r.end), r.arm))
    return out


def _label_at(segments: list[tuple[Fraction, Fraction, Label]], point: Fraction) -> Label:
    for s, e, label in segments:
        if s <= point < e:
            return label
    return None


def _gaps(kept: list[tuple[int, int, Label]]) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for s, e, _ in kept:
        if s > at:
            gaps.append((at, s))
        at = e
    if at < _GRID:
        gaps.append((at, _GRID))
    return gaps


def _to_ranges(placed: list[tuple[int, int, Label]]) -> tuple[ArmRange, ...]:
    """Sorted, merged arm ranges as floats (exact: grid points are doubles); the holdout is left out."""
    merged: list[tuple[int, int, Label]] = []
    for s, e, label in sorted((p for p in placed if p[1] > p[0]), key=lambda p: p[0]):
        if merged and merged[-1][2] == label and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e, label)
        else:
            merged.append((s, e, label))
    return tuple(ArmRange(lab, s / _GRID, e / _GRID) for s, e, lab in merged if lab is not None)
