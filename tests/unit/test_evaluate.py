"""Evaluation metrics, the triage trade-off, calibration, splits and fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.calibrate import fit_temperature
from training.evaluate import (
    EvaluationError,
    evaluate_probabilities,
    expected_calibration_error,
    write_report,
)
from training.split import fingerprint, stratified_split

pytestmark = pytest.mark.unit
LABELS = ["billing", "shipping", "technical"]


def test_metrics_by_hand() -> None:
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    y = ["billing", "shipping", "technical", "technical"]
    r = evaluate_probabilities(LABELS, y, proba, threshold=0.6)
    assert r.accuracy == 0.75
    assert r.coverage == 0.75  # the 0.4 row goes to triage
    assert r.triage_share == 0.25
    assert r.accuracy_on_routed == 1.0
    per = {c.label: c for c in r.per_class}
    assert per["technical"].recall == 0.5 and per["billing"].precision == 0.5
    assert r.confusion == ((1, 0, 0), (0, 1, 0), (1, 0, 1))
    assert r.curve[0].coverage == 1.0


def test_unknown_label_and_empty_data_are_refused() -> None:
    with pytest.raises(EvaluationError, match="labels the model does not know: refunds"):
        evaluate_probabilities(LABELS, ["refunds"], np.array([[1.0, 0, 0]]), 0.5)
    with pytest.raises(EvaluationError, match="no examples"):
        evaluate_probabilities(LABELS, [], np.zeros((0, 3)), 0.5)


def test_calibration_error_and_temperature() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 4000)
    logits = rng.normal(size=(4000, 3))
    logits[np.arange(4000), y] += 1.0
    over = logits * 4  # an over-confident model
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.0  # undoes most of the factor 4

    def ece(lg: np.ndarray) -> float:
        p = np.exp(lg - lg.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return expected_calibration_error(p.max(1), p.argmax(1) == y)

    assert ece(over / t) < ece(over) / 2


def test_report_files(tmp_path: Path) -> None:
    r = evaluate_probabilities(LABELS, ["billing"], np.array([[0.8, 0.1, 0.1]]), 0.5)
    path = write_report(r, tmp_path / "rep", title="t", extra={"model": "m"})
    assert path.name == "metrics.json" and (tmp_path / "rep" / "confusion.png").stat().st_size > 1000


def test_stratified_split_is_deterministic_and_keeps_every_class() -> None:
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 2
    s1, s2 = stratified_split(labels, 0.2, seed=3), stratified_split(labels, 0.2, seed=3)
    assert all(
        (x == y).all() for x, y in zip((s1.train, s1.calib, s1.test), (s2.train, s2.calib, s2.test), strict=True)
    )
    assert sorted(np.concatenate([s1.train, s1.calib, s1.test]).tolist()) == list(range(62))
    test_labels = {labels[i] for i in s1.test}
    assert test_labels == {"a", "b"}  # "c" has too few examples to hold out
    assert {labels[i] for i in s1.train} == {"a", "b", "c"}


def test_fingerprint() -> None:
    assert fingerprint(["x", "y"], ["a", "b"]) == fingerprint(["x", "y"], ["a", "b"])
    assert fingerprint(["x", "y"], ["a", "b"]) != fingerprint(["x", "y"], ["b", "a"])
    assert fingerprint(["xy"], ["a"]) != fingerprint(["x"], ["ya"])
