"""The statistics the monitoring job adds to Evidently's: family-wise alarm control and two p-values.

Pure functions, pinned by known-answer tests (tests/unit/test_monitoring_stats.py).

- Bonferroni: a run that performs m p-value tests alarms on a test when p < alpha / m, so the probability that a
  run without drift raises any p-value alarm is at most alpha, whatever the dependence between the tests.
- Text-content drift as a p-value: Evidently trains a domain classifier (reference vs current) on half the rows and
  reports its ROC AUC on the other half. With no drift the held-out rows of both sides are exchangeable for the
  fitted classifier, so the AUC is a Mann-Whitney U statistic over n_ref x n_cur pairs: mean 1/2, variance
  (n_ref + n_cur + 1) / (12 n_ref n_cur) (ties only shrink it, so the p-value is conservative). The one-sided
  p-value is the normal tail above the observed AUC. Evidently's `abs_text_content_drift` instead alarms at a fixed
  AUC, whose false-alarm rate depends on the window size.
- Accuracy from feedback: a one-sided exact binomial test that the window's accuracy is below the expected
  accuracy minus a tolerance (the expected accuracy is the reference's per-queue accuracy weighted by the
  feedback's queue mix, `expected_accuracy`).
- The predicted-queue mix as a two-sample test (`contingency_p_value`): a chi-square test of homogeneity on the
  2 x k table of reference and current counts, rare queues pooled. Evidently's `chisquare` is a goodness-of-fit
  test that takes the reference's shares as exact, so the reference's own sampling noise reads as drift (about
  98% of clean 20,000-email windows alarmed against a 2,000-row reference at 0.01 / 27), and a queue absent from
  the reference gives p = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import binomtest, chi2_contingency, norm

MIN_EXPECTED = 5.0  # a category whose expected count is below this on either side is pooled with the other rare ones


def bonferroni(alpha: float, tests: int) -> float:
    """The per-test p-value threshold that keeps the family-wise false-alarm rate of `tests` tests at `alpha`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha / max(tests, 1)


def auc_p_value(auc: float, n_reference: int, n_current: int) -> float:
    """P(AUC >= auc) for a classifier that cannot tell the two sides apart (normal approximation of Mann-Whitney)."""
    if n_reference < 1 or n_current < 1:
        raise ValueError("auc_p_value needs at least one held-out row on each side")
    sd = math.sqrt((n_reference + n_current + 1) / (12.0 * n_reference * n_current))
    return float(norm.sf((auc - 0.5) / sd))


def accuracy_p_value(correct: int, total: int, expected: float) -> float:
    """P(at most `correct` of `total` right) for a router whose true accuracy is `expected` (one-sided, exact)."""
    if total < 1:
        raise ValueError("accuracy_p_value needs at least one feedback record")
    expected = min(max(expected, 0.0), 1.0)
    return float(binomtest(correct, total, expected, alternative="less").pvalue)


def _pool(table: np.ndarray, min_expected: float) -> np.ndarray:
    """Columns (categories) of a 2 x k count table with an expected count below `min_expected` on either side
    pooled into one; a pooled column still below it joins the smallest remaining column."""
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1, keepdims=True)
    share = rows / rows.sum()
    expected_min = (share.min() * table.sum(axis=0)) if table.size else np.zeros(0)
    rare = expected_min < min_expected
    if not rare.any():
        return table
    kept, pooled = table[:, ~rare], table[:, rare].sum(axis=1, keepdims=True)
    while kept.shape[1] and pooled.sum() * share.min() < min_expected:
        smallest = int(kept.sum(axis=0).argmin())
        pooled = pooled + kept[:, smallest : smallest + 1]
        kept = np.delete(kept, smallest, axis=1)
    return np.hstack([kept, pooled])


def contingency_p_value(
    reference: Sequence[int] | np.ndarray, current: Sequence[int] | np.ndarray, min_expected: float = MIN_EXPECTED
) -> float:
    """Two-sample chi-square p-value that two count vectors (same categories, same order) come from one mix.

    Pearson's test of homogeneity on the 2 x k table (scipy's chi2_contingency, no continuity correction),
    after pooling the categories whose expected count is below `min_expected`. Fewer than two categories left,
    or an empty side: nothing to compare, p = 1.
    """
    table = np.vstack([np.asarray(reference, dtype=float), np.asarray(current, dtype=float)])
    if table.ndim != 2 or table.shape[0] != 2 or table.sum(axis=1).min() <= 0:
        return 1.0
    table = _pool(table, min_expected)
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def expected_accuracy(per_queue: Mapping[str, float], overall: float, mix: Mapping[str, int]) -> float:
    """The accuracy a router with the reference's per-queue accuracy would have on feedback with this true-queue
    mix: the per-queue accuracies weighted by the feedback's counts (a queue absent from the reference counts at
    the reference's overall accuracy)."""
    total = sum(mix.values())
    if total <= 0:
        return overall
    return sum(per_queue.get(queue, overall) * n for queue, n in mix.items()) / total
