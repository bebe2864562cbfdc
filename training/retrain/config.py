"""The `retrain:` section of `configs/training.yaml`: what `mailroute retrain` builds, checks, tries and accepts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from serving.config import StrictModel


class ValidationLimits(StrictModel):
    """The data checks that stop a retrain before any training (`training.retrain.validate`)."""

    min_feedback: int = Field(50, ge=1, description="Fewest feedback-labelled emails (with text) to retrain on.")
    min_train_per_queue: int = Field(20, ge=1, description="Fewest training emails of every taxonomy queue.")
    min_feedback_per_queue: int = Field(
        5,
        ge=0,
        description="Fewest feedback-labelled emails of every queue, so that the recent mail in the held-out set "
        "covers each queue the gate compares on (0 accepts feedback for some queues only).",
    )
    max_duplicate_share: float = Field(
        0.2, ge=0, le=1, description="Largest share of rows that repeat another row's text and label (dropped)."
    )
    max_conflict_rate: float = Field(
        0.05, ge=0, le=1, description="Largest share of texts that carry two labels within one source."
    )
    max_feedback_disagreement: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of the feedback on emails also in the base data whose label differs from the "
        "base label (above it the base data or the agents are wrong about something systematic).",
    )
    max_malformed_share: float = Field(
        0.05, ge=0, le=1, description="Largest share of base-data records the reader had to skip."
    )


class GateConfig(StrictModel):
    """The offline gate: the candidate is registered only when it beats the champion on the held-out set."""

    metric: Literal["accuracy", "macro_f1", "net_saving"] = Field(
        "accuracy", description="Compared on the same held-out set: net_saving is minutes per email at the policy."
    )
    margin: float = Field(0.005, ge=0, description="The candidate must beat the champion by at least this much.")
    slice: Literal["all", "recent"] = Field(
        "all", description="all: base test rows and recent feedback together; recent: the recent feedback only."
    )


class RetrainConfig(StrictModel):
    """`mailroute retrain`: base data + feedback → checks → Ray training → offline gate → registered candidate."""

    recent_share: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="The newest share of the feedback-labelled emails held out for evaluation (the mail the "
        "champion sees now); the rest trains.",
    )
    max_recent: int = Field(5000, ge=1, description="At most this many recent emails held out.")
    recent_sources: tuple[Literal["agent", "audit", "labelling"], ...] = Field(
        ("audit",),
        min_length=1,
        description="Feedback sources whose newest emails are held out. Only an unbiased sample makes a fair test: "
        "agents mostly send corrections (the champion's own mistakes) and labelling picks its least certain "
        "emails, either of which would make the champion look worse than it is. Other feedback trains.",
    )
    linear_alphas: tuple[float, ...] = Field(
        (1e-5, 3e-5, 1e-4, 3e-4),
        min_length=1,
        description="Ray Tune tries each L2 strength of the linear model on a validation split of the training rows.",
    )
    transformer_epochs: int = Field(2, ge=1, description="Epochs of a transformer retrain (warm-started).")
    transformer_learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of a warm-started retrain.")
    warm_start: bool = Field(True, description="Start the transformer from the champion's weights (else the base's).")
    validation: ValidationLimits = Field(default_factory=ValidationLimits, description="Data checks.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The offline gate.")

    @field_validator("linear_alphas")
    @classmethod
    def _positive(cls, alphas: tuple[float, ...]) -> tuple[float, ...]:
        if any(a <= 0 for a in alphas):
            raise ValueError("linear_alphas: every L2 strength must be positive")
        return alphas
