"""The `analysis:` section of `configs/experiments.yaml`: how `mailroute experiment report` judges an experiment.

Strict like every config model (unknown keys are errors, every field described). The control arm itself is a field
of the experiment (`experiment.control`), since it is a property of the experiment, not of the analysis.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from serving.config import StrictModel

FeedbackPolicy = Literal["implicit", "audit", "both"]
PrimaryMetric = Literal["net_saving", "accuracy"]


class GuardrailsConfig(StrictModel):
    """Limits a challenger arm must stay within; breaking one recommends a rollback whatever it saves."""

    max_p95_latency_ms: float = Field(500.0, gt=0, description="Highest acceptable p95 latency of an arm, in ms.")
    max_triage_rate: float = Field(
        0.30, ge=0, le=1, description="Highest acceptable share of an arm's emails sent to the triage queue."
    )
    max_fallback_rate: float = Field(
        0.02, ge=0, le=1, description="Highest acceptable share of an arm's emails answered by a fallback."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Highest acceptable share of an arm's emails whose model raised an error."
    )


class AnalysisConfig(StrictModel):
    """Statistics and business rules of the experiment report."""

    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Error rate of every interval (two-sided): 0.05 gives 95% intervals."
    )
    srm_alpha: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="A sample-ratio-mismatch alarm fires when the chi-square p-value is below this.",
    )
    time_zone: str = Field("UTC", description="IANA time zone whose calendar days the report is cut into.")
    feedback_policy: FeedbackPolicy = Field(
        "implicit",
        description="Which emails have a routing verdict: 'implicit' (feedback, else an auto-routed email with no "
        "correction after implicit_correct_after_hours counts as correct), 'audit' (only audit feedback, an "
        "unbiased random sample), 'both' (the implicit verdicts, with the audit-only accuracy shown beside them "
        "and a warning when the two disagree).",
    )
    implicit_correct_after_hours: float = Field(
        48.0, gt=0, description="Age after which an auto-routed email without a correction counts as correct."
    )
    primary_metric: PrimaryMetric = Field(
        "net_saving", description="The figure a promotion or rollback is decided on: net saving or accuracy."
    )
    sequential_planned_users: int = Field(
        10_000,
        ge=10,
        description="Users (both arms together) at which the always-valid interval is tightest; it is valid at "
        "every other size too, only wider.",
    )
    min_verdicts: int = Field(
        100, ge=1, description="Fewest emails with a verdict per arm before any recommendation but 'keep running'."
    )
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig, description="Guardrail limits.")

    @field_validator("time_zone")
    @classmethod
    def _zone_exists(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone: '{name}' is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)
