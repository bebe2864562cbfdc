"""The threshold what-if against a case worked by hand, the choice of thresholds to apply, and bad specs."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from experiments.analysis.thresholds import (
    GRID,
    ThresholdInputError,
    choose_thresholds,
    evaluate,
    explicit_policy,
    parse_queue_specs,
    plan,
    what_if,
)
from serving.config import PolicyConfig, QueuesConfig

pytestmark = pytest.mark.unit

# Round numbers: an agent hour costs 60, so a misroute cost is its minutes. Triage costs 1 min per email.
# a: saves 2 min when routed right, a misrouted a-email costs 6 min; b: saves 3, a misrouted b-email costs 3.
QUEUES = QueuesConfig.model_validate(
    {
        "triage_queue": "triage",
        "triage_minutes": 1.0,
        "agent_cost_per_hour": 60.0,
        "queues": {
            "a": {"manual_triage_minutes": 2, "misroute_cost": 6},
            "b": {"manual_triage_minutes": 3, "misroute_cost": 3},
        },
    }
)
# (top queue, top probability, true queue) and what routing it is worth:
EMAILS = [
    ("a", 0.95, "a"),  # 1: +2
    ("a", 0.80, "a"),  # 2: +2
    ("a", 0.62, "b"),  # 3: wrong, true b: -3
    ("b", 0.90, "b"),  # 4: +3
    ("b", 0.70, "a"),  # 5: wrong, true a: -6
    ("b", 0.40, "b"),  # 6: +3
    ("a", 0.68, "a"),  # 7: +2
]
CURRENT = PolicyConfig(confidence_threshold=0.62)  # not on the grid: it must be a candidate of its own


def sample(rows: list[tuple[str, float, str]] = EMAILS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["top", "p_top", "true_queue"])


# Global table, N = 7, net = (Σ routed gains − 1 × not routed) / 7:
#   t <= 0.40        all routed:          2+2-3+3-6+3+2 = 3            -> 3/7
#   0.45 .. 0.62     6 not routed:        0 - 1 = -1                   -> -1/7
#   0.65             3, 6 not routed:     2+2+3-6+2 = 3, - 2 = 1       -> 1/7
#   0.70             3, 6, 7 not routed:  2+2+3-6 = 1, - 3 = -2        -> -2/7
#   0.75, 0.80       routed 1, 2, 4:      7 - 4 = 3                    -> 3/7
#   0.85, 0.90       routed 1, 4:         5 - 5 = 0                    -> 0
#   0.95             routed 1:            2 - 6 = -4                   -> -4/7
# Best 3/7, tied at 0.30-0.40 and 0.75-0.80: the closest to the current 0.62 is 0.75.
GLOBAL = {0.30: 3, 0.35: 3, 0.40: 3, 0.45: -1, 0.50: -1, 0.55: -1, 0.60: -1, 0.62: -1, 0.65: 1, 0.70: -2, 0.75: 3,
          0.80: 3, 0.85: 0, 0.90: 0, 0.95: -4}  # fmt: skip
# Queue a (emails 1, 2, 3, 7; N = 4): t <= 0.62: 2+2-3+2 = 3 -> 3/4; 0.65: 6 - 1 = 5 -> 5/4;
#   0.70-0.80: 4 - 2 = 2 -> 2/4; 0.85-0.95: 2 - 3 = -1 -> -1/4. Best 0.65.
QUEUE_A = {t: (3 if t <= 0.62 else 5 if t == 0.65 else 2 if t <= 0.80 else -1) for t in GLOBAL}
# Queue b (emails 4, 5, 6; N = 3): t <= 0.40: 3-6+3 = 0; 0.45-0.70: 3-6 - 1 = -4 -> -4/3; 0.75-0.90: 3 - 2 = 1 -> 1/3;
#   0.95: -3 -> -1. Best tied at 0.75-0.90 (1/3): the closest to 0.62 is 0.75.
QUEUE_B = {t: (0 if t <= 0.40 else -4 if t <= 0.70 else 1 if t <= 0.90 else -3) for t in GLOBAL}


def test_what_if_matches_the_hand_computed_case() -> None:
    w = what_if(sample(), QUEUES, CURRENT, min_emails=2)
    g = w.global_table
    assert [r.threshold for r in g.rows] == sorted({*GRID, 0.62})
    assert {r.threshold: r.net_saving for r in g.rows} == pytest.approx({t: v / 7 for t, v in GLOBAL.items()})
    assert g.best == g.chosen == 0.75 and g.current == 0.62
    r = g.row(0.65)  # routed 1, 2, 4, 5, 7: 4 correct of 5
    assert (r.routed, r.coverage, r.accuracy) == (5, pytest.approx(5 / 7), pytest.approx(4 / 5))
    assert g.row(0.95).accuracy == 1.0 and g.row(0.30).accuracy == pytest.approx(5 / 7)

    a, b = w.queue_tables
    assert (a.scope, a.emails, b.scope, b.emails) == ("a", 4, "b", 3)
    assert {r.threshold: r.net_saving for r in a.rows} == pytest.approx({t: v / 4 for t, v in QUEUE_A.items()})
    assert {r.threshold: r.net_saving for r in b.rows} == pytest.approx({t: v / 3 for t, v in QUEUE_B.items()})
    assert (a.best, b.best) == (0.65, 0.75) and a.note is None and b.note is None
    assert w.per_queue_thresholds == {"a": 0.65, "b": 0.75}

    # The current policy (0.62 everywhere) is the -1/7 row: 6 routed, 4 of them right.
    assert (w.current.routed, w.current.accuracy) == (6, pytest.approx(4 / 6))
    assert w.current.net_saving == pytest.approx(-1 / 7)
    # Per queue: a at 0.65 saves 5 (emails 1, 2, 7 routed, 3 to triage), b at 0.75 saves 1 (4 routed): 6/7.
    assert w.per_queue.net_saving == pytest.approx(6 / 7)
    assert (w.per_queue.routed, w.per_queue.accuracy) == (4, 1.0)


def test_choice_and_plan() -> None:
    w = what_if(sample(), QUEUES, CURRENT, min_emails=2)
    proposed = choose_thresholds(w, CURRENT)
    # b's best equals the global best: it needs no threshold of its own.
    assert (proposed.confidence_threshold, proposed.queue_thresholds) == (0.75, {"a": 0.65})
    assert proposed.secondary_margin == CURRENT.secondary_margin
    p = plan("what-if", CURRENT, proposed, sample(), QUEUES)
    assert p.changed and p.gain == pytest.approx(6 / 7 - (-1 / 7))  # one agent minute per judged email
    assert p.change() == {"confidence_threshold": 0.75, "queue_thresholds": {"a": 0.65}}
    assert evaluate(sample(), QUEUES, proposed) == w.per_queue  # the combined policy, evaluated directly

    only_global = choose_thresholds(w, CURRENT.model_copy(update={"queue_thresholds": {"b": 0.9}}), global_only=True)
    assert (only_global.confidence_threshold, only_global.queue_thresholds) == (0.75, {})
    assert plan("what-if", CURRENT, only_global, sample(), QUEUES).gain == pytest.approx(3 / 7 + 1 / 7)
    unchanged = plan("what-if", proposed, proposed, None, QUEUES)
    assert not unchanged.changed and unchanged.gain is None


def test_small_queues_keep_the_global_best() -> None:
    w = what_if(sample(), QUEUES, CURRENT, min_emails=4)
    a, b = w.queue_tables
    assert a.chosen == 0.65 and a.note is None
    assert b.chosen == 0.75 and b.note is not None and "fewer than 4" in b.note
    w = what_if(sample(), QUEUES, CURRENT, min_emails=5)
    assert all(t.chosen == 0.75 and t.note for t in w.queue_tables)
    assert w.per_queue.net_saving == pytest.approx(3 / 7)  # the global 0.75 row
    assert choose_thresholds(w, CURRENT).queue_thresholds == {}


def test_current_per_queue_threshold_is_a_candidate_and_wins_ties() -> None:
    current = PolicyConfig(confidence_threshold=0.62, queue_thresholds={"b": 0.72})
    w = what_if(sample(), QUEUES, current, min_emails=2)
    b = w.queue_tables[1]
    # At 0.72 only email 4 of b is routed: 3 - 2 = 1 -> 1/3, tied with 0.75-0.90; 0.72 is the current one.
    assert b.current == 0.72 and b.row(0.72).net_saving == pytest.approx(1 / 3) and b.best == 0.72
    # Current: a at 0.62 routes 1, 2, 3, 7 (+3), b at 0.72 routes 4 (+3); 5 and 6 to triage (-2): 4/7.
    assert w.current.net_saving == pytest.approx(4 / 7)


def test_queue_outside_the_taxonomy_keeps_the_global_and_costs_nothing() -> None:
    w = what_if(sample([*EMAILS, ("zzz", 0.99, "zzz")]), QUEUES, CURRENT, min_emails=1)
    other = w.queue_tables[-1]
    assert other.scope == "zzz" and other.chosen == w.global_table.best and "taxonomy" in (other.note or "")
    assert "zzz" not in choose_thresholds(w, CURRENT).queue_thresholds
    assert other.row(0.5).net_saving == 0.0  # routed right, but no manual minutes are known for it


def test_empty_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one judged email"):
        what_if(sample([]), QUEUES, CURRENT)


def test_queue_specs() -> None:
    assert parse_queue_specs(["a=0.7", "b=1"], QUEUES.names) == {"a": 0.7, "b": 1.0}
    for bad, words in [
        (["a"], "expected QUEUE=THRESHOLD"),
        (["a=high"], "expected QUEUE=THRESHOLD"),
        (["=0.5"], "expected QUEUE=THRESHOLD"),
        (["c=0.5"], "'c' is not a queue of the taxonomy (a, b)"),
        (["a=1.5"], "a's threshold 1.5 is not in [0, 1]"),
        (["a=nan"], "not in [0, 1]"),
        (["a=0.5", "a=0.6"], "given twice"),
    ]:
        with pytest.raises(ThresholdInputError, match=re.escape(words)):
            parse_queue_specs(bad, QUEUES.names)


def test_explicit_policy_merges_per_queue_thresholds() -> None:
    current = PolicyConfig(confidence_threshold=0.6, queue_thresholds={"a": 0.7})
    p = explicit_policy(current, queue_thresholds={"b": 0.8})
    assert (p.confidence_threshold, p.queue_thresholds) == (0.6, {"a": 0.7, "b": 0.8})
    p = explicit_policy(current, threshold=0.55, global_only=True)
    assert (p.confidence_threshold, p.queue_thresholds) == (0.55, {})
    with pytest.raises(ThresholdInputError, match="not in"):
        explicit_policy(current, threshold=-0.1)
    with pytest.raises(ThresholdInputError, match="--global-only"):
        explicit_policy(current, queue_thresholds={"b": 0.8}, global_only=True)
