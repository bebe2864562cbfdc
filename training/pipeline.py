"""The jobs behind `mailroute train ...` and `mailroute evaluate`: read data, split, fit, score, register.

Each job returns a result object; the CLI only prints it, so tests and scripts call these directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import Home, load_serving
from serving.predictor import load_version
from serving.registry import ModelMeta, ModelRegistry
from serving.text import PREPROCESSING_VERSION
from training.calibrate import fit_temperature
from training.config import TrainingConfig
from training.data import DataError, LoadedData, read_dataset
from training.evaluate import EvalResult, evaluate_probabilities, write_report
from training.linear import fit_linear
from training.split import fingerprint, stratified_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """Where training or evaluation data comes from and which columns hold text and label."""

    path: Path
    text_col: str | None = None
    label_col: str = "label"


@dataclass(frozen=True)
class TrainOutcome:
    meta: ModelMeta
    test: EvalResult
    report: Path
    seconds: float
    skipped: int


@dataclass(frozen=True)
class EvalOutcome:
    meta: ModelMeta
    result: EvalResult
    report: Path
    data: str
    skipped: int


def load_labelled(spec: DataSpec, *, min_classes: int = 1) -> LoadedData:
    data = read_dataset(spec.path, text_col=spec.text_col, label_col=spec.label_col, require_labels=True)
    classes = data.frame["label"].unique()
    if len(classes) < min_classes:
        raise DataError(
            f"{spec.path}: the labels have one class ('{classes[0]}'): training needs at least {min_classes} classes"
        )
    if data.skipped:
        log.warning("%s: skipped %d malformed records", spec.path, len(data.skipped))
    return data


def _pick(indices: Any, seq: list[str]) -> list[str]:
    return [seq[i] for i in indices]


def _report_dir(home: Home, kind: str, meta: ModelMeta) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return home.reports / f"{kind}-{meta.name}-{meta.version}-{stamp}"


def _train_outcome(
    home: Home, spec: DataSpec, meta: ModelMeta, test: EvalResult, seconds: float, skipped: int
) -> TrainOutcome:
    report = write_report(
        test,
        _report_dir(home, "train", meta),
        title=f"{meta.name}:{meta.version} held-out test split",
        extra={"model": f"{meta.name}:{meta.version}", "data": str(spec.path), "split": "held-out test"},
    )
    return TrainOutcome(meta, test, report, seconds, skipped)


def train_linear(
    spec: DataSpec, cfg: TrainingConfig, home: Home, *, name: str = "linear", parent: str | None = None
) -> TrainOutcome:
    """Fit the linear model on the training split, score the test split, register a new version."""
    started = time.perf_counter()
    data = load_labelled(spec, min_classes=2)
    texts = data.frame["text"].tolist()
    labels = [str(v) for v in data.frame["label"].tolist()]
    split = stratified_split(labels, cfg.split.holdout_fraction, cfg.split.seed)
    if len(split.test) == 0:
        raise DataError(f"{spec.path}: too little data to hold out a test split (need 3+ examples per label)")
    model = fit_linear(
        _pick(split.train, texts),
        _pick(split.train, labels),
        cfg.linear,
        calib_texts=_pick(split.calib, texts),
        calib_labels=_pick(split.calib, labels),
    )
    threshold = load_serving().policy.confidence_threshold
    test = evaluate_probabilities(
        model.labels, _pick(split.test, labels), model.predict_proba(_pick(split.test, texts)), threshold
    )
    seconds = time.perf_counter() - started
    registry = ModelRegistry(home.registry)
    meta = registry.register(
        name,
        model.save,
        kind="linear",
        labels=model.labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=fingerprint(texts, labels),
        metrics={**test.summary(), "train_seconds": round(seconds, 2), "temperature": model.temperature},
        params={
            **cfg.linear.model_dump(),
            "data": str(spec.path),
            "rows": len(texts),
            "train_rows": len(split.train),
            "test_rows": len(split.test),
        },
        parent=parent,
    )
    return _train_outcome(home, spec, meta, test, seconds, len(data.skipped))


def train_transformer_job(
    spec: DataSpec,
    cfg: TrainingConfig,
    home: Home,
    *,
    name: str = "transformer",
    parent: str | None = None,
    timeout_s: float | None = None,
) -> TrainOutcome:
    """Fine-tune the transformer with Ray Train on the training split, score the test split, register a version.

    The run folder is named after the data fingerprint, so running the same command again after an interruption
    resumes from the last epoch's checkpoint.
    """
    import shutil

    from serving.transformer_predictor import TransformerPredictor, write_temperature
    from training.torch_loop import split_train_val
    from training.transformer import train_transformer

    started = time.perf_counter()
    data = load_labelled(spec, min_classes=2)
    texts = data.frame["text"].tolist()
    labels = [str(v) for v in data.frame["label"].tolist()]
    split = stratified_split(labels, cfg.split.holdout_fraction, cfg.split.seed)  # the linear model's test rows
    if len(split.test) == 0:
        raise DataError(f"{spec.path}: too little data to hold out a test split (need 3+ examples per label)")
    # The transformer holds out its own validation split for early stopping; calib rows join training.
    train_idx = sorted([*split.train, *split.calib])
    fp = fingerprint(texts, labels)
    settings = hashlib.sha256(cfg.transformer.model_dump_json().encode()).hexdigest()[:8]
    run_dir = home.runs / f"{name}-{fp.removeprefix('sha256:')[:12]}-{settings}"
    result = train_transformer(
        [texts[i] for i in train_idx],
        [labels[i] for i in train_idx],
        cfg.transformer,
        run_dir=run_dir,
        label_names=sorted(set(labels)),
        timeout_s=timeout_s,
    )
    predictor = TransformerPredictor.load(result.export_dir, threads=max(1, cfg.transformer.threads_per_worker))
    # Temperature scaling on the validation split the run held out (the one that picked the best epoch).
    train_labels = [labels[i] for i in train_idx]
    _, val_idx = split_train_val(train_labels, cfg.transformer.val_fraction, cfg.transformer.seed)
    val_logits = predictor.logits([texts[train_idx[i]] for i in val_idx])
    val_y = np.asarray([predictor.labels.index(train_labels[i]) for i in val_idx])
    predictor.temperature = fit_temperature(val_logits, val_y)
    write_temperature(result.export_dir, predictor.temperature)
    threshold = load_serving().policy.confidence_threshold
    test = evaluate_probabilities(
        predictor.labels,
        [labels[i] for i in split.test],
        predictor.predict_proba([texts[i] for i in split.test]),
        threshold,
    )
    seconds = time.perf_counter() - started

    def copy_export(folder: Path) -> None:
        shutil.copytree(result.export_dir, folder, dirs_exist_ok=True)

    meta = ModelRegistry(home.registry).register(
        name,
        copy_export,
        kind="transformer",
        labels=predictor.labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=fp,
        metrics={
            **test.summary(),
            **{f"run_{k}": v for k, v in result.metrics.items()},
            "train_seconds": round(seconds, 1),
            "temperature": round(predictor.temperature, 4),
        },
        params={
            **cfg.transformer.model_dump(mode="json"),
            "data": str(spec.path),
            "rows": len(texts),
            "train_rows": len(train_idx),
            "test_rows": len(split.test),
            "run_dir": str(run_dir),
        },
        parent=parent,
    )
    return _train_outcome(home, spec, meta, test, seconds, len(data.skipped))


def evaluate_version(ref: str, spec: DataSpec, home: Home, *, threshold: float | None = None) -> EvalOutcome:
    """Score a registered version on a labelled file; writes metrics.json and confusion.png."""
    registry = ModelRegistry(home.registry)
    predictor, meta = load_version(registry, ref)
    data = load_labelled(spec)
    labels = [str(v) for v in data.frame["label"].tolist()]
    thr = load_serving().policy.confidence_threshold if threshold is None else threshold
    proba = predictor.predict_proba(data.frame["text"].tolist())
    result = evaluate_probabilities(predictor.labels, labels, proba, thr)
    report = write_report(
        result,
        _report_dir(home, "eval", meta),
        title=f"{meta.name}:{meta.version} on {spec.path.name}",
        extra={"model": f"{meta.name}:{meta.version}", "data": str(spec.path)},
    )
    return EvalOutcome(meta, result, report, str(spec.path), len(data.skipped))
