"""The training guard: words of warning when a new transformer version is no better than doing nothing.

A fine-tuned transformer can end below always answering the largest queue, or below a linear model that trains in
seconds (too few emails, a learning rate that diverges, texts cut before the sentence that matters). Nobody should
ship such a version without knowing; these warnings are printed after training, stored with the version and shown
by `mailroute models show`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Baselines:
    """What the transformer's validation accuracy is compared with, on the same validation rows."""

    majority_label: str
    majority_rate: float  # accuracy of always answering the largest class
    linear_accuracy: float  # a linear model trained on the transformer's own training rows


def majority(labels: Sequence[str]) -> tuple[str, float]:
    """The most frequent label and its share."""
    label, count = Counter(labels).most_common(1)[0]
    return label, count / len(labels)


def training_warnings(val_accuracy: float, base: Baselines, n_val: int) -> list[str]:
    """One sentence per baseline the transformer failed to beat on validation (empty when it beat both)."""
    out = []
    if val_accuracy <= base.majority_rate:
        out.append(
            f"the transformer's validation accuracy {val_accuracy:.3f} is not above always answering "
            f"'{base.majority_label}' ({base.majority_rate:.3f}) on {n_val} validation emails: it has learnt "
            "nothing usable; check the labels, the learning rate and the amount of data"
        )
    if val_accuracy < base.linear_accuracy:
        out.append(
            f"the transformer's validation accuracy {val_accuracy:.3f} is below a linear model trained on the "
            f"same rows ({base.linear_accuracy:.3f}) on {n_val} validation emails: serve the linear model, or "
            "train on more data"
        )
    return out
