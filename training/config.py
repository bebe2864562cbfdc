"""`configs/training.yaml`: hyper-parameters and data settings for every model kind."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from serving.config import StrictModel, config_dir, load_config
from training.retrain.config import RetrainConfig
from training.transformer_config import TransformerConfig


class LinearConfig(StrictModel):
    """TF-IDF + logistic regression."""

    word_ngram_max: int = Field(2, ge=1, le=3, description="Word n-grams from 1 to this length.")
    char_ngram_min: int = Field(2, ge=1, le=6, description="Shortest character n-gram (within word boundaries).")
    char_ngram_max: int = Field(5, ge=1, le=8, description="Longest character n-gram (within word boundaries).")
    max_features_word: int = Field(200_000, ge=100, description="Vocabulary cap for word n-grams.")
    max_features_char: int = Field(300_000, ge=100, description="Vocabulary cap for character n-grams.")
    min_df: int = Field(2, ge=1, description="Ignore n-grams seen in fewer documents than this.")
    alpha: float = Field(1e-5, gt=0, description="L2 regularisation strength of the logistic regression.")
    epochs: int = Field(10, ge=1, le=200, description="Passes of stochastic gradient descent over the data.")
    n_jobs: int = Field(2, ge=1, description="Processes computing word and character features in parallel.")
    seed: int = Field(0, description="Seed of the gradient descent's shuffling.")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="'balanced' weighs classes by inverse frequency (imbalanced inboxes)."
    )

    @model_validator(mode="after")
    def _check(self) -> LinearConfig:
        if self.char_ngram_min > self.char_ngram_max:
            raise ValueError("char_ngram_min: must not exceed char_ngram_max")
        return self


class SplitConfig(StrictModel):
    """How `train` holds data out of training to calibrate and to report metrics."""

    holdout_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of the data held out; half calibrates, half is the test split."
    )
    seed: int = Field(1, description="Seed of the stratified split.")


class TrainingConfig(StrictModel):
    split: SplitConfig = Field(default_factory=SplitConfig, description="Held-out split.")
    linear: LinearConfig = Field(default_factory=LinearConfig, description="Linear model settings.")
    transformer: TransformerConfig = Field(
        default_factory=TransformerConfig, description="Transformer fine-tuning settings (Ray Train)."
    )
    retrain: RetrainConfig = Field(
        default_factory=RetrainConfig, description="Retraining from feedback (mailroute retrain)."
    )


def load_training(path: str | Path | None = None) -> TrainingConfig:
    return load_config(path or config_dir() / "training.yaml", TrainingConfig)
