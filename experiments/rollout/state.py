"""Where a rollout stands: the event store's `rollout` state document (`serving.ops.state`), so every node sees
the same rollout; written only under the change lock.

One rollout at a time. It records the candidate, the arm it would replace and that arm's version before, the canary
arm, the steps and the current one, the status (running, promoted, rolled back) and every step taken with its
reason; the rollout job also keeps its last check there, so `mailroute rollout status` and the dashboard say why the
rollout waits.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.store.eventlog import EventLog

Status = Literal["running", "promoted", "rolled back"]


class Step(BaseModel):
    """One thing that happened to the rollout, with its reason in words."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: str
    action: str  # start | widen | promote | roll back | check
    percent: float  # the canary's share of the arm's users after it
    actor: str
    reason: str


class RolloutState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The registry model name.")
    candidate: str = Field(description="The candidate's version id, e.g. v2.")
    previous: str = Field(description="The version the arm served when the rollout began.")
    arm: str = Field(description="The arm the candidate would replace.")
    canary_arm: str = Field(description="The arm serving the candidate during the rollout.")
    arm_weight: float = Field(description="The arm's weight when the rollout began: the arm and the canary share it.")
    steps: tuple[float, ...]
    step: int = Field(description="Index into steps of the current share.")
    status: Status
    started: str
    step_started: str
    history: tuple[Step, ...] = ()
    last_check: Step | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.candidate}"

    @property
    def percent(self) -> float:
        return self.steps[self.step]

    @property
    def running(self) -> bool:
        return self.status == "running"


class RolloutStateError(ValueError):
    """An unreadable rollout file; one line."""


ROLLOUT_KEY = "rollout"


def load(store: EventLog) -> RolloutState | None:
    """The last rollout (running or finished), or None when there has been none."""
    doc = store.read_state(ROLLOUT_KEY)
    if doc is None:
        return None
    try:
        return RolloutState.model_validate(doc)
    except ValidationError as err:
        raise RolloutStateError(f"the saved rollout is unreadable ({' '.join(str(err).split())[:200]})") from None


def save(store: EventLog, rollout: RolloutState) -> None:
    store.write_state(ROLLOUT_KEY, rollout.model_dump(mode="json"))
