"""What a restart runs: the saved experiment (runtime changes kept) unless experiments.yaml was edited since, then
the edit, laid out to move as few users as possible and audited; a canary a rollout added refuses the edit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving.config import ConfigError, Home
from serving.ops import state

pytestmark = pytest.mark.unit


def experiment(**arms: float) -> ExperimentConfig:
    data: dict[str, Any] = {
        "name": "exp",
        "salt": "s1",
        "arms": {arm: {"model": "linear", "weight": w} for arm, w in arms.items()},
        "holdout_arm": next(iter(arms)),
    }
    return ExperimentConfig.model_validate(data)


def runtime_change(home: Home, started_from: ExperimentConfig, now: ExperimentConfig) -> ExperimentConfig:
    """A start from the file, then a weight change at runtime (what PUT /v1/experiments saves)."""
    state.save_state(home, started_from, based_on=started_from)
    changed = now.pinned(started_from.ranges())
    state.save_state(home, changed)
    return changed


def test_without_an_edit_a_restart_keeps_the_runtime_change(tmp_path: Path) -> None:
    home = Home(tmp_path)
    file = experiment(a=0.5, b=0.5)
    changed = runtime_change(home, file, experiment(a=0.8, b=0.2))
    start = state.reconcile(home, file)
    assert start.experiment == changed and start.note is None and start.previous is None


def test_a_hand_edit_of_the_file_is_applied_at_restart_moving_few_users(tmp_path: Path) -> None:
    # Before issue 9 a restart kept the saved state whenever name and salt matched: an added arm or new weights in
    # experiments.yaml were silently ignored.
    home = Home(tmp_path)
    file = experiment(a=0.5, b=0.5)
    changed = runtime_change(home, file, experiment(a=0.8, b=0.2))
    edited_file = experiment(a=0.4, b=0.3, c=0.3)  # an arm added by hand, weights changed
    start = state.reconcile(home, edited_file)
    assert set(start.experiment.arms) == {"a", "b", "c"} and start.experiment.weights["c"] == pytest.approx(0.3)
    assert start.previous == changed and start.note is not None and "edited" in start.note
    assert "replaces the runtime changes to arms" in start.note  # the 0.8/0.2 set at runtime is undone: said
    moved = moved_share(changed.ranges(), start.experiment.ranges())
    assert start.moved == pytest.approx(moved) and moved == pytest.approx(0.5 * (0.4 + 0.1 + 0.3))  # the minimum
    fresh = moved_share(changed.ranges(), edited_file.ranges())
    assert moved < fresh  # laying the arms out afresh would move more


def test_an_edit_while_a_canary_runs_refuses_to_start_and_says_how(tmp_path: Path) -> None:
    home = Home(tmp_path)
    file = experiment(a=0.5, b=0.5)
    runtime_change(home, file, experiment(a=0.5, b=0.4, **{"b-canary": 0.1}))  # a rollout's canary arm
    with pytest.raises(ConfigError, match="b-canary") as err:
        state.reconcile(home, experiment(a=0.6, b=0.4))
    assert "rollback" in str(err.value) and "\n" not in str(err.value)


def test_a_state_saved_before_issue_9_is_kept_and_says_so(tmp_path: Path) -> None:
    home = Home(tmp_path)
    changed = experiment(a=0.8, b=0.2).pinned(experiment(a=0.5, b=0.5).ranges())
    (tmp_path / state.STATE_FILE).write_text(json.dumps(changed.model_dump(mode="json")))  # the old format
    start = state.reconcile(home, experiment(a=0.5, b=0.5))
    assert start.experiment == changed and start.note is not None
    assert state.load_state(home, experiment(a=0.5, b=0.5)) == changed


def test_another_experiment_in_the_file_starts_afresh(tmp_path: Path) -> None:
    home = Home(tmp_path)
    runtime_change(home, experiment(a=0.5, b=0.5), experiment(a=0.8, b=0.2))
    other = ExperimentConfig.model_validate({**experiment(a=0.5, b=0.5).model_dump(), "salt": "s2"})
    assert state.reconcile(home, other).experiment == other
