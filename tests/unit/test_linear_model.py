"""The linear model: the one-email fast path computes exactly what sklearn computes; save/load round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from serving.mail.text import model_text
from serving.models import linear as linear_model
from serving.models.linear import LinearTextClassifier
from training.config import LinearConfig
from training.linear import fit_linear
from training.synth import generate

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def texts_labels() -> tuple[list[str], list[str]]:
    frame = generate(1200, seed=4)
    return [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)], frame["queue"].tolist()


def _sklearn_path(model: LinearTextClassifier, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(linear_model, "FAST_PATH_MAX_BATCH", 0)
        return model.predict_proba(texts)


def test_fast_path_matches_sklearn(texts_labels: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    texts, labels = texts_labels
    model = fit_linear(
        texts[:1000], labels[:1000], LinearConfig(n_jobs=1), calib_texts=texts[1000:], calib_labels=labels[1000:]
    )
    assert model.temperature != 1.0
    probe = [*texts[1000:1100], "", "zzzz qqqq", "!!!"]  # unseen words and empty text too
    fast = np.stack([model.predict_proba([t])[0] for t in probe])
    slow = _sklearn_path(model, probe, monkeypatch)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert np.allclose(fast.sum(axis=1), 1.0)


def test_two_classes_and_round_trip(
    texts_labels: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, labels = texts_labels
    keep = [i for i, label in enumerate(labels) if label in ("billing", "technical")]
    model = fit_linear([texts[i] for i in keep], [labels[i] for i in keep], LinearConfig(n_jobs=1))
    assert model.labels == ["billing", "technical"]
    fast = model.predict_proba(texts[:3])
    np.testing.assert_allclose(fast, _sklearn_path(model, texts[:3], monkeypatch), atol=1e-5)
    model.save(tmp_path)
    loaded = LinearTextClassifier.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(texts[:3]), fast)
    assert model.predict_proba([]).shape == (0, 2)


def test_a_version_pickled_under_the_old_module_path_still_loads(
    texts_labels: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, labels = texts_labels
    model = fit_linear(texts[:300], labels[:300], LinearConfig(n_jobs=1))
    # Pickle it as versions registered before the package was grouped were: class under serving.linear_model.
    with monkeypatch.context() as m:
        m.setitem(sys.modules, linear_model.LEGACY_MODULE, linear_model)
        m.setattr(LinearTextClassifier, "__module__", linear_model.LEGACY_MODULE)
        model.save(tmp_path)
    import joblib

    monkeypatch.delitem(sys.modules, linear_model.LEGACY_MODULE, raising=False)  # an earlier load sets the alias
    with pytest.raises(ModuleNotFoundError, match=r"serving\.linear_model"):  # the file really names the old module
        joblib.load(tmp_path / linear_model.MODEL_FILE)
    loaded = LinearTextClassifier.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(texts[:3]), model.predict_proba(texts[:3]))
