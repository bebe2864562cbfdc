"""Temperature scaling: one scalar that makes a classifier's probabilities match how often it is right."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) on held-out data."""

    def nll(log_t: float) -> float:
        logp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-logp[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def fit_blend_weight(first: np.ndarray, second: np.ndarray, y: np.ndarray, steps: int = 20) -> float:
    """The weight w in {0, 1/steps, ..., 1} for which (1 - w) * first + w * second has the lowest negative
    log-likelihood on held-out data (two models' probabilities, same columns). Ties go to the smaller w."""
    rows = np.arange(len(y))
    best_w, best_nll = 0.0, float("inf")
    for w in np.linspace(0.0, 1.0, steps + 1):
        p = (1.0 - w) * first[rows, y] + w * second[rows, y]
        nll = float(-np.log(np.clip(p, 1e-12, None)).mean())
        if nll < best_nll - 1e-9:
            best_w, best_nll = round(float(w), 6), nll
    return best_w
