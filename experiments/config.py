"""`configs/experiments.yaml`: the running A/B experiment (arms, weights, salt, coverage, shadow) as pydantic.

The same model validates the YAML file and every change that arrives through the admin API or a Serve
`reconfigure()`, so a bad change fails loudly and changes nothing. The assignment math lives in
`experiments.assign`; this module only checks that a config can feed it.

A weight change must not reshuffle users, not even after a restart: `pinned(previous)` returns the config
with `layout` set to the minimal-move ranges, and whoever persists the config writes that layout with it;
`ranges()` then returns the pinned layout instead of laying the arms out afresh.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from experiments.analysis.config import AnalysisConfig
from experiments.assign import HASH_VERSION, ArmRange, arm_ranges, shares, validate_ranges
from experiments.rollout.config import RolloutConfig
from serving.config import StrictModel, config_dir, load_config

WEIGHT_SUM_TOLERANCE = 1e-6
LAYOUT_TOLERANCE = 1e-9
_SLUG = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


class ArmSpec(StrictModel):
    """One arm: which registered model version serves it and what share of the covered users it gets."""

    model: str = Field(min_length=1, description="Model name in the registry, e.g. 'linear' or 'transformer'.")
    version: str = Field(
        "champion",
        min_length=1,
        description="'champion' or 'latest' (resolved in the registry once, when the arm is deployed: the running "
        "experiment records the version id it pinned), or a version id.",
    )
    weight: float = Field(ge=0, le=1, description="Share of the covered users this arm gets; weights sum to 1.")


class ShadowSpec(StrictModel):
    """A model that sees a sample of traffic; its answer is logged beside the served one, never returned."""

    model: str = Field(min_length=1, description="Model name in the registry.")
    version: str = Field("latest", min_length=1, description="'champion', 'latest' or a version id.")
    sample_rate: float = Field(ge=0, le=1, description="Share of requests also sent to the shadow model.")


class RangeSpec(StrictModel):
    """One pinned range of the bucket layout: users with start <= bucket < end get `arm`."""

    arm: str = Field(description="Arm owning the range.")
    start: float = Field(ge=0, le=1, description="Inclusive lower end, in [0, 1].")
    end: float = Field(ge=0, le=1, description="Exclusive upper end, in [0, 1].")


class ExperimentConfig(StrictModel):
    """One experiment: arms and their weights, the salt that hashes users, coverage and the holdout."""

    name: str = Field(description="Slug naming the experiment in events, metrics and reports.")
    salt: str = Field(
        description="Mixed into every user's hash; a new salt re-randomises every user, so keep it for the "
        "experiment's life. Must not contain ':'."
    )
    arms: dict[str, ArmSpec] = Field(description="Arms by name (slugs); their weights sum to 1.")
    coverage: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of users in the experiment; the rest is a holdout served by `holdout_arm`.",
    )
    holdout_arm: str = Field(
        description="Arm that serves users outside the experiment (the holdout, or everyone while inactive)."
    )
    control: str | None = Field(
        None,
        description="Arm the others are compared with in the experiment report; unset means holdout_arm.",
    )
    fallback_order: list[str] | None = Field(
        None,
        description="Arms to try, in order (skipping the one that failed), when the assigned arm fails; none "
        "left means the triage queue. "
        "Unset: the serving default.",
    )
    shadow: ShadowSpec | None = Field(None, description="Optional shadow model; unset means no shadow traffic.")
    active: bool = Field(True, description="False pauses the experiment: every user is served by `holdout_arm`.")
    hash_version: int = Field(HASH_VERSION, description="Version of the bucket hash; only 1 exists.")
    layout: tuple[RangeSpec, ...] | None = Field(
        None,
        description="Pinned bucket ranges (written by `pinned()` after a weight change so that a restart "
        "keeps every user's arm); unset means arms lie contiguously in name order.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, name: str) -> str:
        if not _SLUG.match(name):
            raise ValueError(f"name must be a slug (lowercase letters, digits, '-', '_'), got {name!r}")
        return name

    @field_validator("salt")
    @classmethod
    def _salt_usable(cls, salt: str) -> str:
        if not salt.strip() or ":" in salt:
            raise ValueError(f"salt must be non-empty and contain no ':', got {salt!r}")
        return salt

    @field_validator("arms")
    @classmethod
    def _arms_valid(cls, arms: dict[str, ArmSpec]) -> dict[str, ArmSpec]:
        if not arms:
            raise ValueError("at least one arm is needed")
        bad = [a for a in arms if not _SLUG.match(a)]
        if bad:
            raise ValueError(f"arm names must be slugs (lowercase letters, digits, '-', '_'), got {bad[0]!r}")
        total = sum(a.weight for a in arms.values())
        if abs(total - 1) > WEIGHT_SUM_TOLERANCE:
            detail = ", ".join(f"{n}={a.weight:g}" for n, a in arms.items())
            raise ValueError(f"arm weights sum to {total:.6g} ({detail}), expected 1 (±{WEIGHT_SUM_TOLERANCE:g})")
        return arms

    @field_validator("holdout_arm")
    @classmethod
    def _holdout_exists(cls, arm: str, info: ValidationInfo) -> str:
        _check_known([arm], info)
        return arm

    @field_validator("control")
    @classmethod
    def _control_exists(cls, arm: str | None, info: ValidationInfo) -> str | None:
        if arm is not None:
            _check_known([arm], info)
        return arm

    @field_validator("fallback_order")
    @classmethod
    def _fallbacks_exist(cls, order: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if order is not None:
            _check_known(order, info)
            if len(set(order)) != len(order):
                raise ValueError(f"fallback_order lists an arm twice: {order}")
        return order

    @field_validator("hash_version")
    @classmethod
    def _hash_known(cls, version: int) -> int:
        if version != HASH_VERSION:
            raise ValueError(f"hash_version {version} is not supported (this build implements {HASH_VERSION})")
        return version

    @field_validator("layout")
    @classmethod
    def _layout_matches(
        cls, layout: tuple[RangeSpec, ...] | None, info: ValidationInfo
    ) -> tuple[RangeSpec, ...] | None:
        arms, coverage = info.data.get("arms"), info.data.get("coverage")
        if layout is None or arms is None or coverage is None:
            return layout
        _check_known([r.arm for r in layout], info)
        ranges = _to_arm_ranges(layout)
        validate_ranges(ranges)
        owned = shares(ranges)
        total = sum(a.weight for a in arms.values())
        for name, arm in arms.items():
            want = arm.weight / total * coverage
            if abs(owned.get(name, 0.0) - want) > LAYOUT_TOLERANCE:
                raise ValueError(
                    f"layout gives arm '{name}' {owned.get(name, 0.0):.9g} of users but weight x coverage is "
                    f"{want:.9g}; drop the layout or re-pin it"
                )
        return layout

    @property
    def control_arm(self) -> str:
        """The arm challengers are compared with: `control`, else `holdout_arm`."""
        return self.control or self.holdout_arm

    @property
    def weights(self) -> dict[str, float]:
        """Arm weights normalised to sum to exactly 1 (the config allows ±1e-6, the assignment ±1e-9)."""
        total = sum(a.weight for a in self.arms.values())
        return {name: arm.weight / total for name, arm in self.arms.items()}

    def ranges(self, previous: Sequence[ArmRange] | None = None) -> tuple[ArmRange, ...]:
        """Bucket ranges: moved minimally from `previous` if given, else the pinned layout or the default."""
        if previous is None and self.layout is not None:
            return _to_arm_ranges(self.layout)
        return arm_ranges(self.weights, self.coverage, previous)

    def pinned(self, previous: Sequence[ArmRange]) -> ExperimentConfig:
        """This config with `layout` set to the ranges that move fewest users from `previous`."""
        layout = tuple(RangeSpec(arm=r.arm, start=r.start, end=r.end) for r in self.ranges(previous))
        return ExperimentConfig.model_validate({**self.model_dump(), "layout": layout})


class ExperimentsFile(StrictModel):
    """`configs/experiments.yaml`: one running experiment for now; a list can join it later."""

    experiment: ExperimentConfig = Field(description="The experiment the router runs.")
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig, description="How the experiment report judges the experiment."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="How a canary is widened, promoted or rolled back."
    )


def load_experiments(path: str | Path | None = None) -> ExperimentsFile:
    """Read `experiments.yaml` (from `config_dir()` unless given); failures are one-line `ConfigError`s."""
    return load_config(path or config_dir() / "experiments.yaml", ExperimentsFile)


def _check_known(names: list[str], info: ValidationInfo) -> None:
    arms = info.data.get("arms")
    if arms is None:  # arms failed validation already; that error is the one to report
        return
    for name in names:
        if name not in arms:
            raise ValueError(f"arm {name!r} is not one of the arms {sorted(arms)}")


def _to_arm_ranges(layout: Sequence[RangeSpec]) -> tuple[ArmRange, ...]:
    return tuple(ArmRange(r.arm, r.start, r.end) for r in sorted(layout, key=lambda r: r.start))
