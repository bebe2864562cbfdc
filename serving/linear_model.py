"""The cheap arm: TF-IDF (word and character n-grams) + logistic regression, with temperature-scaled probabilities.

This class is what the registry stores (joblib) and what serving loads, so it lives in `serving`: unpickling it
must not need training code. Training (`training/linear.py`) builds and fits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
from scipy.special import softmax
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion

MODEL_FILE = "model.joblib"


class LinearTextClassifier:
    """Features + a logistic regression whose scores are divided by a fitted temperature before the softmax.

    Logistic regression on many sparse features tends to be over-confident; one temperature fitted on held-out
    data (Guo et al., 2017) fixes most of that without changing any prediction's ranking.
    """

    def __init__(self, features: FeatureUnion, clf: SGDClassifier, temperature: float = 1.0) -> None:
        self.features = features
        self.clf = clf
        self.temperature = temperature

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.clf.classes_]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.clf.decision_function(self.features.transform(list(texts))), dtype=np.float64)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)))
        return np.asarray(softmax(self.logits(texts) / self.temperature, axis=1))

    def save(self, folder: Path) -> None:
        joblib.dump(self, folder / MODEL_FILE, compress=3)

    @classmethod
    def load(cls, folder: Path) -> LinearTextClassifier:
        model = joblib.load(folder / MODEL_FILE)
        if not isinstance(model, cls):
            raise TypeError(f"{folder / MODEL_FILE} does not hold a {cls.__name__}")
        return model
