"""Runtime changes on the real Serve app, one test per defect the change logic once had: a change that went live
but was not confirmed by every router is still saved and audited (a restart keeps it); two changes at once are
applied one after the other; a shadow switched on at runtime gets an application of its own; a broken or
label-incompatible version is refused before it goes out; `champion` is pinned once, so a restarted replica serves
what its siblings serve. One app for the module, on the session's Ray instance."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_app import (
    ADMIN,
    AS_CLIENT,
    QUEUES,
    audit_records,
    corrupt_version,
    on_driver_loop,
    register_linear,
    register_models,
    running_app,
    small_serving_config,
    two_arm_experiment,
    wait_for,
)

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving.api import ApiError
from serving.config import Home
from serving.models.registry import ModelRegistry
from serving.ops import admin, launch, state
from serving.ops.apps import arm_app, arm_deployment
from serving.ops.changes import Context
from serving.store.eventlog import open_event_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SHADOW_APP = arm_app("shadow")  # mailroute-shadow


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("changes-home"))
    register_models(home)  # linear:v1 and a tiny transformer
    ModelRegistry(home.registry).promote("linear:v1")
    corrupt = register_linear(home, seed=41)  # linear:v2, then damaged on disk
    corrupt_version(home, corrupt)
    bad_labels = register_linear(home, seed=42, rename=("sales", "refunds"))  # linear:v3, "refunds" is no queue
    fewer_labels = register_linear(home, seed=44, drop="sales")  # linear:v4, never routes to sales
    good = register_linear(home, seed=43)  # linear:v5, the latest: promoted by the champion test
    serving = small_serving_config(linear={"num_cpus": 0.1, "num_replicas": 2})
    experiment = two_arm_experiment(  # no shadow
        arms={
            "linear": {"model": "linear", "version": "champion", "weight": 0.5},
            "transformer": {"model": "transformer", "weight": 0.5},
        },
    )
    with running_app(home, serve_port, serving, experiment) as running:
        running.update(corrupt=corrupt, bad_labels=bad_labels, fewer_labels=fewer_labels, good=good)
        yield running


def _live(app: dict[str, Any]) -> dict[str, Any]:
    experiment: dict[str, Any] = app["client"].get("/v1/experiments").json()["experiment"]
    return experiment


def _weights(experiment: dict[str, Any]) -> dict[str, float]:
    return {arm: spec["weight"] for arm, spec in experiment["arms"].items()}


def _audit(app: dict[str, Any]) -> list[dict[str, Any]]:
    return audit_records(app["home"])


def _saved(app: dict[str, Any]) -> dict[str, Any]:
    """The experiment saved in the event store (what a restart runs), read as a start reads it."""
    store = open_event_log(f"sqlite:///{app['home'].event_log}")
    try:
        assert store.read_state(state.EXPERIMENT_KEY) is not None
        return state.load_state(store, app["experiment"]).model_dump(mode="json")
    finally:
        store.close()


def _put(app: dict[str, Any], body: dict[str, Any], client: httpx.Client | None = None) -> httpx.Response:
    return (client or app["client"]).put("/v1/experiments/t-exp", json=body, timeout=120)


def _route(app: dict[str, Any], user: str, **extra: Any) -> dict[str, Any]:
    body = {"user_id": user, "subject": "Invoice", "body": "please send me a copy of last month's invoice", **extra}
    headers = ADMIN if "force_arm" in extra else AS_CLIENT  # a forced arm needs the admin token
    response = app["client"].post("/v1/route", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _broadcast(deployment: str, app_name: str, method: str) -> list[Any]:
    """What every running replica of a deployment answers (from the driver, as the change code asks them)."""
    from ray import serve

    async def call() -> list[Any]:
        handle = serve.get_deployment_handle(deployment, app_name)
        answers: list[Any] = await handle.broadcast(method).results_async()
        return answers

    return on_driver_loop(call())  # type: ignore[no-any-return]


def _router_versions() -> list[int]:
    try:
        return _broadcast("Router", "mailroute", "config_version_of_replica")
    except Exception:  # a replica mid-update is briefly away
        return []


def _arm_versions(arm: str) -> list[str]:
    try:
        return sorted(_broadcast(arm_deployment(arm), arm_app(arm), "ready"))
    except Exception:  # a replica restarting
        return []


class _ImpatientContext(Context):
    """An admin's change context whose wait for the routers can never succeed: it expects more router replicas than
    run, and gives up after 2 s (the real wait is 30 s or more)."""

    @property
    def router_replicas(self) -> int:
        return 99

    @property
    def timeout_s(self) -> float:
        return 2.0


def test_a_live_change_the_routers_did_not_confirm_is_recorded_and_survives_a_restart(app: dict[str, Any]) -> None:
    """Defect 1: the config went live, the wait for the routers failed, and neither the saved layout nor the audit
    line was written, so a restart moved users back."""
    from ray import serve

    audit_before = len(_audit(app))
    store = open_event_log(f"sqlite:///{app['home'].event_log}")
    ctx = _ImpatientContext(app["home"], QUEUES.model_dump(mode="json"), app["serving"], "tester", store=store)
    change = {"arms": {"linear": 0.7, "transformer": 0.3}}
    with pytest.raises(ApiError) as refused:
        on_driver_loop(admin.change_experiment(ctx, "t-exp", change))
    assert refused.value.status == 503 and "live and recorded" in refused.value.detail, refused.value.detail
    # Live on every router replica ...
    versions = wait_for(_router_versions, lambda v: len(v) == 2 and len(set(v)) == 1)
    assert len(versions) == 2 and len(set(versions)) == 1, versions
    assert _weights(_live(app)) == {"linear": 0.7, "transformer": 0.3}
    # ... saved, with its pinned layout, and audited.
    assert _weights(_saved(app)) == {"linear": 0.7, "transformer": 0.3} and _saved(app)["layout"]
    lines = _audit(app)[audit_before:]
    assert len(lines) == 1 and lines[0]["actor"] == "tester" and lines[0]["kind"] == "experiment"
    assert _weights(lines[0]["new"]) == {"linear": 0.7, "transformer": 0.3}
    assert lines[0]["moved_share"] == pytest.approx(0.2)
    # A restart (router deleted, app deployed again from the same configured experiment) keeps every user's arm.
    users = [f"restart-{i}" for i in range(40)]
    before = {u: _route(app, u)["arm"] for u in users}
    serve.delete("mailroute")
    launch.deploy(app["home"], QUEUES, app["serving"], app["experiment"])
    # The proxy takes a moment to route to the new router application (HAProxy reloads its config).
    wait_for(lambda: app["client"].get("/v1/experiments").status_code, lambda status: status == 200)
    assert _weights(_live(app)) == {"linear": 0.7, "transformer": 0.3}
    assert {u: _route(app, u)["arm"] for u in users} == before
    store.close()


def test_two_changes_at_once_are_applied_one_after_the_other(app: dict[str, Any]) -> None:
    """Defect 2: two concurrent changes read the same state and the second overwrote the first."""
    start = _live(app)
    audit_before = len(_audit(app))
    targets = [{"linear": 0.9, "transformer": 0.1}, {"linear": 0.2, "transformer": 0.8}]
    barrier = threading.Barrier(len(targets))
    answers: list[httpx.Response | None] = [None] * len(targets)

    def change(i: int) -> None:
        with httpx.Client(base_url=app["url"], timeout=120, headers=ADMIN) as client:
            barrier.wait()
            answers[i] = _put(app, {"arms": targets[i]}, client)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answer in answers:
        assert answer is not None and answer.status_code == 200, answer and answer.text
    lines = _audit(app)[audit_before:]
    assert len(lines) == 2, lines
    first, second = lines
    assert sorted([_weights(first["new"]), _weights(second["new"])], key=str) == sorted(targets, key=str)
    # A chain: the first starts from the state before both, the second from the first's result.
    assert _weights(first["old"]) == _weights(start) and first["old"]["layout"] == start["layout"]
    assert second["old"] == first["new"]
    for line in lines:  # each moved the share of users its own step moves
        old, new = ExperimentConfig.model_validate(line["old"]), ExperimentConfig.model_validate(line["new"])
        assert line["moved_share"] == pytest.approx(abs(new.arms["linear"].weight - old.arms["linear"].weight))
        assert line["moved_share"] == pytest.approx(moved_share(old.ranges(), new.ranges()))
    by_target = {json.dumps(_weights(a.json()["experiment"]), sort_keys=True): a.json() for a in answers if a}
    for line in lines:
        assert by_target[json.dumps(_weights(line["new"]), sort_keys=True)]["moved_share"] == pytest.approx(
            line["moved_share"]
        )
    # What runs (and what a restart would load) is the second one.
    live = _live(app)
    assert live["arms"] == second["new"]["arms"] and live["layout"] == second["new"]["layout"]
    assert _saved(app) == second["new"]


def test_a_shadow_switched_on_at_runtime_gets_its_own_application(app: dict[str, Any]) -> None:
    """Defect 3: with no shadow deployment, turning a shadow on answered 200 and every sampled request logged an
    error instead of a shadow answer."""
    from ray import serve

    assert SHADOW_APP not in serve.status().applications
    response = _put(app, {"shadow": {"model": "linear", "version": "latest", "sample_rate": 1.0}})
    assert response.status_code == 200, response.text
    assert response.json()["experiment"]["shadow"]["version"] == app["good"]  # pinned, not "latest"
    shadow_app = serve.status().applications.get(SHADOW_APP)
    assert shadow_app is not None and shadow_app.status == "RUNNING"
    assert app["client"].get("/readyz").json()["arms"]["shadow"] == f"linear:{app['good']}"
    events = open_event_log(f"sqlite:///{app['home'].event_log}")
    request_ids = [_route(app, f"shadowed-{i}")["request_id"] for i in range(5)]

    def shadows() -> list[dict[str, Any] | None]:
        found = [events.get_prediction(rid) for rid in request_ids]
        return [e.shadow if e is not None else None for e in found]

    results = wait_for(shadows, lambda found: all(found), timeout_s=15)
    for result in results:
        assert result is not None and "error" not in result, result
        assert result["model"] == "linear" and result["version"] == app["good"] and result["queue"]


@pytest.mark.parametrize(
    "which, words",
    [
        ("corrupt", "checksum mismatch"),
        ("bad_labels", "not queues of the taxonomy (refunds)"),
        ("fewer_labels", "another label set"),  # found in review: went live, and no email reached sales again
    ],
)
def test_a_version_that_cannot_serve_is_refused_before_it_goes_out(app: dict[str, Any], which: str, words: str) -> None:
    """Defect 4: an unverified version went out, the arm failed to load it and its traffic silently fell back."""
    version = app[which]
    audit_before, saved_before = len(_audit(app)), _saved(app)
    response = _put(app, {"arms": {"linear": {"version": version}}})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert words in detail and f"linear:{version}" in detail and "\n" not in detail
    assert _live(app)["arms"]["linear"]["version"] == "v1"
    assert _arm_versions("linear") == ["linear:v1", "linear:v1"]  # every replica still serves v1
    for i in range(5):
        answer = _route(app, f"forced-{which}-{i}", force_arm="linear")
        assert answer["model_version"] == "linear:v1" and not answer["fallback"], answer
    assert len(_audit(app)) == audit_before and _saved(app) == saved_before


def test_champion_is_pinned_once_so_a_restarted_replica_serves_what_its_siblings_serve(app: dict[str, Any]) -> None:
    """Defect 5: `linear:champion` was resolved by each replica when it loaded, so after a promotion a restarted
    replica served another version than its siblings."""
    import ray

    assert _live(app)["arms"]["linear"]["version"] == "v1"  # pinned at deploy, not "champion"
    assert _arm_versions("linear") == ["linear:v1", "linear:v1"]
    ModelRegistry(app["home"].registry).promote(f"linear:{app['good']}")

    def replicas() -> set[tuple[str, str]]:  # the arm's replica actors: SERVE_REPLICA::<app>#<deployment>#<id>
        marker = f"#{arm_deployment('linear')}#"
        named = ray.util.list_named_actors(all_namespaces=True)
        return {
            (a["name"], a["namespace"])
            for a in named
            if a["name"].startswith("SERVE_REPLICA::") and marker in a["name"]
        }

    before = replicas()
    assert len(before) == 2, before
    name, namespace = sorted(before)[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    after = wait_for(replicas, lambda r: len(r) == 2 and r != before, timeout_s=60)
    assert len(after) == 2 and (name, namespace) not in after, after
    served = wait_for(lambda: _arm_versions("linear"), lambda v: len(v) == 2, timeout_s=60)
    assert served == ["linear:v1", "linear:v1"]  # the new replica loaded the pinned v1, not the new champion
    assert _live(app)["arms"]["linear"]["version"] == "v1"
    assert _route(app, "after-restart", force_arm="linear")["model_version"] == "linear:v1"
