"""A runtime change that fails inside Ray is a defined answer (503 with Retry-After and one line), never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from experiments.config import ExperimentConfig
from serving.api import ApiError
from serving.config import Home, PolicyConfig, ServingConfig, load_queues
from serving.ops import changes, state
from serving.ops.changes import Change, Context, Live
from serving.store.memory import MemoryEventLog

pytestmark = pytest.mark.unit
QUEUES = load_queues(Path(__file__).resolve().parents[2] / "configs" / "queues.yaml")


def experiment(linear: float) -> ExperimentConfig:
    arms = {
        "linear": {"model": "linear", "weight": linear},
        "transformer": {"model": "transformer", "weight": 1 - linear},
    }
    return ExperimentConfig.model_validate({"name": "e", "salt": "s", "arms": arms, "holdout_arm": "linear"})


def test_a_ray_error_inside_a_change_is_a_503_not_a_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import RayActorError

    live = Live({"mailroute": {"name": "mailroute", "deployments": [{"name": "Router"}]}}, experiment(0.5),
                PolicyConfig(), 1)  # fmt: skip

    async def read_live(app_name: str = "mailroute") -> Live:
        return live

    async def deploy(apps: list[dict[str, Any]]) -> None:
        raise RayActorError()  # the Serve controller died under us

    monkeypatch.setattr(changes, "read_live", read_live)
    monkeypatch.setattr(changes, "_deploy", deploy)
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=MemoryEventLog())
    with pytest.raises(ApiError) as err:
        asyncio.run(changes.apply(ctx, lambda live: Change("experiment", experiment=experiment(0.8))))
    assert err.value.status == 503 and err.value.retry_after_s and "\n" not in err.value.detail
    assert "GET /v1/experiments" in err.value.detail
    assert ctx.store.audit_records() == []  # nothing recorded for a change Serve never took


@pytest.fixture
def audit_fails(monkeypatch: pytest.MonkeyPatch) -> tuple[Live, list[list[dict[str, Any]]]]:
    """Serve takes every config (each deployed list is kept), and the audit cannot be written (a full disk)."""
    live = Live({"mailroute": {"name": "mailroute", "deployments": [{"name": "Router"}]}}, experiment(0.5),
                PolicyConfig(), 1)  # fmt: skip
    deployed: list[list[dict[str, Any]]] = []

    async def read_live(app_name: str = "mailroute") -> Live:
        return live

    async def deploy(apps: list[dict[str, Any]]) -> None:
        deployed.append(apps)

    def record_change(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(changes, "read_live", read_live)
    monkeypatch.setattr(changes, "_deploy", deploy)
    monkeypatch.setattr(MemoryEventLog, "record_change", record_change)
    return live, deployed


def test_a_change_that_cannot_be_recorded_is_undone(
    tmp_path: Path, audit_fails: tuple[Live, list[list[dict[str, Any]]]]
) -> None:
    # Found in review: a change live in Serve whose audit line could not be written (a full disk) stayed live and
    # unrecorded, and a restart moved its users back. Now it is undone and said.
    live, deployed = audit_fails
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=MemoryEventLog())
    with pytest.raises(ApiError) as err:
        asyncio.run(changes.apply(ctx, lambda live: Change("experiment", experiment=experiment(0.8))))
    assert err.value.status == 503 and "undone" in err.value.detail
    assert len(deployed) == 2 and deployed[-1] == list(live.apps.values())  # the live config put back
    assert state.load_state(ctx.store, experiment(0.5)).weights["linear"] == pytest.approx(0.5)


def test_a_policy_change_that_cannot_be_recorded_leaves_no_saved_policy(
    tmp_path: Path, audit_fails: tuple[Live, list[list[dict[str, Any]]]]
) -> None:
    # Found in review: the undo put the live config back but not the saved policy, so the 503 said "undone" while
    # the next start served the new threshold, with no audit line for it.
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=MemoryEventLog())
    stricter = PolicyConfig(confidence_threshold=0.9)
    with pytest.raises(ApiError) as err:
        asyncio.run(changes.apply(ctx, lambda live: Change("policy", policy=stricter)))
    assert err.value.status == 503 and "undone" in err.value.detail
    policy, _ = state.load_policy(ctx.store, ServingConfig().policy)
    assert policy == ServingConfig().policy  # what the next start serves: the policy before the change


def test_an_arm_switched_to_another_model_must_predict_the_same_queues(tmp_path: Path) -> None:
    """Found in review: the label check ran only for a new version of the arm's own model, so an arm could switch
    to a model that lacks a queue (and would never route there again)."""
    from serving.models.registry import ModelRegistry
    from serving.ops.admin import plan_experiment

    home = Home(tmp_path)
    registry = ModelRegistry(home.registry)
    every = list(QUEUES.names)

    def register(name: str, labels: list[str]) -> None:
        registry.register(name, lambda folder: (folder / "model.bin").write_text(name), kind="linear", labels=labels,
                          preprocessing_version="1", data_fingerprint="t", metrics={}, params={})  # fmt: skip

    register("linear", every)
    register("transformer", every)
    register("narrow", [q for q in every if q != "sales"])
    register("broad", every)
    arms = {"linear": {"model": "linear", "version": "v1", "weight": 0.5},
            "transformer": {"model": "transformer", "version": "v1", "weight": 0.5}}  # fmt: skip
    running = ExperimentConfig.model_validate({"name": "e", "salt": "s", "arms": arms, "holdout_arm": "linear"})
    live = Live({}, running, PolicyConfig(), 1)
    ctx = Context(home, QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=MemoryEventLog())
    with pytest.raises(ApiError) as err:
        plan_experiment(ctx, live, "e", {"arms": {"linear": {"model": "narrow", "version": "v1"}}})
    assert err.value.status == 422 and "sales" in err.value.detail
    change = plan_experiment(ctx, live, "e", {"arms": {"linear": {"model": "broad", "version": "v1"}}})
    assert change.set_versions == {"linear": ("broad", "v1")}


def test_the_layout_the_rollout_and_the_audit_line_are_one_transaction(tmp_path: Path) -> None:
    """Found in review: the saved layout, the audit line and the rollout document were written one after another, so
    an audit that failed after the layout was saved left a layout no audit line explains (the undo then wrote yet
    another). Now the three land together or not at all."""
    import sqlite3

    from serving.store.sqlite import SQLiteEventLog

    live = Live({"mailroute": {"name": "mailroute", "deployments": [{"name": "Router"}]}}, experiment(0.5),
                PolicyConfig(), 1)  # fmt: skip

    async def read_live(app_name: str = "mailroute") -> Live:
        return live

    async def deploy(apps: list[dict[str, Any]]) -> None:
        return None

    async def confirmed(ctx: Context, version: int) -> None:
        return None

    store = SQLiteEventLog(tmp_path / "events.db")
    with sqlite3.connect(tmp_path / "events.db") as db:  # the audit table refuses every row, as a full disk would
        db.execute("CREATE TRIGGER full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=store)
    change = Change("rollout", experiment=experiment(0.8), states={"rollout": {"model": "linear", "step": 1}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(changes, "read_live", read_live)
        patch.setattr(changes, "_deploy", deploy)
        with pytest.raises(ApiError) as err:
            asyncio.run(changes.apply(ctx, lambda live: change))
    assert err.value.status == 503 and "undone" in err.value.detail
    assert store.read_state("experiment") is None and store.read_state("rollout") is None
    with sqlite3.connect(tmp_path / "events.db") as db:
        db.execute("DROP TRIGGER full")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(changes, "read_live", read_live)
        patch.setattr(changes, "_deploy", deploy)
        patch.setattr(changes, "_wait_for_routers", confirmed)
        asyncio.run(changes.apply(ctx, lambda live: change))
    assert store.read_state("rollout") == {"model": "linear", "step": 1}
    assert state.load_state(store, experiment(0.5)).weights["linear"] == pytest.approx(0.8)
    assert [r["kind"] for r in store.audit_records()] == ["rollout"]


def test_a_store_that_is_down_when_a_change_takes_its_lock_is_a_503(tmp_path: Path) -> None:
    """Found in review: the change lock of an unreachable PostgreSQL raised straight through: a 500."""
    from serving.store.eventlog import StoreUnavailableError

    class Down(MemoryEventLog):
        def change_lock(self) -> Any:
            class Lock:
                def acquire(self, timeout: float) -> object:
                    raise StoreUnavailableError("event log db:5432 is unavailable: connection refused")

                def release(self) -> None:
                    raise AssertionError("a lock never taken is not released")

            return Lock()

    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=Down())
    with pytest.raises(ApiError) as err:
        asyncio.run(changes.apply(ctx, lambda live: Change("experiment", experiment=experiment(0.8))))
    assert err.value.status == 503 and err.value.retry_after_s and "event store" in err.value.detail


def test_reading_the_rollout_from_a_store_that_is_down_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: GET /v1/rollout raised the store's error straight through: a 500."""
    from experiments.rollout import service
    from serving.store.eventlog import StoreUnavailableError

    class Down(MemoryEventLog):
        def read_state(self, key: str) -> Any:
            raise StoreUnavailableError("event log db:5432 is unavailable: connection refused")

    live = Live({}, experiment(0.5), PolicyConfig(), 1)

    async def read_live(app_name: str = "mailroute") -> Live:
        return live

    monkeypatch.setattr(changes, "read_live", read_live)
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=Down())
    with pytest.raises(ApiError) as err:
        asyncio.run(service.status(ctx))
    assert err.value.status == 503 and err.value.retry_after_s and "unavailable" in err.value.detail


def test_a_registry_that_does_not_answer_is_a_503_not_a_422(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: an object store that timed out read as "your request is wrong" (422, do not retry)."""
    from serving.models.registry import RegistryUnavailableError
    from serving.ops import admin

    class Unreachable:
        def resolve(self, ref: str) -> tuple[str, str]:
            raise RegistryUnavailableError("registry s3://acme/registry is unreachable (connection reset)")

    monkeypatch.setattr(admin, "open_registry", lambda home: Unreachable())
    arms = {"linear": {"model": "linear", "version": "v1", "weight": 0.5},
            "transformer": {"model": "transformer", "version": "v1", "weight": 0.5}}  # fmt: skip
    running = ExperimentConfig.model_validate({"name": "e", "salt": "s", "arms": arms, "holdout_arm": "linear"})
    ctx = Context(Home(tmp_path), QUEUES.model_dump(mode="json"), ServingConfig(), "ops", store=MemoryEventLog())
    with pytest.raises(ApiError) as err:
        admin.plan_experiment(ctx, Live({}, running, PolicyConfig(), 1), "e",
                              {"arms": {"linear": {"model": "linear", "version": "v2"}}})  # fmt: skip
    assert err.value.status == 503 and err.value.retry_after_s and "unreachable" in err.value.detail
