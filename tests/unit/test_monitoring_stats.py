"""Family-wise alarm control and the two p-values the job adds to Evidently's, with known answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, mannwhitneyu

from monitoring.config import MonitoringConfig
from monitoring.scopes import bonferroni_plan, plan_scope
from monitoring.stats import accuracy_p_value, auc_p_value, bonferroni

pytestmark = pytest.mark.unit


def test_bonferroni() -> None:
    assert bonferroni(0.01, 27) == pytest.approx(0.01 / 27)
    assert bonferroni(0.05, 0) == 0.05
    with pytest.raises(ValueError):
        bonferroni(1.0, 3)


def test_auc_p_value_known_answers() -> None:
    assert auc_p_value(0.5, 1000, 1000) == pytest.approx(0.5)
    # sd = sqrt(2001 / (12 * 1e6)) = 0.012913; AUC 0.53 is 2.323 sd above 1/2: one-sided p = 0.01009
    assert auc_p_value(0.53, 1000, 1000) == pytest.approx(0.01009, abs=2e-4)
    assert auc_p_value(0.45, 1000, 1000) > 0.99


def test_auc_p_value_matches_mann_whitney() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=400), rng.normal(0.15, size=900)
    u = mannwhitneyu(cur, ref, alternative="greater", method="asymptotic", use_continuity=False)
    auc = u.statistic / (len(ref) * len(cur))
    assert auc_p_value(auc, len(ref), len(cur)) == pytest.approx(u.pvalue, rel=1e-6)


def test_auc_p_value_is_uniform_without_drift() -> None:
    """Under no drift, P(p < a) is a: the p-value of random scores alarms at its nominal rate."""
    rng = np.random.default_rng(0)
    n0, n1 = 300, 600
    ps = []
    for _ in range(2000):
        scores = rng.random(n0 + n1)
        labels = np.r_[np.zeros(n0), np.ones(n1)]
        order = scores.argsort().argsort() + 1
        auc = (order[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)
        ps.append(auc_p_value(auc, n0, n1))
    assert 0.035 < np.mean(np.array(ps) < 0.05) < 0.065


def test_accuracy_p_value() -> None:
    # 80 of 100 right when 90% is expected: P(X <= 80 | n=100, p=0.9) = 0.00198
    assert accuracy_p_value(80, 100, 0.9) == pytest.approx(0.001978, rel=1e-2)
    assert accuracy_p_value(90, 100, 0.9) > 0.5
    assert accuracy_p_value(5, 5, 1.2) == 1.0  # expected clipped into [0, 1]


def test_plan_shares_alpha_over_the_p_value_tests_that_run() -> None:
    cfg = MonitoringConfig.model_validate(
        {"checks": {"text": {"subject": {"method": "abs_text_content_drift", "threshold": 0.6}}}}
    )
    plan = plan_scope("linear", cfg, rows=1000, skip_all=None, reference_rows=500, skip_text=None, feedback_rows=100)
    plan += plan_scope("all", cfg, rows=1000, skip_all=None, reference_rows=500, skip_text=None, feedback_rows=100)
    # too few emails (and no feedback): skipped, takes no alpha
    plan += plan_scope("idle", cfg, rows=3, skip_all=None, reference_rows=500, skip_text=None, feedback_rows=0)
    planned, m = bonferroni_plan(plan, cfg.family_alpha)
    assert m == 2 * 8  # per scope: body text, 4 descriptors, prediction, confidence, accuracy; subject is a score test
    p_tests = [p for p in planned if p.p_value and p.skip is None]
    assert all(p.threshold == pytest.approx(0.01 / 16) for p in p_tests)
    assert sum(p.threshold or 0 for p in p_tests) == pytest.approx(cfg.family_alpha)  # Bonferroni: sums to alpha
    subject = next(p for p in planned if p.check == "text_drift.subject" and p.scope == "linear")
    assert not subject.p_value and subject.threshold == 0.6
    idle = [p for p in planned if p.scope == "idle"]
    assert all(p.skip and "only 3 emails" in p.skip for p in idle if p.check != "accuracy")
    assert all(p.skip for p in idle)


def test_plan_skips_with_reasons() -> None:
    cfg = MonitoringConfig()
    plan = plan_scope(
        "linear", cfg, rows=500, reference_rows=0, skip_all="linear:v1 was trained without a reference sample",
        skip_text=None, feedback_rows=100,
    )  # fmt: skip
    assert all(p.skip == "linear:v1 was trained without a reference sample" for p in plan)
    plan = plan_scope("linear", cfg, rows=500, reference_rows=500, skip_all=None,
                      skip_text="the event log keeps no email text", feedback_rows=3)  # fmt: skip
    by = {p.check: p.skip for p in plan}
    assert by["text_drift.body"] == by["descriptor.length"] == "the event log keeps no email text"
    assert by["prediction_drift"] is None and by["confidence_drift"] is None
    assert "only 3 feedback records" in (by["accuracy"] or "")


# The predicted-queue mix: the synthetic generator's base mix, plus one rare queue (0.15%) to exercise pooling.
_MIX = np.array([23, 26, 14, 13, 8, 6, 10], dtype=float) / 100
_DRIFTED = np.array([19, 31, 10, 10, 18, 6, 6], dtype=float) / 100


def _prediction_test() -> Any:
    """The stat test the default config runs for prediction_drift, as Evidently resolves it."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    from monitoring.drift import register_stattests

    register_stattests()
    method = MonitoringConfig().checks.prediction.method
    one = pd.Series(["a"])
    return get_stattest(one, one, ColumnType.Categorical, method)


@pytest.mark.parametrize("rare", [False, True])
def test_default_prediction_drift_is_calibrated_on_clean_windows(rare: bool) -> None:
    """2,000-row reference vs 20,000-email windows from one queue mix (Evidently's goodness-of-fit `chisquare`
    alarmed in ~90% of these at 0.01 / 27): at most its nominal rate at 0.05, and (nearly) never at 0.01 / 27."""
    from evidently.legacy.core import ColumnType

    test = _prediction_test()
    mix = np.append(_MIX * 0.9985, 0.0015) if rare else _MIX
    family = 0.01 / 27  # one arm and all traffic, 27 p-value tests
    p = []
    for seed in range(500):
        rng = np.random.default_rng(seed)
        ref = pd.Series(rng.choice(len(mix), 2000, p=mix).astype(str))
        cur = pd.Series(rng.choice(len(mix), 20_000, p=mix).astype(str))
        p.append(test(ref, cur, ColumnType.Categorical, family).drift_score)
    values = np.array(p)
    assert np.isfinite(values).all()
    assert (values < family).sum() <= 2  # expected 0.19 of 500
    assert (values < 0.05).mean() <= 0.09  # nominal 0.05; 4 standard errors of slack


def test_default_prediction_drift_alarms_on_a_shifted_mix() -> None:
    from evidently.legacy.core import ColumnType

    test = _prediction_test()
    shifted = 0.5 * _MIX + 0.5 * _DRIFTED  # the generator at drift 0.5
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ref = pd.Series(rng.choice(len(_MIX), 2000, p=_MIX).astype(str))
        cur = pd.Series(rng.choice(len(_MIX), 20_000, p=shifted).astype(str))
        result = test(ref, cur, ColumnType.Categorical, 0.01 / 27)
        assert result.drifted and result.drift_score < 0.01 / 27


def test_contingency_p_value_pools_rare_and_new_categories() -> None:
    from monitoring.stats import contingency_p_value

    ref = np.array([500, 500, 0])  # a queue the reference never predicted ...
    cur = np.array([5000, 5000, 3])  # ... seen 3 times in the window: pooled, not p = 0
    assert contingency_p_value(ref, cur) > 0.5
    assert contingency_p_value([100, 0], [0, 100]) < 1e-10  # a real change
    assert contingency_p_value([10], [20]) == 1.0  # one category: nothing to compare
    assert contingency_p_value([0, 0], [3, 4]) == 1.0  # an empty side
    # known answer: scipy's test of homogeneity on the (unpooled) table
    table = np.array([[30, 50, 20], [40, 40, 30]])
    assert contingency_p_value(table[0], table[1]) == pytest.approx(chi2_contingency(table, correction=False).pvalue)


def test_expected_accuracy_follows_the_feedback_mix() -> None:
    from monitoring.stats import expected_accuracy

    per_queue = {"billing": 0.95, "general": 0.6}
    assert expected_accuracy(per_queue, 0.9, {"general": 40}) == pytest.approx(0.6)
    assert expected_accuracy(per_queue, 0.9, {"billing": 30, "general": 10}) == pytest.approx(0.8625)
    assert expected_accuracy(per_queue, 0.9, {"legal": 10}) == pytest.approx(0.9)  # unknown queue: overall
    assert expected_accuracy(per_queue, 0.9, {}) == pytest.approx(0.9)
