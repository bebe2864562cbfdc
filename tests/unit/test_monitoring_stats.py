"""Family-wise alarm control and the two p-values the job adds to Evidently's, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

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
