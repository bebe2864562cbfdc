"""Arm assignment: the hash contract (golden vectors), uniformity, stickiness and minimal moves."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

import experiments
from experiments.assign import (
    HASH_VERSION,
    ArmRange,
    Assignment,
    arm_ranges,
    bucket,
    choose_arm,
    moved_share,
    shares,
    validate_ranges,
)

pytestmark = pytest.mark.unit

GOLDEN = json.loads((Path(experiments.__file__).parent / "golden_vectors.json").read_text(encoding="utf-8"))
IDS = [f"user-{i}" for i in range(100_000)]


def _ranges(rows: list[list] | None) -> tuple[ArmRange, ...] | None:
    return None if rows is None else tuple(ArmRange(arm, start, end) for arm, start, end in rows)


def _optimum(old: dict[str, float], old_cov: float, new: dict[str, float], new_cov: float) -> float:
    """The least share any layout change can move: half the total change of every label's share."""
    arms = set(old) | set(new)
    change = sum(abs(old.get(a, 0) * old_cov - new.get(a, 0) * new_cov) for a in arms)
    return (change + abs(old_cov - new_cov)) / 2


def _arms(salt: str, ranges: tuple[ArmRange, ...], ids: list[str] = IDS) -> list[str | None]:
    return [choose_arm(salt, uid, ranges).arm for uid in ids]


# --- the hash contract --------------------------------------------------------------------------------------


def test_golden_file_is_this_hash_version_and_big_enough():
    assert GOLDEN["hash_version"] == HASH_VERSION == 1
    assert len(GOLDEN["cases"]) >= 30
    assert len(GOLDEN["arm_cases"]) >= 10
    ids = {c["user_id"] for c in GOLDEN["cases"]}
    assert "" in ids and any(not uid.isascii() for uid in ids)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['salt']}|{c['user_id'][:12]!r}")
def test_bucket_matches_golden_vector_exactly(case):
    assert bucket(case["salt"], case["user_id"]) == case["bucket"]


@pytest.mark.parametrize("case", GOLDEN["arm_cases"], ids=lambda c: f"{sorted(c['weights'])}|{c['user_id']!r}")
def test_arm_matches_golden_vector(case):
    got = choose_arm(case["salt"], case["user_id"], arm_ranges(case["weights"], case["coverage"]))
    assert got == Assignment(arm=case["arm"], bucket=case["bucket"], in_experiment=case["arm"] is not None)


@pytest.mark.parametrize("case", GOLDEN["layout_cases"], ids=lambda c: f"{sorted(c['weights'])}|{c['coverage']}")
def test_layout_matches_golden_vector(case):
    got = arm_ranges(case["weights"], case["coverage"], _ranges(case["previous"]))
    assert got == _ranges(case["ranges"])


def test_bucket_is_in_unit_interval_and_distinguishes_near_identical_ids():
    values = {bucket("s", uid) for uid in ["a", "A", "a ", "é", "e\u0301", "", "\ud800"]}
    assert len(values) == 7
    assert all(0 <= v < 1 for v in values)
    assert bucket("s", "a") != bucket("t", "a")


def test_buckets_are_uniform():
    bins = 100
    counts = Counter(int(bucket("uniformity", uid) * bins) for uid in IDS)
    expected = len(IDS) / bins
    chi2 = sum((counts[b] - expected) ** 2 / expected for b in range(bins))
    # 99 degrees of freedom: mean 99, sd 14; 170 is beyond p = 1e-5 for a fair hash.
    assert chi2 < 170, chi2
    assert abs(sum(bucket("uniformity", uid) for uid in IDS) / len(IDS) - 0.5) < 0.005


# --- choosing arms ------------------------------------------------------------------------------------------


def test_default_layout_is_name_order_contiguous_and_ends_at_coverage():
    ranges = arm_ranges({"transformer": 0.25, "linear": 0.75}, coverage=0.8)
    assert [r.arm for r in ranges] == ["linear", "transformer"]
    assert [(r.start, r.end) for r in ranges] == [(0.0, pytest.approx(0.6)), (ranges[0].end, 0.8)]
    assert arm_ranges({"a": 0.0, "b": 1.0}) == (ArmRange("b", 0.0, 1.0),)


def test_assignment_is_sticky_and_independent_of_call_order_and_weight_order():
    ranges = arm_ranges({"linear": 0.5, "transformer": 0.5})
    assert ranges == arm_ranges({"transformer": 0.5, "linear": 0.5})
    sample = IDS[:2000]
    forward = {uid: choose_arm("sticky", uid, ranges) for uid in sample}
    shuffled = sample[:]
    random.Random(7).shuffle(shuffled)
    backward = {uid: choose_arm("sticky", uid, tuple(reversed(ranges))) for uid in shuffled}
    assert forward == backward
    assert forward["user-1"] == choose_arm("sticky", "user-1", ranges)


def test_split_follows_weights():
    counts = Counter(_arms("split", arm_ranges({"a": 0.2, "b": 0.3, "c": 0.5})))
    for arm, weight in {"a": 0.2, "b": 0.3, "c": 0.5}.items():
        assert abs(counts[arm] / len(IDS) - weight) < 0.01


def test_coverage_leaves_a_holdout_that_stays_holdout_when_weights_change():
    before = arm_ranges({"linear": 0.5, "transformer": 0.5}, coverage=0.8)
    arms_before = _arms("holdout", before)
    holdout = {uid for uid, arm in zip(IDS, arms_before, strict=True) if arm is None}
    assert abs(len(holdout) / len(IDS) - 0.2) < 0.01
    assert not choose_arm("holdout", next(iter(holdout)), before).in_experiment

    after = arm_ranges({"linear": 0.7, "transformer": 0.3}, coverage=0.8, previous=before)
    arms_after = _arms("holdout", after)
    assert {uid for uid, arm in zip(IDS, arms_after, strict=True) if arm is None} == holdout
    assert sum(shares(after).values()) == pytest.approx(0.8, abs=1e-12)


# --- minimal moves ------------------------------------------------------------------------------------------


def test_50_50_to_60_40_moves_exactly_ten_percent():
    old = arm_ranges({"linear": 0.5, "transformer": 0.5})
    new = arm_ranges({"linear": 0.6, "transformer": 0.4}, previous=old)
    assert moved_share(old, new) == pytest.approx(0.10, abs=1e-12)
    assert new == (ArmRange("linear", 0.0, 0.6), ArmRange("transformer", 0.6, 1.0))  # grew at the end

    pairs = list(zip(_arms("move", old), _arms("move", new), strict=True))
    moved = [(a, b) for a, b in pairs if a != b]
    assert abs(len(moved) / len(IDS) - 0.10) < 0.005
    assert set(moved) == {("transformer", "linear")}  # nobody moves away from the arm that gained


def test_three_arm_change_moves_the_minimum():
    before = {"a": 0.5, "b": 0.3, "c": 0.2}
    after = {"a": 0.2, "b": 0.3, "c": 0.5}
    old = arm_ranges(before)
    new = arm_ranges(after, previous=old)
    assert moved_share(old, new) == pytest.approx(_optimum(before, 1, after, 1), abs=1e-12)  # 0.3
    pairs = zip(_arms("three", old), _arms("three", new), strict=True)
    assert not any(a == "b" or b == "b" for a, b in pairs if a != b)  # the unchanged arm keeps every user
    # Laid out afresh, the same weights would move far more users.
    assert moved_share(old, arm_ranges(after)) > 0.5


def test_random_changes_always_move_the_minimum_and_keep_shares():
    rng = random.Random(3)
    prev, prev_w, prev_cov = None, {}, 1.0
    for _ in range(150):
        names = rng.sample(["a", "b", "c", "d", "e"], rng.randint(1, 5))
        raw = [rng.random() for _ in names]
        weights = {n: r / sum(raw) for n, r in zip(names, raw, strict=True)}
        cov = rng.choice([1.0, 0.8, rng.uniform(0.05, 1.0)])
        new = arm_ranges(weights, cov, prev)
        validate_ranges(new)
        got = shares(new)
        assert all(abs(got.get(n, 0) - w * cov) < 1e-12 for n, w in weights.items())
        if prev is not None:
            assert moved_share(prev, new) == pytest.approx(_optimum(prev_w, prev_cov, weights, cov), abs=1e-12)
        assert arm_ranges(weights, cov, new) == new  # re-applying the same weights moves nobody
        prev, prev_w, prev_cov = new, weights, cov


def test_coverage_changes_move_only_the_users_they_must():
    full = arm_ranges({"linear": 0.5, "transformer": 0.5})
    part = arm_ranges({"linear": 0.5, "transformer": 0.5}, 0.8, previous=full)
    assert moved_share(full, part) == pytest.approx(0.2, abs=1e-12)
    again = arm_ranges({"linear": 0.5, "transformer": 0.5}, 1.0, previous=part)
    assert moved_share(part, again) == pytest.approx(0.2, abs=1e-12)
    pairs = zip(_arms("cov", part), _arms("cov", again), strict=True)
    assert all(a is None for a, b in pairs if a != b)  # growing coverage only takes in holdout users


def test_ramp_stays_contiguous():
    ranges = arm_ranges({"old": 1.0, "canary": 0.0})
    for share in [0.01, 0.05, 0.25, 0.5, 0.25, 0.75, 1.0]:
        ranges = arm_ranges({"old": 1 - share, "canary": share}, previous=ranges)
        assert len(ranges) == (1 if share == 1.0 else 2)


def test_new_and_removed_arms():
    old = arm_ranges({"a": 0.5, "b": 0.5})
    new = arm_ranges({"a": 0.4, "b": 0.4, "new": 0.2}, previous=old)
    assert moved_share(old, new) == pytest.approx(0.2, abs=1e-12)
    dropped = arm_ranges({"b": 1.0}, previous=new)
    assert moved_share(new, dropped) == pytest.approx(0.6, abs=1e-12)
    assert dropped == (ArmRange("b", 0.0, 1.0),)


def test_moved_share_counts_holdout_as_a_label():
    a = (ArmRange("x", 0.0, 0.5),)
    assert moved_share(a, a) == 0.0
    assert moved_share(a, ()) == 0.5
    assert moved_share(a, (ArmRange("y", 0.25, 1.0),)) == 1.0


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "coverage", "match"),
    [
        ({"a": -0.1, "b": 1.1}, 1.0, "weight of arm 'a'"),
        ({"a": 0.5, "b": 0.4}, 1.0, "sum to 0.9"),
        ({"a": 0.5, "b": 0.5 + 1e-8}, 1.0, "sum to"),
        ({}, 1.0, "at least one arm"),
        ({"": 1.0}, 1.0, "non-empty"),
        ({"a": math.nan}, 1.0, "finite"),
        ({"a": 1.0}, 0.0, "coverage"),
        ({"a": 1.0}, 1.5, "coverage"),
        ({"a": 1.0}, -0.2, "coverage"),
        ({"a": 1.0}, math.nan, "coverage"),
    ],
)
def test_bad_weights_and_coverage_raise_one_line_value_errors(weights, coverage, match):
    with pytest.raises(ValueError, match=match) as err:
        arm_ranges(weights, coverage)
    assert "\n" not in str(err.value)


def test_weight_sum_tolerance():
    assert shares(arm_ranges({"a": 0.5, "b": 0.5 + 1e-10})) == pytest.approx({"a": 0.5, "b": 0.5})


@pytest.mark.parametrize(
    ("previous", "match"),
    [
        ((ArmRange("a", 0.0, 0.6), ArmRange("b", 0.5, 1.0)), "overlap"),
        ((ArmRange("a", 0.5, 0.5),), "start < end"),
        ((ArmRange("a", 0.0, 1.5),), "start < end"),
        ((ArmRange("", 0.0, 1.0),), "non-empty"),
    ],
)
def test_bad_previous_layout_raises(previous, match):
    with pytest.raises(ValueError, match=match) as err:
        arm_ranges({"a": 1.0}, previous=previous)
    assert "\n" not in str(err.value)


def test_salt_with_separator_is_rejected():
    with pytest.raises(ValueError, match="must not contain ':'"):
        bucket("a:b", "c")
