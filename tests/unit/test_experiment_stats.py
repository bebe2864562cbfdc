"""The report's statistics: known answers worked by hand, and simulations of the error rates they promise.

Simulations are vectorised numpy with fixed seeds (a few seconds in all). What each pins:
- SRM (scipy's chi-square) alarms on a 4,500/5,500 split of a 50/50 plan and stays quiet on fair splits;
- the clustered interval of challenger − control covers the true difference in 93–97% of experiments whose
  users have several emails and a per-user effect (and the unclustered per-email interval does not);
- the always-valid interval, looked at every day for 30 days with no true difference, keeps its false-positive
  rate at or under alpha, while a fixed-horizon interval looked at daily does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm

from experiments.analysis.kpi import COLUMNS, Kpi, Term, evaluate, gradient, kpis
from experiments.analysis.stats import (
    Moments,
    cs_half_width,
    kpi_difference,
    kpi_interval,
    ratio_variance,
    srm_test,
    z_value,
)
from serving.config import load_queues

pytestmark = pytest.mark.unit
QUEUES = load_queues(Path(__file__).resolve().parents[2] / "configs" / "queues.yaml")
ACCURACY = kpis(QUEUES)["accuracy"]


def _users(correct: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """Per-user rows over COLUMNS with only n = verdict = auto = judged and correct filled."""
    x = np.zeros((len(correct), len(COLUMNS)))
    for name in ("n", "auto", "verdict"):
        x[:, COLUMNS.index(name)] = judged
    x[:, COLUMNS.index("correct")] = correct
    return x


def test_ratio_variance_by_hand_and_equal_to_statsmodels_cluster_robust() -> None:
    # Five users' (correct, judged): (1,2) (0,1) (3,3) (2,4) (1,1). r = 7/11.
    # Residuals Y - rN: -3/11, -7/11, 12/11, -6/11, 4/11; their squares sum to 254/121.
    # Var = G/(G-1) * 254/121 / 11^2 = 5/4 * 254/14641 = 1270/58564.
    correct, judged = np.array([1, 0, 3, 2, 1.0]), np.array([2, 1, 3, 4, 1.0])
    r, var = ratio_variance(7, 11, (correct**2).sum(), (correct * judged).sum(), (judged**2).sum(), 5)
    assert r == pytest.approx(7 / 11)
    assert var == pytest.approx(1270 / 58564, rel=1e-12)
    # The generic delta method on the same users gives the same variance.
    iv = kpi_interval(ACCURACY, Moments.from_users(COLUMNS, _users(correct, judged)), 0.05)
    assert iv.estimate == pytest.approx(7 / 11) and iv.se == pytest.approx(math.sqrt(1270 / 58564), rel=1e-12)
    assert iv.se is not None and iv.lo == pytest.approx(7 / 11 - 1.959964 * iv.se, rel=1e-6)
    # statsmodels: OLS of the per-email outcome on a constant, cluster-robust by user (CR0) = ours x (G-1)/G.
    per_email = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1.0])
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 4])
    assert per_email.sum() == 7
    fit = sm.OLS(per_email, np.ones(11)).fit(cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False})
    assert fit.params[0] == pytest.approx(7 / 11)
    assert fit.bse[0] ** 2 == pytest.approx(var * 4 / 5, rel=1e-10)


def test_product_rule_gradient_and_net_saving_by_hand() -> None:
    # net = (auto/n)(saved/verdict) - (auto/n)(mis/verdict) - 3 (triage/n): the worked example of
    # experiments.analysis.kpi.
    net = kpis(QUEUES)["net_saving"]
    sums = dict.fromkeys(COLUMNS, 0.0) | {"n": 10, "auto": 8, "triage": 2, "verdict": 4, "saved_min": 7.5,
                                          "mis_min": 3.5 * 60 / 36}  # fmt: skip
    assert evaluate(net, sums) == pytest.approx(1.5 - 8 / 10 * (35 / 6) / 4 - 0.6)
    # A numerical gradient agrees with the product rule.
    grad = gradient(net, sums)
    assert grad is not None
    for col, g in grad.items():
        h = 1e-6
        up, down = dict(sums), dict(sums)
        up[col] += h
        down[col] -= h
        assert g == pytest.approx((evaluate(net, up) - evaluate(net, down)) / (2 * h), rel=1e-6, abs=1e-9)  # type: ignore[operator]
    assert evaluate(Kpi("k", "k", "share", (Term(1.0, (("correct", "verdict"),)),)), sums | {"verdict": 0}) is None


def test_confidence_sequence_half_width_by_hand() -> None:
    # alpha 0.05, tightest at G* = 100 users, evaluated at G = 100 with V = 1:
    # 2 ln(1/a) = 5.99146; rho^2 = (5.99146 + ln 6.99146)/100 = 0.0793621; G rho^2 = 7.93621;
    # half-width = sqrt(8.93621/7.93621 * (5.99146 + ln 8.93621)) = sqrt(1.12600 * 8.18155) = 3.03521.
    assert float(cs_half_width(1.0, 100, 0.05, 100)) == pytest.approx(3.03521, abs=1e-5)
    # Wider than the fixed-horizon 1.96 everywhere, and it still shrinks like 1/sqrt(G) (up to a log factor).
    widths = cs_half_width(1 / np.array([100, 1000, 10000]), np.array([100, 1000, 10000]), 0.05, 1000)
    assert np.all(widths > z_value(0.05) / np.sqrt([100, 1000, 10000]))
    assert widths[2] < widths[1] < widths[0]


def test_srm_alarms_on_4500_5500_and_is_quiet_on_fair_splits() -> None:
    bad = srm_test({"a": 4500, "b": 5500}, {"a": 0.5, "b": 0.5}, 0.001)
    assert bad.alarm and bad.p_value is not None and bad.p_value < 1e-20 and bad.chi2 == pytest.approx(100.0)
    rng = np.random.default_rng(1)
    a = rng.binomial(10_000, 0.5, size=2000)
    quiet = [not srm_test({"a": int(x), "b": 10_000 - int(x)}, {"a": 0.5, "b": 0.5}, 0.001).alarm for x in a]
    assert np.mean(quiet) >= 0.99
    # Uneven plans too: 80/20 drawn fairly.
    b = rng.binomial(10_000, 0.8, size=500)
    assert np.mean([not srm_test({"a": int(x), "b": 10_000 - int(x)}, {"a": 0.8, "b": 0.2}, 0.001).alarm
                    for x in b]) >= 0.99  # fmt: skip
    # Users in an arm of weight 0 are an alarm in words, not a division by zero.
    stray = srm_test({"a": 10, "b": 3}, {"a": 1.0, "b": 0.0}, 0.001)
    assert stray.alarm and "weight 0" in stray.note


def _experiment(
    rng: np.random.Generator, users: int, mean_a: float, mean_b: float, conc: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Users with 1 + Poisson(3) emails each and a per-user accuracy ~ Beta (mean given, concentration conc)."""
    out = []
    for mean in (mean_a, mean_b):
        k = 1 + rng.poisson(3, size=users)
        p = rng.beta(mean * conc, (1 - mean) * conc, size=users)
        out.append((rng.binomial(k, p).astype(float), k.astype(float)))
    return out


def test_difference_interval_covers_the_true_difference_93_to_97_percent() -> None:
    rng = np.random.default_rng(7)
    mean_a, mean_b, users, sims = 0.85, 0.88, 300, 2000
    true = mean_b - mean_a  # E[k p] / E[k] = E[p] when the email count is independent of p
    covered = naive_covered = 0
    zero = np.zeros((users, len(COLUMNS)))
    for _ in range(sims):
        (ya, na), (yb, nb) = _experiment(rng, users, mean_a, mean_b, conc=6.0)
        xa, xb = _users(ya, na), _users(yb, nb)
        d = kpi_difference(ACCURACY, COLUMNS, np.vstack([xa, zero]), np.vstack([zero, xb]), 0.05, 10_000)
        assert d.fixed.lo is not None and d.fixed.hi is not None
        covered += d.fixed.lo <= true <= d.fixed.hi
        # The naive interval treats every email as independent (binomial per email).
        ra, rb = ya.sum() / na.sum(), yb.sum() / nb.sum()
        se = math.sqrt(ra * (1 - ra) / na.sum() + rb * (1 - rb) / nb.sum())
        naive_covered += abs(rb - ra - true) <= 1.959964 * se
    coverage, naive = covered / sims, naive_covered / sims
    print(f"clustered coverage {coverage:.3f}, per-email (unclustered) coverage {naive:.3f}")
    assert 0.93 <= coverage <= 0.97
    assert naive < 0.90  # one user's emails are not independent: ignoring it over-states precision


def test_sequential_interval_keeps_false_positives_under_alpha_with_daily_looks() -> None:
    """30 days, no true difference, a look every day: the fixed-horizon interval 'finds' a difference far more
    often than alpha; the always-valid interval does not."""
    rng = np.random.default_rng(11)
    sims, days, per_day, alpha = 1000, 30, 60, 0.05
    sums = []
    for _ in range(2):  # two arms with the same accuracy; new users arrive every day
        k = 1 + rng.poisson(2, size=(sims, days, per_day))
        p = rng.beta(0.85 * 5, 0.15 * 5, size=(sims, days, per_day))
        y = rng.binomial(k, p).astype(float)
        k = k.astype(float)
        daily = [a.sum(axis=2) for a in (y, k, y * y, y * k, k * k)]
        sums.append([np.cumsum(a, axis=1) for a in daily])
    users = per_day * np.arange(1, days + 1)[None, :]
    (ra, va), (rb, vb) = (ratio_variance(s[0], s[1], s[2], s[3], s[4], users) for s in sums)
    diff, var = rb - ra, va + vb
    fixed_fp = np.mean(np.any(np.abs(diff) > z_value(alpha) * np.sqrt(var), axis=1))
    seq_fp = np.mean(np.any(np.abs(diff) > cs_half_width(var, 2 * users, alpha, 2 * per_day * days), axis=1))
    last_day_fp = np.mean(np.abs(diff[:, -1]) > z_value(alpha) * np.sqrt(var[:, -1]))
    print(f"daily looks: fixed-horizon false positives {fixed_fp:.3f}, always-valid {seq_fp:.3f}; "
          f"fixed-horizon at day 30 only {last_day_fp:.3f}")  # fmt: skip
    assert seq_fp <= alpha
    assert fixed_fp > 2 * alpha
    assert last_day_fp == pytest.approx(alpha, abs=0.025)  # one look: the fixed interval is right


def test_interval_of_a_group_without_data_is_unknown_not_nan() -> None:
    empty = Moments.from_users(COLUMNS, np.zeros((0, len(COLUMNS))))
    assert not kpi_interval(ACCURACY, empty, 0.05).known
    no_verdict = Moments.from_users(COLUMNS, _users(np.zeros(3), np.zeros(3)))
    iv = kpi_interval(ACCURACY, no_verdict, 0.05)
    assert iv.estimate is None and iv.lo is None


def test_a_share_interval_stays_inside_0_and_1_and_no_variation_claims_no_interval() -> None:
    rng = np.random.default_rng(3)
    judged = rng.integers(1, 4, size=40).astype(float)
    correct = judged.copy()
    correct[0] -= 1  # one misroute among ~80 emails: the normal interval pokes above 100%
    iv = kpi_interval(ACCURACY, Moments.from_users(COLUMNS, _users(correct, judged)), 0.05)
    assert iv.lo is not None and iv.hi is not None and iv.estimate is not None
    assert 0.0 <= iv.lo < iv.estimate < iv.hi <= 1.0
    perfect = kpi_interval(ACCURACY, Moments.from_users(COLUMNS, _users(judged, judged)), 0.05)
    assert perfect.estimate == 1.0 and perfect.lo is None and perfect.hi is None  # not "100% [100%, 100%]"
