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
- Accuracy from feedback: a one-sided exact binomial test that the window's accuracy is below the reference
  accuracy minus a tolerance.
"""

from __future__ import annotations

import math

from scipy.stats import binomtest, norm


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
