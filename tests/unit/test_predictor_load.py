"""Loading a registered version for serving or evaluation: the cleaning it was trained with must be ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.mail.text import PREPROCESSING_VERSION
from serving.models.predictor import load_version
from serving.models.registry import ModelRegistry, RegistryError
from training.config import LinearConfig
from training.linear import fit_linear

pytestmark = pytest.mark.unit


def _register(reg: ModelRegistry, preprocessing_version: str) -> str:
    model = fit_linear(
        ["refund my invoice", "app crash error"] * 5, ["billing", "technical"] * 5, LinearConfig(min_df=1)
    )
    meta = reg.register(
        "linear",
        model.save,
        kind="linear",
        labels=model.labels,
        preprocessing_version=preprocessing_version,
        data_fingerprint="sha256:abc",
        metrics={},
        params={},
    )
    return f"{meta.name}:{meta.version}"


def test_a_version_cleaned_like_this_release_loads(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    predictor, meta = load_version(reg, _register(reg, PREPROCESSING_VERSION))
    assert meta.preprocessing_version == PREPROCESSING_VERSION
    assert predictor.labels == ["billing", "technical"]


def test_a_version_trained_on_other_cleaning_is_refused_in_one_line(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    ref = _register(reg, "1")
    with pytest.raises(RegistryError, match="preprocessing version 1") as err:
        load_version(reg, ref)
    assert "retrain" in str(err.value) and "\n" not in str(err.value)
