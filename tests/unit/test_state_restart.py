"""What a restart runs: the saved experiment (runtime changes kept) unless experiments.yaml was edited since, then
the edit, laid out to move as few users as possible and audited; a canary a rollout added refuses the edit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving.config import ConfigError, Home
from serving.ops import state
from serving.store.eventlog import EventLog
from serving.store.sqlite import SQLiteEventLog

pytestmark = pytest.mark.unit


def experiment(**arms: float) -> ExperimentConfig:
    data: dict[str, Any] = {
        "name": "exp",
        "salt": "s1",
        "arms": {arm: {"model": "linear", "weight": w} for arm, w in arms.items()},
        "holdout_arm": next(iter(arms)),
    }
    return ExperimentConfig.model_validate(data)


def runtime_change(store: EventLog, started_from: ExperimentConfig, now: ExperimentConfig) -> ExperimentConfig:
    """A start from the file, then a weight change at runtime (what PUT /v1/experiments saves)."""
    state.save_state(store, started_from, based_on=started_from)
    changed = now.pinned(started_from.ranges())
    state.save_state(store, changed)
    return changed


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventLog]:
    log = SQLiteEventLog(tmp_path / "events.db")
    yield log
    log.close()


def test_without_an_edit_a_restart_keeps_the_runtime_change(store: EventLog) -> None:
    file = experiment(a=0.5, b=0.5)
    changed = runtime_change(store, file, experiment(a=0.8, b=0.2))
    start = state.reconcile(store, file)
    assert start.experiment == changed and start.note is None and start.previous is None


def test_a_hand_edit_of_the_file_is_applied_at_restart_moving_few_users(store: EventLog) -> None:
    # Before issue 9 a restart kept the saved state whenever name and salt matched: an added arm or new weights in
    # experiments.yaml were silently ignored.
    file = experiment(a=0.5, b=0.5)
    changed = runtime_change(store, file, experiment(a=0.8, b=0.2))
    edited_file = experiment(a=0.4, b=0.3, c=0.3)  # an arm added by hand, weights changed
    start = state.reconcile(store, edited_file)
    assert set(start.experiment.arms) == {"a", "b", "c"} and start.experiment.weights["c"] == pytest.approx(0.3)
    assert start.previous == changed and start.note is not None and "edited" in start.note
    assert "replaces the runtime changes to arms" in start.note  # the 0.8/0.2 set at runtime is undone: said
    moved = moved_share(changed.ranges(), start.experiment.ranges())
    assert start.moved == pytest.approx(moved) and moved == pytest.approx(0.5 * (0.4 + 0.1 + 0.3))  # the minimum
    fresh = moved_share(changed.ranges(), edited_file.ranges())
    assert moved < fresh  # laying the arms out afresh would move more


def test_an_edit_while_a_canary_runs_refuses_to_start_and_says_how(store: EventLog) -> None:
    file = experiment(a=0.5, b=0.5)
    runtime_change(store, file, experiment(a=0.5, b=0.4, **{"b-canary": 0.1}))  # a rollout's canary arm
    with pytest.raises(ConfigError, match="b-canary") as err:
        state.reconcile(store, experiment(a=0.6, b=0.4))
    assert "rollback" in str(err.value) and "\n" not in str(err.value)


def test_a_state_saved_before_issue_9_is_kept_and_says_so(tmp_path: Path, store: EventLog) -> None:
    changed = experiment(a=0.8, b=0.2).pinned(experiment(a=0.5, b=0.5).ranges())
    (tmp_path / "experiment.json").write_text(json.dumps(changed.model_dump(mode="json")))  # the oldest format
    assert len(state.import_home_files(store, Home(tmp_path))) == 1
    start = state.reconcile(store, experiment(a=0.5, b=0.5))
    assert start.experiment == changed and start.note is not None
    assert state.load_state(store, experiment(a=0.5, b=0.5)) == changed


def test_a_homes_state_files_move_into_the_store_once(tmp_path: Path, store: EventLog) -> None:
    """Before issue 10 the saved layout, the runtime policy, the rollout and the audit log were files of the home
    (one node's disk); the first start that finds them moves them into the store, and renames them."""
    home = Home(tmp_path)
    file = experiment(a=0.5, b=0.5)
    changed = file.pinned(file.ranges())
    saved = {"experiment": changed.model_dump(mode="json"), "based_on": file.model_dump(mode="json")}
    (tmp_path / "experiment.json").write_text(json.dumps(saved))
    rollout = {"model": "linear", "candidate": "v2", "previous": "v1", "arm": "linear", "canary_arm": "linear-canary",
               "arm_weight": 0.5, "steps": [10.0, 50.0], "step": 1, "status": "promoted",
               "started": "2026-01-01T09:00:00+00:00", "step_started": "2026-01-01T10:00:00+00:00"}  # fmt: skip
    (tmp_path / "rollout.json").write_text(json.dumps(rollout))
    lines = [{"ts": f"2026-01-0{i}T09:00:00+00:00", "actor": "ops", "kind": "experiment", "old": {}, "new": {}}
             for i in (1, 2)]  # fmt: skip
    (tmp_path / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    store.record_audit(lines[0])  # a start that died half way through an earlier import
    said = state.import_home_files(store, home)
    assert len(said) == 3 and "2 audit records" in said[-1]
    assert state.load_state(store, file) == changed
    assert store.read_state("rollout") == rollout
    assert [r["ts"] for r in store.audit_records()] == [lines[0]["ts"], lines[1]["ts"]]  # none twice
    assert not (tmp_path / "audit.jsonl").exists() and (tmp_path / "audit.jsonl.imported").exists()
    assert state.import_home_files(store, home) == []  # once


def test_a_broken_state_file_stops_the_import_and_names_itself(tmp_path: Path, store: EventLog) -> None:
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"policy\.json: cannot import it") as err:
        state.import_home_files(store, Home(tmp_path))
    assert "\n" not in str(err.value) and (tmp_path / "policy.json").exists()
    (tmp_path / "policy.json").unlink()
    (tmp_path / "audit.jsonl").write_text('{"ts": "2026-01-01T00:00:00+00:00", "actor": "a", "kind": "k"}\noops\n')
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        state.import_home_files(store, Home(tmp_path))
    assert store.audit_records() == []  # nothing half imported


def test_another_experiment_in_the_file_starts_afresh(store: EventLog) -> None:
    runtime_change(store, experiment(a=0.5, b=0.5), experiment(a=0.8, b=0.2))
    other = ExperimentConfig.model_validate({**experiment(a=0.5, b=0.5).model_dump(), "salt": "s2"})
    assert state.reconcile(store, other).experiment == other


def test_a_state_file_that_parses_but_is_not_its_state_stops_the_import_before_anything_moves(
    tmp_path: Path, store: EventLog
) -> None:
    """Found in review: only JSON syntax was checked, so a rollout.json that is no rollout was imported (to fail
    later, far from its file), after experiment.json had already moved."""
    file = experiment(a=0.5, b=0.5)
    (tmp_path / "experiment.json").write_text(json.dumps({"experiment": file.model_dump(mode="json")}))
    (tmp_path / "rollout.json").write_text(json.dumps({"model": "linear"}))
    with pytest.raises(ConfigError, match=r"rollout\.json: cannot import it") as err:
        state.import_home_files(store, Home(tmp_path))
    assert "\n" not in str(err.value)
    assert store.read_state("experiment") is None and (tmp_path / "experiment.json").exists()


def test_two_starts_importing_at_once_import_each_record_once(tmp_path: Path) -> None:
    """Found in review: two replicas or two starts importing together could both write the audit lines, and the
    loser's rename failed with FileNotFoundError. The import holds the store's change lock and is one transaction."""
    import threading

    lines = [{"ts": f"2026-01-0{i}T09:00:00+00:00", "actor": "ops", "kind": "experiment", "old": {}, "new": {}}
             for i in range(1, 10)]  # fmt: skip
    for attempt in range(5):
        home = tmp_path / f"home{attempt}"
        home.mkdir()
        (home / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        stores = [SQLiteEventLog(home / "events.db") for _ in range(2)]
        barrier, errors = threading.Barrier(2), []

        def start(
            store: EventLog, home: Path = home, barrier: threading.Barrier = barrier, errors: list[Any] = errors
        ) -> None:
            barrier.wait()
            try:
                state.import_home_files(store, Home(home))
            except Exception as err:
                errors.append(err)

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(stores[0].audit_records()) == len(lines)
        for s in stores:
            s.close()
