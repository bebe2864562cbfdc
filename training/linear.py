"""Fit the linear arm: TF-IDF word + character n-grams, logistic regression (SGD), temperature scaling."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion

from serving.models.linear import LinearTextClassifier
from training.calibrate import fit_temperature
from training.config import LinearConfig

log = logging.getLogger(__name__)


def build_features(cfg: LinearConfig) -> FeatureUnion:
    common = {"sublinear_tf": True, "min_df": cfg.min_df, "dtype": np.float32, "lowercase": True}
    return FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    analyzer="word",
                    ngram_range=(1, cfg.word_ngram_max),
                    max_features=cfg.max_features_word,
                    token_pattern=r"(?u)\b\w+\b",
                    **common,
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(cfg.char_ngram_min, cfg.char_ngram_max),
                    max_features=cfg.max_features_char,
                    **common,
                ),
            ),
        ],
        n_jobs=cfg.n_jobs,
    )


def fit_linear(
    texts: Sequence[str],
    labels: Sequence[str],
    cfg: LinearConfig,
    *,
    calib_texts: Sequence[str] = (),
    calib_labels: Sequence[str] = (),
) -> LinearTextClassifier:
    """Fit features and classifier on the training split, then the temperature on the calibration split."""
    features = build_features(cfg)
    x = features.fit_transform(list(texts))
    features.set_params(n_jobs=None)  # parallel transform costs milliseconds per call: serving predicts one email
    # Multinomial-free logistic regression fitted by SGD (one-vs-rest log loss): on 100k emails it fits in
    # seconds where lbfgs took minutes, at the same accuracy (measured on the synthetic corpus: 0.889 vs 0.883).
    clf = SGDClassifier(
        loss="log_loss",
        alpha=cfg.alpha,
        max_iter=cfg.epochs,
        tol=None,
        class_weight="balanced" if cfg.class_weight == "balanced" else None,
        random_state=cfg.seed,
    )
    clf.fit(x, list(labels))
    model = LinearTextClassifier(features, clf)
    if len(calib_texts):
        index = {label: i for i, label in enumerate(model.labels)}
        known = [i for i, label in enumerate(calib_labels) if label in index]
        if known:
            logits = model.logits([calib_texts[i] for i in known])
            y = np.array([index[calib_labels[i]] for i in known])
            model.temperature = fit_temperature(logits, y)
    log.info("linear model: %d features, temperature %.3f", x.shape[1], model.temperature)
    return model
