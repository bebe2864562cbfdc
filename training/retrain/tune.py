"""The linear model's retraining as Ray work: a small Ray Tune search over its L2 strength, then the final fit as a
Ray task. The same code runs on one machine and on a cluster (the data travels through Ray's object store).

Each trial fits on the training rows less a stratified 30% (half of it calibrates the temperature, half scores the
trial: macro-F1, so a small queue counts as much as a large one); the best strength is then fitted on every training
row but the calibration half. The held-out rows of `training.retrain.dataset` are never seen here: the gate scores
on them.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.models.linear import LinearTextClassifier
from serving.models.registry import runs_location
from training.config import LinearConfig
from training.split import stratified_split

TUNE_HOLDOUT = 0.3
METRIC = "macro_f1"


@dataclass(frozen=True)
class Trial:
    alpha: float
    macro_f1: float
    accuracy: float


@dataclass(frozen=True)
class TuneOutcome:
    model: LinearTextClassifier
    best_alpha: float
    trials: tuple[Trial, ...]


def _pick(seq: list[str], idx: Any) -> list[str]:
    return [seq[i] for i in idx]


def _trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Ray Tune trial: fit at config['alpha'], report the validation scores."""
    from ray import tune
    from sklearn.metrics import f1_score

    from training.linear import fit_linear

    texts, labels, split = data["texts"], data["labels"], data["split"]
    cfg = data["cfg"].model_copy(update={"alpha": config["alpha"], "n_jobs": 1})
    model = fit_linear(_pick(texts, split.train), _pick(labels, split.train), cfg,
                       calib_texts=_pick(texts, split.calib), calib_labels=_pick(labels, split.calib))  # fmt: skip
    truth = _pick(labels, split.test)
    pred = np.asarray(model.labels)[model.predict_proba(_pick(texts, split.test)).argmax(axis=1)]
    tune.report({METRIC: float(f1_score(truth, pred, average="macro")), "accuracy": float(np.mean(pred == truth))})


def _final_fit(texts: list[str], labels: list[str], cfg: LinearConfig, calib: Any) -> LinearTextClassifier:
    from training.linear import fit_linear

    keep = np.setdiff1d(np.arange(len(texts)), calib)
    return fit_linear(_pick(texts, keep), _pick(labels, keep), cfg,
                      calib_texts=_pick(texts, calib), calib_labels=_pick(labels, calib))  # fmt: skip


def tune_linear(
    texts: list[str], labels: list[str], cfg: LinearConfig, alphas: tuple[float, ...], *, storage: Path, name: str
) -> TuneOutcome:
    """Ray Tune over `alphas`, then the final fit as a Ray task. Ray must be initialised (local or a cluster)."""
    import ray
    from ray import tune

    split = stratified_split(labels, TUNE_HOLDOUT, cfg.seed)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data={"texts": texts, "labels": labels, "split": split, "cfg": cfg}), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"alpha": tune.grid_search(list(alphas))},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max"),
        run_config=tune.RunConfig(storage_path=runs_location(storage.absolute(), "tune"), name=name, verbose=0),
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Tune prints its settings table whatever `verbose` says
        grid = tuner.fit()
    trials = []
    for result in (grid[i] for i in range(len(grid))):
        if result.error is not None:
            raise RuntimeError(f"a Ray Tune trial failed: {type(result.error).__name__}: {result.error}")
        config, metrics = result.config or {}, result.metrics or {}
        trials.append(Trial(float(config["alpha"]), float(metrics[METRIC]), float(metrics["accuracy"])))
    best = max(trials, key=lambda t: (t.macro_f1, t.alpha))  # ties: the stronger regularisation (larger alpha)
    final = ray.remote(num_cpus=1)(_final_fit)
    model = ray.get(final.remote(texts, labels, cfg.model_copy(update={"alpha": best.alpha, "n_jobs": 1}), split.calib))
    return TuneOutcome(model, best.alpha, tuple(sorted(trials, key=lambda t: t.alpha)))
