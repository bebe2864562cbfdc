"""Score a model's probabilities against true labels: accuracy, macro-F1, per-queue precision/recall, calibration,
and the coverage/accuracy trade-off of the triage threshold. Pure functions plus one report writer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

CURVE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class EvaluationError(ValueError):
    """Evaluation data that cannot be scored against this model."""


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ThresholdPoint:
    threshold: float
    coverage: float  # share auto-routed (top probability >= threshold); the rest goes to triage
    accuracy: float  # accuracy on the auto-routed share


@dataclass(frozen=True)
class EvalResult:
    n: int
    accuracy: float
    macro_f1: float
    ece: float  # expected calibration error, 15 equal-width confidence bins
    threshold: float
    coverage: float
    triage_share: float
    accuracy_on_routed: float
    per_class: tuple[ClassMetrics, ...]
    curve: tuple[ThresholdPoint, ...]
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "coverage": self.coverage,
            "accuracy_on_routed": self.accuracy_on_routed,
            "n": self.n,
        }


def _threshold_point(conf: np.ndarray, correct: np.ndarray, threshold: float) -> ThresholdPoint:
    routed = conf >= threshold
    coverage = float(routed.mean()) if len(conf) else 0.0
    accuracy = float(correct[routed].mean()) if routed.any() else float("nan")
    return ThresholdPoint(threshold, round(coverage, 6), round(accuracy, 6))


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(float(correct[mask].mean()) - float(conf[mask].mean()))
    return float(total)


def evaluate_probabilities(
    model_labels: Sequence[str], y_true: Sequence[str], proba: np.ndarray, threshold: float
) -> EvalResult:
    """Score `proba` (rows aligned with `y_true`, columns with `model_labels`)."""
    if len(y_true) == 0:
        raise EvaluationError("no examples to evaluate")
    labels = list(model_labels)
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise EvaluationError(f"evaluation data has labels the model does not know: {shown}")
    pred = np.array(labels)[proba.argmax(axis=1)]
    truth = np.asarray(list(y_true))
    correct = pred == truth
    conf = proba.max(axis=1)
    present = [label for label in labels if label in set(truth)]
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=present, zero_division=0)
    per_class = tuple(
        ClassMetrics(label, round(float(pi), 6), round(float(ri), 6), round(float(fi), 6), int(si))
        for label, pi, ri, fi, si in zip(present, p, r, f, s, strict=True)
    )
    point = _threshold_point(conf, correct, threshold)
    cm = confusion_matrix(truth, pred, labels=labels)
    return EvalResult(
        n=len(truth),
        accuracy=round(float(correct.mean()), 6),
        macro_f1=round(float(np.mean(f)), 6),
        ece=round(expected_calibration_error(conf, correct), 6),
        threshold=threshold,
        coverage=point.coverage,
        triage_share=round(1.0 - point.coverage, 6),
        accuracy_on_routed=point.accuracy,
        per_class=per_class,
        curve=tuple(_threshold_point(conf, correct, t) for t in CURVE_THRESHOLDS),
        labels=tuple(labels),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
    )


def plot_confusion(result: EvalResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(result.confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(result.labels)
    size = max(5.0, min(24.0, 0.35 * k + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), result.labels, rotation=90, fontsize=8 if k > 20 else 10)
    ax.set_yticks(range(k), result.labels, fontsize=8 if k > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: EvalResult, out_dir: Path, *, title: str, extra: dict[str, Any]) -> Path:
    """Write metrics.json and confusion.png into `out_dir`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps({**extra, **result.to_json()}, indent=2), encoding="utf-8")
    plot_confusion(result, out_dir / "confusion.png", title)
    return path
