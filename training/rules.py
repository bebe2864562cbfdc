"""Rules files offline: score one on labelled data, register it as a version of kind `rules`, suggest a first one.

A rule's confidence is its precision, so it is measured on one half of the labelled data (the calibration half) and
the rules are scored on the other half, as a model's calibration and test halves are kept apart: a rule's precision
measured on the very emails it is scored on would flatter it. The per-rule table covers all the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.reference import training_reference, with_reference
from serving.config import Home, QueuesConfig
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.registry import ModelMeta, open_registry
from serving.models.rules import (
    RuleScore,
    RulesFile,
    RulesPredictor,
    load_rules,
    measure_precision,
    write_rules_version,
)
from serving.policy import NO_RULE
from training.evaluate import EvalResult, evaluate_probabilities
from training.pipeline import DataSpec, load_labelled

SPLIT_SEED = 7


@dataclass(frozen=True)
class RulesOutcome:
    rules: RulesFile
    result: EvalResult  # on the test half, with each rule's precision from the calibration half
    scores: dict[str, RuleScore]  # each rule on all the data
    matched: float  # share of the test half some rule answered
    matched_accuracy: float  # of those, the share it sent to the right queue
    n: int
    frame: pd.DataFrame  # the labelled data, and the test rows scored with their probabilities (for the reference
    held_out: list[int]  # sample drift monitoring compares served mail with, as a model's version carries)
    proba: np.ndarray


def evaluate_rules(path: Path, spec: DataSpec, queues: QueuesConfig, threshold: float) -> RulesOutcome:
    """Score the rules file at `path` on labelled data (module docstring)."""
    names = list(queues.names)
    rules = load_rules(path, names)
    frame = load_labelled(spec).frame
    # A label outside the taxonomy has no queue a rule could rightly send it to: such rows are left out of every
    # figure alike (the model evaluation refuses them).
    frame = frame[frame["label"].astype(str).isin(names)].reset_index(drop=True)
    texts, labels = [str(t) for t in frame["text"]], [str(v) for v in frame["label"]]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    calib, test = order[: len(order) // 2], order[len(order) // 2 :]
    calibrated = measure_precision(rules, [texts[i] for i in calib], [labels[i] for i in calib])
    predictor = RulesPredictor(rules, {k: s.precision for k, s in calibrated.items()}, names)
    held_out = [int(i) for i in test]
    proba, notes = predictor.predict_with_notes([texts[i] for i in held_out])
    unmatched = np.array([note == NO_RULE for note in notes], dtype=bool)
    # Served, no rule is triage whatever the threshold (policy.with_answerer): a row of zeros is below any.
    scored_proba = np.where(unmatched[:, None], 0.0, proba)
    result = evaluate_probabilities(names, [labels[i] for i in held_out], scored_proba, threshold)
    fired = int((~unmatched).sum())
    right = sum(1 for i, row, hit in zip(held_out, proba, ~unmatched, strict=True)
                if hit and names[int(row.argmax())] == labels[i])  # fmt: skip
    return RulesOutcome(
        rules=rules,
        result=result,
        scores=measure_precision(rules, texts, labels),
        matched=fired / max(len(held_out), 1),
        matched_accuracy=right / fired if fired else 0.0,
        n=len(texts),
        frame=frame,
        held_out=held_out,
        proba=proba,
    )


def register_rules(
    path: Path, spec: DataSpec, queues: QueuesConfig, home: Home, threshold: float, name: str = "rules"
) -> tuple[ModelMeta, RulesOutcome]:
    """Measure the rules on labelled data and register them as a new version of `name` (kind `rules`): rules.yaml
    as checked, and each rule's precision on all the data as its confidence when served."""
    outcome = evaluate_rules(path, spec, queues, threshold)
    # The reference sample as this version will serve: each rule's confidence is its precision on all the data,
    # not the calibration half's the offline scores used (drift checks compare served answers with these).
    served = RulesPredictor(outcome.rules, {k: s.precision for k, s in outcome.scores.items()}, list(queues.names))
    texts = [str(outcome.frame["text"].iloc[i]) for i in outcome.held_out]
    meta = open_registry(home).register(
        name,
        with_reference(
            lambda folder: write_rules_version(folder, outcome.rules, outcome.scores),
            training_reference(outcome.frame, outcome.held_out, served.predict_proba(texts), list(queues.names)),
        ),
        kind="rules",
        labels=list(queues.names),
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=f"rules:{spec.path.name}:{outcome.n}",
        metrics={
            **outcome.result.summary(),
            "matched_share": outcome.matched,
            "matched_accuracy": outcome.matched_accuracy,
        },
        params={"rules_file": str(path), "base_data": spec.to_json()},
    )
    return meta, outcome
