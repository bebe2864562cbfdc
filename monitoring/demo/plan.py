"""What a demo run does, in numbers: corpus sizes, the transformer's training, the clock's speed, the timeline and
the rules that make it fast. `DEMO` is `make demo`'s; `QUICK` runs the same loop on small data in a few minutes for
the end-to-end test (tests/ray/test_loop.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DemoPlan:
    train: int  # emails the linear champion learns from
    transformer_train: int
    transformer: dict[str, Any]  # overrides of training.yaml's transformer section
    fresh: int  # traffic pools
    drifted: int
    drift: float
    speed: float  # the app's clock against the wall clock
    users: int
    senders: int  # customers writing at the same moment
    drift_after_h: float  # simulated hours of clean mail
    after_promotion_h: float
    detect_within_h: float  # how long the drift may go unnoticed before the demo gives up
    rollout_within_h: float
    monitoring: dict[str, Any] = field(default_factory=dict)  # overrides of monitoring.yaml
    analysis: dict[str, Any] = field(default_factory=dict)  # overrides of experiments.yaml's analysis
    rollout: dict[str, Any] = field(default_factory=dict)  # experiments.yaml's rollout rule for the demo
    # The demo's agents report on every email they handle, right or wrong: their feedback is an unbiased sample.
    retrain: dict[str, Any] = field(default_factory=lambda: {"recent_sources": ["agent", "audit"]})

    @property
    def planned_h(self) -> float:
        """About how long a run lasts in simulated time (the clock starts this far back, to end near the real now)."""
        return self.drift_after_h + self.detect_within_h / 2 + self.rollout_within_h / 2 + self.after_promotion_h


DEMO = DemoPlan(
    train=8000,
    transformer_train=1500,
    transformer={"epochs": 1, "max_length": 128, "max_windows": 1},
    fresh=8000,
    drifted=24000,
    drift=0.8,
    speed=1800.0,  # a simulated hour every two seconds
    users=600,
    senders=4,
    drift_after_h=48.0,
    after_promotion_h=24.0,
    detect_within_h=40.0,
    rollout_within_h=120.0,
    monitoring={
        "window": "12h",
        "schedule": {"monitor_every": "12h", "kpi_report_every": "24h", "first_run_after": "1h"},
        "checks": {"quality": {"sources": ["agent", "audit"]}},
    },
    analysis={"min_verdicts": 60, "sequential_planned_users": 600},
    # The canary starts at 25% of the linear arm's users (about 75 customers), enough to judge it within a few
    # simulated days; the shipped rule starts at 10% and waits a day per step.
    rollout={
        "steps": [25, 50, 100],
        "check_every": "1h",
        "min_step_duration": "2h",
        "min_emails": 40,
        "min_verdicts": 60,
        "non_inferiority_margin": 0.75,
        "promote_requires": "non_inferior",
    },
)

QUICK = DemoPlan(
    train=3000,
    transformer_train=400,
    transformer={"tiny": True, "epochs": 1, "max_length": 64, "max_windows": 1, "linear_blend": False},
    fresh=5000,
    drifted=8000,
    drift=0.9,
    speed=3600.0,
    users=300,
    senders=3,
    drift_after_h=24.0,
    after_promotion_h=4.0,
    detect_within_h=40.0,
    rollout_within_h=120.0,
    monitoring={
        "window": "6h",
        "min_rows": 30,
        "html": False,
        "schedule": {"monitor_every": "6h", "kpi_report_every": "48h", "first_run_after": "1h"},
        "checks": {"quality": {"sources": ["agent", "audit"]}},
    },
    analysis={"min_verdicts": 30, "sequential_planned_users": 300},
    rollout={
        "steps": [20, 50, 100],
        "check_every": "1h",
        "min_step_duration": "1h",
        "min_emails": 20,
        "min_verdicts": 30,
        "non_inferiority_margin": 1.0,
        "promote_requires": "non_inferior",
    },
    retrain={
        "recent_sources": ["agent", "audit"],
        "validation": {"min_feedback": 50, "min_train_per_queue": 10, "min_feedback_per_queue": 3},
    },
)


def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out
