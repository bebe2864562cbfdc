"""The cheap arm: TF-IDF (word and character n-grams) + logistic regression, with temperature-scaled probabilities.

This class is what the registry stores (joblib) and what serving loads, so it lives in `serving`: unpickling it
must not need training code. Training (`training/linear.py`) builds and fits it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from scipy.special import softmax
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion

MODEL_FILE = "model.joblib"
# Versions registered before the serving package was grouped pickled this class under its old module path.
LEGACY_MODULE = "serving.linear_model"
FAST_PATH_MAX_BATCH = 8  # above this, sklearn's vectorised sparse path is faster than the per-email loop


@dataclass(frozen=True)
class _FastVectorizer:
    analyzer: Callable[[str], list[str]]
    vocabulary: dict[str, int]
    idf: np.ndarray
    offset: int  # where this vectorizer's columns start in the union


def _as_logits(scores: np.ndarray) -> np.ndarray:
    """sklearn returns one score column for two classes: P(second) = sigmoid(s) = softmax([0, s])."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return np.column_stack([np.zeros_like(scores), scores])
    return scores


class LinearTextClassifier:
    """Features + a logistic regression whose scores are divided by a fitted temperature before the softmax.

    Logistic regression on many sparse features tends to be over-confident; one temperature fitted on held-out
    data (Guo et al., 2017) fixes most of that without changing any prediction's ranking.
    """

    def __init__(self, features: FeatureUnion, clf: SGDClassifier, temperature: float = 1.0) -> None:
        self.features = features
        self.clf = clf
        self.temperature = temperature
        self._fast: tuple[list[_FastVectorizer], np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fast": None}  # rebuilt on first use: analyzers are closures

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_fast": None, **state})

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.clf.classes_]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) <= FAST_PATH_MAX_BATCH:
            return np.stack([self._fast_logits(text) for text in texts]) if texts else np.zeros((0, len(self.labels)))
        return _as_logits(self.clf.decision_function(self.features.transform(list(texts))))

    def _fast_logits(self, text: str) -> np.ndarray:
        """The same arithmetic as TfidfVectorizer (sublinear tf, idf, l2) + decision_function, for one email.

        sklearn's per-call validation and sparse-matrix plumbing cost ~3 ms for a single email; serving routes
        one email at a time, so this path gathers the few active coefficient columns directly.
        """
        if self._fast is None:
            self._fast = self._build_fast()
        parts, coef, intercept = self._fast
        scores = intercept.copy()
        for part in parts:
            counts = Counter(i for g in part.analyzer(text) if (i := part.vocabulary.get(g)) is not None)
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            values = (np.log(tf) + 1.0) * part.idf[idx]
            values /= np.sqrt(values @ values)
            scores += coef[:, idx + part.offset] @ values
        return scores if len(scores) > 1 else np.array([0.0, scores[0]])

    def _build_fast(self) -> tuple[list[_FastVectorizer], np.ndarray, np.ndarray]:
        parts, offset = [], 0
        for _, vec in self.features.transformer_list:
            if not (vec.sublinear_tf and vec.norm == "l2" and vec.use_idf):
                raise ValueError("the fast path assumes sublinear tf, idf and l2 norm")
            parts.append(_FastVectorizer(vec.build_analyzer(), vec.vocabulary_, vec.idf_.astype(np.float64), offset))
            offset += len(vec.vocabulary_)
        coef = np.asarray(self.clf.coef_, dtype=np.float64)
        return parts, coef, np.asarray(self.clf.intercept_, dtype=np.float64)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)))
        return np.asarray(softmax(self.logits(texts) / self.temperature, axis=1))

    def save(self, folder: Path) -> None:
        joblib.dump(self, folder / MODEL_FILE, compress=3)

    @classmethod
    def load(cls, folder: Path) -> LinearTextClassifier:
        sys.modules.setdefault(LEGACY_MODULE, sys.modules[__name__])  # so those pickles still load
        model = joblib.load(folder / MODEL_FILE)
        if not isinstance(model, cls):
            raise TypeError(f"{folder / MODEL_FILE} does not hold a {cls.__name__}")
        return model
