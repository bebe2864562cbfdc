"""The jobs behind `mailroute train ...` and `mailroute evaluate`: read data, split, fit, score, register.

Each job returns a result object; the CLI only prints it, so tests and scripts call these directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import softmax

from monitoring.reference import reference_spec, training_reference, with_reference
from serving.config import Home, load_serving
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.linear import LinearTextClassifier
from serving.models.predictor import load_version
from serving.models.registry import ModelMeta, open_registry
from training.calibrate import fit_blend_weight, fit_temperature
from training.config import TrainingConfig
from training.data import DataError, LoadedData, read_dataset
from training.evaluate import EvalResult, evaluate_probabilities, write_report
from training.guard import Baselines, majority, training_warnings
from training.linear import fit_linear
from training.progress import TrainProgress
from training.split import fingerprint, stratified_split

if TYPE_CHECKING:
    from serving.models.transformer import TransformerPredictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """Where training or evaluation data comes from and which columns hold text and label."""

    path: Path
    text_col: str | None = None
    label_col: str = "label"

    def to_json(self) -> dict[str, Any]:
        """What a version records of its training data (`params.base_data`): retraining reads the same file again."""
        return {"path": str(Path(self.path).absolute()), "text_col": self.text_col, "label_col": self.label_col}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DataSpec | None:
        """The training data a version recorded; versions from before `base_data` recorded only the path."""
        base = params.get("base_data")
        if isinstance(base, dict) and base.get("path"):
            return cls(Path(base["path"]), base.get("text_col"), base.get("label_col") or "label")
        return cls(Path(params["data"])) if params.get("data") else None


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
    # For a transformer blended with a linear companion: each part scored alone on the same data.
    parts: dict[str, EvalResult] = field(default_factory=dict)


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
    test_proba = model.predict_proba(_pick(split.test, texts))
    test = evaluate_probabilities(model.labels, _pick(split.test, labels), test_proba, threshold)
    seconds = time.perf_counter() - started
    registry = open_registry(home)
    reference = training_reference(data.frame, split.test, test_proba, model.labels)  # for drift monitoring
    meta = registry.register(
        name,
        with_reference(model.save, reference),
        kind="linear",
        labels=model.labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=fingerprint(texts, labels),
        metrics={**test.summary(), "train_seconds": round(seconds, 2), "temperature": model.temperature},
        params={
            **cfg.linear.model_dump(),
            "data": str(spec.path),
            "base_data": spec.to_json(),
            "split": cfg.split.model_dump(),
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
    on_progress: Callable[[TrainProgress], None] | None = None,
    show_ray_logs: bool = True,
) -> TrainOutcome:
    """Fine-tune the transformer with Ray Train on the training split, score the test split, register a version.

    The run folder is named after the data fingerprint, so running the same command again after an interruption
    resumes from the last epoch's checkpoint. `on_progress` and `show_ray_logs` are `train_transformer`'s.
    """
    import shutil

    from serving.models.transformer import blend

    reference_spec()  # monitoring.yaml read now: a broken one is a ConfigError before any training
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
    fitted = fit_transformer(
        [texts[i] for i in train_idx], [labels[i] for i in train_idx], cfg, run_dir=run_folder(home, name, fp, cfg),
        label_names=sorted(set(labels)), timeout_s=timeout_s, on_progress=on_progress, show_ray_logs=show_ray_logs,
    )  # fmt: skip
    predictor, check, result, run_dir = fitted.predictor, fitted.check, fitted.result, fitted.run_dir
    threshold = load_serving().policy.confidence_threshold
    test_texts, test_labels = [texts[i] for i in split.test], [labels[i] for i in split.test]
    alone, companion = predictor.proba_parts(test_texts)
    others = {"transformer_only": evaluate_probabilities(predictor.labels, test_labels, alone, threshold)}
    if check.comparable:
        linear_test = check.linear.predict_proba(test_texts)
        others["linear_baseline"] = evaluate_probabilities(check.linear.labels, test_labels, linear_test, threshold)
    proba = alone if companion is None else blend(alone, companion, predictor.linear_weight)
    test = evaluate_probabilities(predictor.labels, test_labels, proba, threshold)
    seconds = time.perf_counter() - started

    def copy_export(folder: Path) -> None:
        shutil.copytree(fitted.export_dir, folder, dirs_exist_ok=True)

    reference = training_reference(data.frame, split.test, proba, predictor.labels)  # for drift monitoring
    meta = open_registry(home).register(
        name,
        with_reference(copy_export, reference),
        kind="transformer",
        labels=predictor.labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint=fp,
        metrics={
            **test.summary(),
            **{f"{name}_{k}": v for name, r in others.items() for k, v in r.summary().items() if k != "n"},
            **{f"run_{k}": v for k, v in result.metrics.items()},
            **check.metrics,
            "train_seconds": round(seconds, 1),
            "temperature": round(predictor.temperature, 4),
            "linear_weight": predictor.linear_weight,
        },
        params={
            **cfg.transformer.model_dump(mode="json"),
            "data": str(spec.path),
            "base_data": spec.to_json(),
            "split": cfg.split.model_dump(),
            "rows": len(texts),
            "train_rows": len(train_idx),
            "test_rows": len(split.test),
            "run_dir": str(run_dir),
        },
        parent=parent,
        warnings=check.warnings,
    )
    for warning in check.warnings:
        log.warning("%s:%s: %s", meta.name, meta.version, warning)
    return _train_outcome(home, spec, meta, test, seconds, len(data.skipped))


@dataclass(frozen=True)
class FittedTransformer:
    """A fine-tuned transformer with its calibration and (optionally) its linear companion, ready to register."""

    predictor: TransformerPredictor
    export_dir: Path
    check: _Check
    result: Any  # training.transformer.TransformerRunResult
    run_dir: Path


def run_folder(home: Home, name: str, fp: str, cfg: TrainingConfig) -> Path:
    """The run folder, named after the data fingerprint and the settings, so the same command resumes a run."""
    # Post-training options stay out of the run's name: changing them must not retrain the transformer.
    settings = hashlib.sha256(cfg.transformer.model_dump_json(exclude={"linear_blend"}).encode()).hexdigest()[:8]
    return home.runs / f"{name}-{fp.removeprefix('sha256:')[:12]}-{settings}"


def fit_transformer(
    texts: list[str],
    labels: list[str],
    cfg: TrainingConfig,
    *,
    run_dir: Path,
    label_names: list[str],
    timeout_s: float | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    show_ray_logs: bool = True,
) -> FittedTransformer:
    """Fine-tune with Ray Train on every given row (it holds out its own validation split), then calibrate, check
    against a linear baseline and blend (`_check_and_blend`). `train transformer` and `retrain` both call this."""
    from serving.models.transformer import TransformerPredictor
    from training.transformer import train_transformer

    result = train_transformer(
        texts, labels, cfg.transformer, run_dir=run_dir, label_names=label_names, timeout_s=timeout_s,
        on_progress=on_progress, show_ray_logs=show_ray_logs,
    )  # fmt: skip
    predictor = TransformerPredictor.load(result.export_dir, threads=max(1, cfg.transformer.threads_per_worker))
    check = _check_and_blend(predictor, result.export_dir, texts, labels, list(range(len(texts))), cfg)
    return FittedTransformer(predictor, result.export_dir, check, result, run_dir)


@dataclass(frozen=True)
class _Check:
    """What the post-training step found on the transformer's validation split."""

    linear: LinearTextClassifier
    comparable: bool  # the linear baseline has the transformer's labels, in its order
    warnings: list[str]
    metrics: dict[str, float]


def _check_and_blend(
    predictor: TransformerPredictor,
    export_dir: Path,
    texts: list[str],
    labels: list[str],
    train_idx: list[int],
    cfg: TrainingConfig,
) -> _Check:
    """On the validation split the run held out (the one that picked the best epoch): fit the temperature, train
    the linear baseline on the transformer's own training rows, warn when the transformer does not beat it or the
    majority class, and (with `linear_blend`) mix the linear model in with the weight that fits validation best.
    Writes calibration.json (and the blend) into `export_dir`."""
    from serving.models.transformer import blend, write_blend, write_temperature
    from training.torch_loop import split_train_val

    tcfg = cfg.transformer
    train_labels = [labels[i] for i in train_idx]
    fit_rows, val_rows = split_train_val(train_labels, tcfg.val_fraction, tcfg.seed)
    val_texts = [texts[train_idx[i]] for i in val_rows]
    val_names = [train_labels[i] for i in val_rows]
    val_y = np.asarray([predictor.labels.index(name) for name in val_names])
    val_logits = predictor.logits(val_texts)
    predictor.temperature = fit_temperature(val_logits, val_y)
    write_temperature(export_dir, predictor.temperature)
    linear = fit_linear(
        [texts[train_idx[i]] for i in fit_rows],
        [train_labels[i] for i in fit_rows],
        cfg.linear,
        calib_texts=val_texts,
        calib_labels=val_names,
    )
    alone_val = softmax(val_logits / predictor.temperature, axis=1)
    val_accuracy = float((alone_val.argmax(axis=1) == val_y).mean())
    majority_label, majority_rate = majority(val_names)
    metrics = {"val_accuracy_transformer": round(val_accuracy, 6), "val_majority_rate": round(majority_rate, 6)}
    warnings: list[str] = []
    if list(linear.labels) != list(predictor.labels):
        warnings.append("the linear baseline saw other labels than the transformer; it was not compared or blended")
        return _Check(linear, False, warnings, metrics)
    linear_val = linear.predict_proba(val_texts)
    linear_accuracy = float((linear_val.argmax(axis=1) == val_y).mean())
    metrics["val_accuracy_linear"] = round(linear_accuracy, 6)
    warnings += training_warnings(val_accuracy, Baselines(majority_label, majority_rate, linear_accuracy), len(val_y))
    if tcfg.linear_blend:
        weight = fit_blend_weight(alone_val, linear_val, val_y)
        if weight >= 1.0:
            warnings.append(
                "the blend gives the linear companion all the weight: this version answers exactly like the linear "
                "model, so serve the linear model instead of paying for a transformer replica"
            )
        blended_val = blend(alone_val, linear_val, weight)
        metrics["val_accuracy_blend"] = round(float((blended_val.argmax(axis=1) == val_y).mean()), 6)
        if weight > 0:
            # The companion that ships learns from all the transformer's rows, validation included (the weight and
            # the temperature were chosen above); trained without those rows it lost half a point on Bitext.
            companion = fit_linear([texts[i] for i in train_idx], train_labels, cfg.linear)
            companion.temperature = linear.temperature
            if list(companion.labels) == list(predictor.labels):
                write_blend(export_dir, companion, weight)
                predictor.linear, predictor.linear_weight = companion, weight
    return _Check(linear, True, warnings, metrics)


def evaluate_version(ref: str, spec: DataSpec, home: Home, *, threshold: float | None = None) -> EvalOutcome:
    """Score a registered version on a labelled file; writes metrics.json and confusion.png."""
    registry = open_registry(home)
    predictor, meta = load_version(registry, ref)
    data = load_labelled(spec)
    labels = [str(v) for v in data.frame["label"].tolist()]
    thr = load_serving().policy.confidence_threshold if threshold is None else threshold
    texts = data.frame["text"].tolist()
    parts: dict[str, EvalResult] = {}
    proba: np.ndarray | None = None
    if meta.kind == "transformer":
        from serving.models.transformer import TransformerPredictor, blend

        assert isinstance(predictor, TransformerPredictor)
        alone, companion = predictor.proba_parts(texts)
        if companion is not None:
            proba = blend(alone, companion, predictor.linear_weight)
            parts = {
                "transformer": evaluate_probabilities(predictor.labels, labels, alone, thr),
                "linear_companion": evaluate_probabilities(predictor.labels, labels, companion, thr),
            }
    if proba is None:
        proba = predictor.predict_proba(texts)
    result = evaluate_probabilities(predictor.labels, labels, proba, thr)
    report = write_report(
        result,
        _report_dir(home, "eval", meta),
        title=f"{meta.name}:{meta.version} on {spec.path.name}",
        extra={
            "model": f"{meta.name}:{meta.version}",
            "data": str(spec.path),
            **{f"{name}_{k}": v for name, r in parts.items() for k, v in r.summary().items() if k != "n"},
        },
    )
    return EvalOutcome(meta, result, report, str(spec.path), len(data.skipped), parts)
