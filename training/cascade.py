"""Choose a cascade's threshold on labelled validation data, and register the cascade (kind `cascade`).

Both stages score every validation email once, in batches of `BATCH` as the arm replica serves them, each timed in
process CPU time (one torch thread, as a replica runs): the CPU milliseconds per email of each stage alone. For each
threshold t of `THRESHOLDS`, the cascade answers with the first stage where its confidence is at least t and with
the second elsewhere; its accuracy, the share of emails it sends on, and its cost per email (the first stage's,
plus that share of the second's) make the curve. The chosen point is the most accurate threshold whose cost is
within the budget (by default a third of the second stage's cost per email), the cheapest of equals: the cheapest
point that merely ties the better stage on validation data sits on the edge, where the noise of a few hundred emails
decides, while the most accurate point the budget allows keeps a margin. The plan says whether the chosen point is at
least as accurate as the better stage alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.reference import training_reference, with_reference
from serving.config import Home
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.cascade import (
    CascadePredictor,
    CascadeSpec,
    check_stage_kind,
    check_stage_labels,
    write_cascade_version,
)
from serving.models.predictor import Predictor, load_version
from serving.models.registry import ModelMeta, ModelRegistry, open_registry
from training.evaluate import EvalResult, EvaluationError, evaluate_probabilities

THRESHOLDS = tuple(round(float(t), 3) for t in np.arange(0.05, 0.995, 0.01))  # low: with many queues, a top
# probability can sit below 0.3, so "hardly ever send on" must be on the curve
BATCH = 16


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    escalated: float  # share of emails the second stage answers
    accuracy: float
    cpu_ms: float  # per email: the first stage's, plus the escalated share of the second's


@dataclass(frozen=True)
class CascadePlan:
    first: str  # pinned, name:vN
    second: str
    n: int
    first_accuracy: float
    second_accuracy: float
    first_ms: float
    second_ms: float
    curve: tuple[CurvePoint, ...]
    chosen: CurvePoint
    reached: bool  # the chosen point is at least as accurate as the better stage alone

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "curve"}, "curve": [asdict(p) for p in self.curve]}


def timed_proba(predictor: Predictor, texts: Sequence[str], batch: int = BATCH) -> tuple[np.ndarray, float]:
    """Probabilities for `texts` in served-size batches, and the process CPU milliseconds per text they took."""
    started = time.process_time()
    parts = [predictor.predict_proba(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    ms = (time.process_time() - started) * 1000.0 / max(len(texts), 1)
    return np.vstack(parts), ms


def cascade_curve(
    first: np.ndarray, second: np.ndarray, truth: np.ndarray, first_ms: float, second_ms: float,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[CurvePoint]:  # fmt: skip
    """The cascade at each threshold; `first`, `second`: probabilities with the same columns; `truth`: column ids."""
    confidence, right_1, right_2 = first.max(axis=1), first.argmax(axis=1) == truth, second.argmax(axis=1) == truth
    points = []
    for t in thresholds:
        up = confidence < t
        accuracy = float(np.where(up, right_2, right_1).mean())
        points.append(CurvePoint(float(t), float(up.mean()), accuracy, first_ms + float(up.mean()) * second_ms))
    return points


def choose_point(points: Sequence[CurvePoint], budget_ms: float) -> CurvePoint:
    """The most accurate point that costs at most `budget_ms` per email (the cheapest of equals); the cheapest point
    when none is within it."""
    within = [p for p in points if p.cpu_ms <= budget_ms + 1e-12]
    if not within:
        return min(points, key=lambda p: (p.cpu_ms, p.threshold))
    return max(within, key=lambda p: (round(p.accuracy, 12), -p.cpu_ms))


DEFAULT_COST_SHARE = 1 / 3  # of the second stage's CPU per email


def plan_cascade(
    registry: ModelRegistry, first_ref: str, second_ref: str, texts: Sequence[str], labels: Sequence[str],
    cost_share: float = DEFAULT_COST_SHARE,
) -> tuple[CascadePlan, CascadePredictor, np.ndarray]:  # fmt: skip
    """Score both stages on the validation emails and choose the threshold within `cost_share` of the second
    stage's cost (module docstring). Returns the plan, the cascade at the chosen threshold and its probabilities on
    the emails."""
    loaded = []
    for ref in (first_ref, second_ref):
        name, version = registry.resolve(ref)
        check_stage_kind(f"{name}:{version}", registry.read_meta(name, version).kind)  # before loading anything
        predictor, meta = load_version(registry, f"{name}:{version}", threads=1)
        loaded.append((predictor, f"{meta.name}:{meta.version}"))
    (first, first_pinned), (second, second_pinned) = loaded
    check_stage_labels(first_pinned, first.labels, second_pinned, second.labels)
    names = list(first.labels)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise EvaluationError(f"the validation data has labels the stages do not know: {', '.join(unknown[:5])}")
    truth = np.array([names.index(label) for label in labels])
    p1, ms1 = timed_proba(first, texts)
    p2, ms2 = timed_proba(second, texts)
    p2 = p2[:, [list(second.labels).index(label) for label in names]]
    points = cascade_curve(p1, p2, truth, ms1, ms2)
    acc1, acc2 = float((p1.argmax(axis=1) == truth).mean()), float((p2.argmax(axis=1) == truth).mean())
    chosen = choose_point(points, cost_share * ms2)
    reached = chosen.accuracy >= max(acc1, acc2) - 1e-12
    plan = CascadePlan(first_pinned, second_pinned, len(texts), acc1, acc2, ms1, ms2, tuple(points), chosen, reached)
    cascade = CascadePredictor(first, second, chosen.threshold, first_pinned, second_pinned)
    proba = np.where((p1.max(axis=1) < chosen.threshold)[:, None], p2, p1)
    return plan, cascade, proba


def register_cascade(
    home: Home, plan: CascadePlan, frame: pd.DataFrame, proba: np.ndarray, policy_threshold: float,
    name: str = "cascade", data: dict[str, Any] | None = None,
) -> tuple[ModelMeta, EvalResult]:  # fmt: skip
    """Register the planned cascade, with its scores on the validation emails and their reference sample."""
    registry = open_registry(home)
    labels = list(registry.read_meta(*plan.first.split(":")).labels)
    result = evaluate_probabilities(labels, [str(v) for v in frame["label"]], proba, policy_threshold)
    spec = CascadeSpec(first=plan.first, second=plan.second, threshold=plan.chosen.threshold)
    rows = list(range(len(frame)))
    meta = registry.register(
        name,
        with_reference(
            lambda folder: write_cascade_version(folder, spec), training_reference(frame, rows, proba, labels)
        ),
        kind="cascade",
        labels=labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=f"cascade:{plan.first}+{plan.second}:{plan.n}",
        metrics={
            **result.summary(),
            "escalated_share": plan.chosen.escalated,
            "cpu_ms_per_email": plan.chosen.cpu_ms,
            "first_accuracy": plan.first_accuracy,
            "second_accuracy": plan.second_accuracy,
            "first_cpu_ms": plan.first_ms,
            "second_cpu_ms": plan.second_ms,
            "goal_reached": float(plan.reached),
        },
        params={**spec.model_dump(mode="json"), **({"validation_data": data} if data else {})},
    )
    return meta, result
