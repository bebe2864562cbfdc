"""A cheap arm inside the router replicas (`in_router_arms`), in the real Serve app: no application of its own, the
same answers and records as a deployed arm, a new version through the admin API, and a version that cannot load
refused with one line while the running one keeps answering. A heavy model is refused there at start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registered import COMMON
from serve_app import (
    ADMIN,
    QUEUES,
    register_linear,
    register_models,
    running_app,
    small_serving_config,
    two_arm_experiment,  # fmt: skip
    wait_for,
)

from serving.config import Home
from serving.models.linear import MODEL_FILE
from serving.models.registry import ModelRegistry, RegistryError
from serving.ops.apps import app_configs
from serving.store.eventlog import open_event_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("in-router") / "home")
    register_models(home)
    with running_app(home, serve_port, small_serving_config(in_router_arms=["linear"]), two_arm_experiment()) as run:
        yield run


def _route(app: dict[str, Any], arm: str = "linear") -> dict[str, Any]:
    response = app["client"].post("/v1/route", headers=ADMIN, json={
        "user_id": "u1", "subject": "Charged twice", "body": "My card was charged twice for one invoice.",
        "force_arm": arm})  # fmt: skip
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_arm_runs_in_the_router_with_no_application_of_its_own(app: dict[str, Any]) -> None:
    from ray import serve

    apps = set(serve.status().applications)
    assert "mailroute-arm-linear" not in apps and "mailroute-arm-transformer" in apps
    answer = _route(app)
    assert answer["model_version"] == "linear:v1" and answer["queue"] in [*QUEUES.names, QUEUES.triage_queue]
    ready = app["client"].get("/readyz").json()
    assert ready["arms"] == {"linear": "linear:v1", "transformer": "transformer:v1"}
    log = open_event_log(f"sqlite:///{app['home'].event_log}")
    try:
        stored = wait_for(lambda: log.get_prediction(answer["request_id"]), lambda p: p is not None)
    finally:
        log.close()
    assert stored is not None and (stored.arm, stored.model_version) == ("linear", "v1")


def test_a_new_version_reaches_the_routers_and_a_broken_one_is_refused(app: dict[str, Any]) -> None:
    version = register_linear(app["home"], seed=5)
    response = app["client"].put("/v1/experiments/t-exp", json={"arms": {"linear": {"version": version}}}, timeout=120)
    assert response.status_code == 200, response.text
    assert _route(app)["model_version"] == f"linear:{version}"  # every router replica confirmed before the answer
    registry = ModelRegistry(app["home"].registry)
    labels = list(registry.read_meta("linear", version).labels)

    def garbage(folder: Path) -> None:  # checksummed at registration, so only loading it finds the fault
        (folder / MODEL_FILE).write_bytes(b"not a pickle")

    broken = registry.register("linear", garbage, kind="linear", labels=labels, **COMMON).version
    started = time.monotonic()
    response = app["client"].put("/v1/experiments/t-exp", json={"arms": {"linear": {"version": broken}}}, timeout=120)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and f"arm linear (inside the router) cannot serve linear:{broken}" in detail
    assert time.monotonic() - started < 60
    assert _route(app)["model_version"] == f"linear:{version}"  # the running version keeps answering


def test_a_heavy_model_inside_the_router_is_refused_at_start(app: dict[str, Any]) -> None:
    serving = small_serving_config(in_router_arms=["transformer"])
    experiment = two_arm_experiment()
    experiment = experiment.model_copy(update={"arms": {
        arm: spec.model_copy(update={"version": "v1"}) for arm, spec in experiment.arms.items()}})  # fmt: skip
    with pytest.raises(RegistryError, match=r"arm transformer runs inside the router .* is a transformer model"):
        app_configs(app["home"], QUEUES.model_dump(mode="json"), serving, experiment, serving.policy)


def test_a_canary_of_an_in_router_arm_starts_and_rolls_back(app: dict[str, Any]) -> None:
    """The canary is an arm of its own (a deployment: not in in_router_arms); the main arm stays inside the routers
    at its version through the start and the rollback."""
    from ray import serve

    serving_version = _route(app)["model_version"]
    candidate = register_linear(app["home"], seed=9)
    started = app["client"].post("/v1/rollout", json={"version": f"linear:{candidate}", "canary_percent": 20},
                                 timeout=120)  # fmt: skip
    assert started.status_code == 200, started.text
    arms = app["client"].get("/v1/experiments").json()["experiment"]["arms"]
    canary = next(arm for arm in arms if arm != "linear" and arms[arm]["model"] == "linear")
    assert f"mailroute-arm-{canary}" in serve.status().applications
    assert _route(app, canary)["model_version"] == f"linear:{candidate}"
    assert _route(app)["model_version"] == serving_version  # still inside the routers, unchanged
    back = app["client"].post("/v1/rollback", json={}, timeout=120)
    assert back.status_code == 200, back.text
    assert canary not in app["client"].get("/v1/experiments").json()["experiment"]["arms"]
    assert _route(app)["model_version"] == serving_version
    assert app["client"].get("/readyz").status_code == 200
