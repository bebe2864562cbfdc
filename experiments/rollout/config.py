"""The `rollout:` section of `configs/experiments.yaml`: how a canary is widened, promoted or rolled back.

A rollout puts a candidate version in front of a share of the users of the arm it would replace (`steps`, in percent
of that arm's users), and the rollout job (`experiments.rollout.job`, scheduled beside the app) decides at every
check by the rule in `experiments.rollout.rule`, on the experiment report's figures for canary against that arm.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from serving.clock import parse_duration
from serving.config import StrictModel


class RolloutConfig(StrictModel):
    """When a canary widens, is promoted, or is rolled back."""

    steps: tuple[float, ...] = Field(
        (10.0, 25.0, 50.0, 100.0),
        description="The canary's share of the replaced arm's users at each step, in percent, increasing; the last "
        "must be 100, and reaching it promotes the candidate (it then serves all of that arm's users as champion).",
    )
    check_every: str = Field("1h", description="How often the rollout job looks at the figures (a duration).")
    min_step_duration: str = Field(
        "24h", description="The least time at a step before it may widen (a duration; daily patterns differ)."
    )
    min_emails: int = Field(200, ge=1, description="Canary emails at the current step before it may widen.")
    min_verdicts: int = Field(
        100, ge=1, description="Judged emails, in the canary and in the arm it replaces, since the rollout began."
    )
    non_inferiority_margin: float = Field(
        0.0,
        ge=0,
        description="The canary widens while the always-valid interval of (canary - arm) on the primary metric "
        "lies above minus this margin (in the metric's unit: minutes per email for net_saving, a share for "
        "accuracy). 0: it must be shown better.",
    )
    promote_requires: Literal["better", "non_inferior"] = Field(
        "better",
        description="At the last step: 'better' promotes only when the always-valid interval lies above 0; "
        "'non_inferior' when it lies above minus the margin.",
    )
    canary_suffix: str = Field("-canary", description="The canary arm is named <arm><suffix>.")

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_100(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps or any(not 0 < s <= 100 for s in steps):
            raise ValueError("steps: each step is a percentage in (0, 100]")
        if list(steps) != sorted(set(steps)):
            raise ValueError("steps: must increase")
        if steps[-1] != 100:
            raise ValueError("steps: the last step must be 100 (the promotion)")
        return steps

    @field_validator("check_every", "min_step_duration")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("canary_suffix")
    @classmethod
    def _suffix_is_slug_tail(cls, value: str) -> str:
        if not re.fullmatch(r"(?:[-_][a-z0-9]+)+", value):  # appended to an arm's slug, it must keep it a slug
            raise ValueError("canary_suffix: '-' or '_' then lowercase letters or digits, e.g. -canary")
        return value
