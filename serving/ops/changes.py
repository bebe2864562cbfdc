"""Runtime changes of the running app, applied through Serve's config path so that no replica restarts.

A change (`Change`) is planned from the live state under the event store's change lock (`EventLog.change_lock`), so two
changes never interleave, and applied in an order that never fails a request:

1. new arm applications (a canary) start, and arms whose pinned version changes load it through `reconfigure()`;
   the change waits until every one of their replicas answers with the new version. If one does not come up in
   time, those applications are put back as they were and the change fails having changed nothing;
2. the router's `user_config` (experiment and decision policy) is replaced: Serve calls `reconfigure()` on the
   running routers. Once Serve has the new config, the new state is saved (the store's `experiment` and `policy`
   documents) and the change is written to the store's audit log, and only then does the change wait for every
   router replica to confirm it, so a slow confirmation never leaves a live change unrecorded;
3. arm applications no router uses any more (a finished canary) are deleted.

It runs wherever Ray runs: in a router replica for an admin call, in the scheduler actor for the rollout job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving.api import ApiError
from serving.config import Home, PolicyConfig, ServingConfig, config_dir, parse_config
from serving.models.predictor import check_servable, load_version
from serving.models.registry import RegistryError, RegistryUnavailableError, open_registry
from serving.ops import state
from serving.ops.apps import (
    APP_NAME,
    arm_app,
    arm_app_config,
    arm_deployment,
    arm_spec,
    arm_user_config,
    check_in_router,
    in_router,
    model_kind,
    router_user_config,
)
from serving.store.eventlog import EventLog, EventLogError

log = logging.getLogger(__name__)
LOCK_WAIT_S = 120.0
T = TypeVar("T")


@dataclass(frozen=True)
class Live:
    """The running app as Serve holds it: every application's config, and the router's experiment and policy."""

    apps: dict[str, dict[str, Any]]
    experiment: ExperimentConfig
    policy: PolicyConfig
    version: int  # of the router's user_config
    local: dict[str, str] = field(default_factory=dict)  # arm -> model:version, for the arms inside the routers

    def arm_ref(self, arm: str) -> str | None:
        """The `model:version` an arm's replicas (or the routers, for an arm inside them) are configured to serve."""
        if arm in self.local:
            return self.local[arm]
        app = self.apps.get(arm_app(arm))
        for dep in (app or {}).get("deployments", []):
            ref = (dep.get("user_config") or {}).get("ref")
            if ref:
                return str(ref)
        return None


@dataclass(frozen=True)
class Change:
    """What one runtime change does (the module docstring gives the order)."""

    kind: str  # experiment | policy | rollout | rollback (the audit record's kind)
    experiment: ExperimentConfig | None = None  # the routers' new experiment
    policy: PolicyConfig | None = None  # the routers' new decision policy
    start_arms: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # new arm -> (model, version)
    set_versions: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # running arm -> (model, version)
    remove_arms: tuple[str, ...] = ()
    detail: str | None = None
    # Other shared-state documents the change writes (the rollout's), recorded with the layout and the audit line
    # in one transaction.
    states: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # Run under the lock once the change is live and recorded: the caller's own bookkeeping (registry stages), so
    # that no other change can come between the two.
    commit: Callable[[], None] | None = None


@dataclass(frozen=True)
class Context:
    """Who changes what: the home, the configs the app was started with, the acting person or job, and the event
    store that holds the shared state (the saved layout, the audit log, the rollout, the change lock)."""

    home: Home
    queues: dict[str, Any]
    serving: ServingConfig
    actor: str
    config_dir: Path = field(default_factory=config_dir)  # where experiments.yaml (the rollout rule) is read
    app_name: str = APP_NAME
    store: EventLog = field(kw_only=True)

    @property
    def router_replicas(self) -> int:
        ingress = self.serving.ingress
        return ingress.num_replicas if ingress.autoscaling is None else max(1, ingress.autoscaling.min_replicas)

    @property
    def timeout_s(self) -> float:
        return max(30.0, self.serving.model_timeout_s * 15)


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a change from synchronous code (the rollout job's thread) on one event loop kept for the process: Serve's
    handles stay bound to the loop they first ran on, so a fresh loop per call (asyncio.run) would strand them."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="mailroute-changes", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _LOOP).result()


async def read_live(app_name: str = APP_NAME) -> Live:
    """The live configs from Serve's controller."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    configs = await controller.get_app_configs.remote()
    apps = {name: cfg.model_dump(exclude_unset=True) for name, cfg in configs.items()}
    router = apps.get(app_name)
    if router is None:
        raise ApiError(409, f"application '{app_name}' was not deployed from a config; restart with mailroute serve")
    uc = next((d.get("user_config") or {} for d in router.get("deployments", []) if d["name"] == "Router"), {})
    if "experiment" not in uc:
        raise ApiError(409, f"application '{app_name}' has no experiment in its router config; restart it")
    experiment = parse_config(uc["experiment"], ExperimentConfig, "the running experiment")
    policy = parse_config(uc.get("policy") or {}, PolicyConfig, "the running policy")
    return Live(apps, experiment, policy, int(uc.get("version", 0)), dict(uc.get("local") or {}))


async def apply(ctx: Context, plan: Callable[[Live], Change]) -> dict[str, Any]:
    """Plan a change from the live state and apply it (module docstring), holding the change lock throughout.
    `plan` raises ApiError to refuse. Returns what changed, for the caller's answer. Shielded: a caller that gives
    up (a client that disconnects) does not stop a change half way; it runs to its end and releases the lock."""
    return await asyncio.shield(asyncio.ensure_future(_locked(ctx, plan)))


async def _locked(ctx: Context, plan: Callable[[Live], Change]) -> dict[str, Any]:
    lock = ctx.store.change_lock()
    try:
        await asyncio.to_thread(lock.acquire, timeout=LOCK_WAIT_S)
    except TimeoutError:
        raise ApiError(409, "another change to the running app is still being applied; try again") from None
    except EventLogError as err:  # the store (and its lock) cannot be reached: nothing was changed
        raise ApiError(503, f"the event store is unavailable, nothing was changed: {err}", 5) from None
    try:
        live = await read_live(ctx.app_name)
        change = await asyncio.to_thread(plan, live)  # it reads the registry and configs: off the event loop
        return await _apply(ctx, live, change)
    except ApiError:
        raise
    except Exception as err:  # Ray's own (a controller or replica gone): a defined answer, the cause in the log
        log.exception("a change by %s failed inside Ray: %s", ctx.actor, type(err).__name__)
        raise ApiError(  # the error's kind only: Ray's text (pids, addresses, a traceback) is in the log
            503, f"the change failed inside Ray ({type(err).__name__}); GET /v1/experiments shows what runs, then retry"
        ) from None
    finally:
        await asyncio.to_thread(lock.release)


def _check_local(ctx: Context, refs: Mapping[str, str]) -> None:
    """Each arm that runs inside the routers loads and warms up its new version here first: a version that cannot
    serve is a 422 before any router is touched (a router that still fails to load it keeps its previous version,
    or none, and says so in /readyz: `Router._set_local`)."""
    registry = open_registry(ctx.home)
    for arm, ref in refs.items():
        try:
            check_in_router(arm, ref, registry.get(ref, verify=False).meta.kind)
            predictor, meta = load_version(registry, ref)
            check_servable(meta, list(ctx.queues["queues"]), ctx.queues.get("triage_queue", "triage"))
            predictor.predict_proba(["warm up"])  # as a replica does before its first email
        except RegistryUnavailableError as err:  # not the request's fault: retry
            raise ApiError(503, f"arm {arm} (inside the router): {err}", 10) from None
        except Exception as err:  # RegistryError, or a model that loads but cannot score
            why = str(err) if isinstance(err, RegistryError) else f"{type(err).__name__}: {err}"
            raise ApiError(422, f"arm {arm} (inside the router) cannot serve {ref}: {why}") from None


async def _apply(ctx: Context, live: Live, change: Change) -> dict[str, Any]:
    apps = {name: dict(cfg) for name, cfg in live.apps.items()}
    everything = {**change.start_arms, **change.set_versions}
    local_changed = {arm: f"{m}:{v}" for arm, (m, v) in everything.items() if in_router(ctx.serving, arm)}
    arms_changed = {arm: mv for arm, mv in everything.items() if arm not in local_changed}
    local = {arm: ref for arm, ref in {**live.local, **local_changed}.items() if arm not in change.remove_arms}
    if local_changed:
        await asyncio.to_thread(_check_local, ctx, local_changed)
    if arms_changed:
        apps.update(await asyncio.to_thread(_arm_apps, ctx, apps, change))  # they read the registry: off the loop
        await _deploy(list(apps.values()))
        try:
            await _wait_for_arms(ctx, {arm: f"{m}:{v}" for arm, (m, v) in arms_changed.items()}, apps)
        except ApiError:
            await _deploy(list(live.apps.values()))  # put the arms back as they were: nothing changed
            raise
    version = live.version
    moved = None
    unconfirmed: ApiError | None = None
    if change.experiment is not None or change.policy is not None or local != live.local:
        version += 1
        config = router_user_config(change.experiment or live.experiment, change.policy or live.policy, version, local)
        router = apps[ctx.app_name]
        router["deployments"] = [{**d, "user_config": config} if d["name"] == "Router" else d
                                 for d in router["deployments"]]  # fmt: skip
        await _deploy(list(apps.values()))
        try:
            await asyncio.to_thread(_record, ctx, live, change)
        except Exception as err:  # a full disk, say: one transaction, so nothing was saved; the live config goes back
            await _deploy(list(live.apps.values()))
            raise ApiError(
                503, f"the change could not be recorded ({type(err).__name__}: {err}): it was undone", 5
            ) from None
        await asyncio.to_thread(_commit, change)
        if change.experiment is not None:
            moved = moved_share(live.experiment.ranges(), change.experiment.ranges())
        try:
            await _wait_for_routers(ctx, version)
        except ApiError as err:
            unconfirmed = err
    else:
        if arms_changed or change.states:
            await asyncio.to_thread(_record, ctx, live, change)
        await asyncio.to_thread(_commit, change)
    if change.remove_arms and unconfirmed is None:  # a router that has not switched yet may still call them
        for arm in change.remove_arms:  # (an arm inside the routers has no application: nothing to pop)
            apps.pop(arm_app(arm), None)
        try:
            await _deploy(list(apps.values()))
        except Exception as err:  # the routers no longer use it: an idle leftover, not a broken change
            log.warning("could not delete the applications of %s: %s", ", ".join(change.remove_arms), err)
    if unconfirmed is not None:
        raise unconfirmed
    log.info("%s change by %s applied (router config version %d)", change.kind, ctx.actor, version)
    result: dict[str, Any] = {"kind": change.kind, "config_version": version}
    if change.experiment is not None:
        result.update(experiment=change.experiment.model_dump(mode="json"), moved_share=moved)
    if change.policy is not None:
        result["policy"] = change.policy.model_dump(mode="json")
    return result


def _record(ctx: Context, live: Live, change: Change) -> None:
    """Save the new state and write the audit line, in one transaction: done once Serve holds the change, before
    waiting on replicas."""
    states, audit = dict(change.states), []
    if change.experiment is not None:
        states[state.EXPERIMENT_KEY] = state.experiment_doc(ctx.store, change.experiment)
        moved = moved_share(live.experiment.ranges(), change.experiment.ranges())
        old, new = live.experiment.model_dump(mode="json"), change.experiment.model_dump(mode="json")
        audit.append(state.audit_record(ctx.actor, old, new, moved, kind=change.kind, detail=change.detail))
    if change.policy is not None:
        states[state.POLICY_KEY] = state.policy_doc(change.policy, ctx.serving.policy)  # serving.yaml's, replaced
        old, new = live.policy.model_dump(mode="json"), change.policy.model_dump(mode="json")
        audit.append(state.audit_record(ctx.actor, old, new, kind="policy", detail=change.detail))
    if change.experiment is None and change.policy is None and change.set_versions:
        old = {arm: live.arm_ref(arm) for arm in change.set_versions}
        new = {arm: f"{m}:{v}" for arm, (m, v) in change.set_versions.items()}
        audit.append(state.audit_record(ctx.actor, {"versions": old}, {"versions": new}, kind=change.kind,
                                        detail=change.detail))  # fmt: skip
    ctx.store.record_change(states, audit)


def _arm_apps(ctx: Context, apps: dict[str, dict[str, Any]], change: Change) -> dict[str, dict[str, Any]]:
    """The applications of the arms the change starts or moves to another version (each reads its model's kind);
    none for an arm inside the routers."""
    out = {arm_app(arm): arm_app_config(ctx.home, ctx.queues, ctx.serving, arm, model, pinned)
           for arm, (model, pinned) in change.start_arms.items() if not in_router(ctx.serving, arm)}  # fmt: skip
    for arm, (model, pinned) in change.set_versions.items():
        if not in_router(ctx.serving, arm):
            out[arm_app(arm)] = _with_ref(ctx, apps, arm, model, pinned)
    return out


def _commit(change: Change) -> None:
    """The caller's bookkeeping once the change is live: a failure there is logged, never undoes the change."""
    if change.commit is None:
        return
    try:
        change.commit()
    except Exception as err:
        log.error("%s change applied, but its bookkeeping failed: %s: %s", change.kind, type(err).__name__, err)


def _with_ref(ctx: Context, apps: dict[str, dict[str, Any]], arm: str, model: str, version: str) -> dict[str, Any]:
    app = apps.get(arm_app(arm))
    if app is None:
        raise ApiError(409, f"arm {arm} has no application running; restart with mailroute serve")
    kind = model_kind(ctx.home, model, version)
    if kind != app.get("args", {}).get("kind"):
        raise ApiError(422, f"{model}:{version} is a {kind} model but arm {arm} runs {app['args'].get('kind')} models")
    spec = arm_spec(ctx.serving, kind)
    deployments = [
        {**d, "user_config": {**(d.get("user_config") or {}), **arm_user_config(spec, f"{model}:{version}")}}
        for d in app.get("deployments", [])
    ]
    return {**app, "deployments": deployments}


async def _deploy(apps: list[dict[str, Any]]) -> None:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.schema import ServeDeploySchema

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    await controller.apply_config.remote(ServeDeploySchema.model_validate({"applications": apps}))


def _replicas(ctx: Context, app: dict[str, Any]) -> int:
    spec = arm_spec(ctx.serving, str(app.get("args", {}).get("kind")))
    return spec.num_replicas if spec.autoscaling is None else max(1, spec.autoscaling.min_replicas)


async def _wait_for_arms(ctx: Context, refs: dict[str, str], apps: dict[str, dict[str, Any]]) -> None:
    """Until every replica of each arm answers `ready()` with its target ref (a new application first has to come
    up; a failed deployment ends the wait at once)."""
    from ray import serve

    deadline = time.monotonic() + ctx.timeout_s
    pending = dict(refs)
    while pending and time.monotonic() < deadline:
        status = await asyncio.to_thread(serve.status)
        for arm, ref in list(pending.items()):
            app = status.applications.get(arm_app(arm))
            if app is not None and app.status == "DEPLOY_FAILED":
                why = " ".join(str(app.message).split())[:300]
                raise ApiError(422, f"arm {arm} could not load {ref}: {why}")
            if app is None or app.status != "RUNNING":
                continue
            handle = serve.get_deployment_handle(arm_deployment(arm), arm_app(arm))
            try:
                seen = await asyncio.wait_for(handle.broadcast("ready").results_async(), 10.0)
            except Exception:  # a replica mid-update is briefly away; poll again
                continue
            if len(seen) >= _replicas(ctx, apps[arm_app(arm)]) and all(s == ref for s in seen):
                pending.pop(arm)
        if pending:
            await asyncio.sleep(0.2)
    if pending:
        raise ApiError(
            503,
            f"{', '.join(f'arm {a} ({r})' for a, r in pending.items())} did not become ready within "
            f"{ctx.timeout_s:.0f} s: nothing was changed",
        )


async def _wait_for_routers(ctx: Context, version: int) -> None:
    """Until every router replica reports `version` (reconfigure reaches them one at a time, and a replica being
    updated is briefly absent from broadcast, so the count matters as much as the versions)."""
    from ray import serve

    handle = serve.get_deployment_handle("Router", ctx.app_name)
    deadline = time.monotonic() + ctx.timeout_s
    while time.monotonic() < deadline:
        try:
            seen = await handle.broadcast("config_version_of_replica").results_async()
            if len(seen) >= ctx.router_replicas and all(v == version for v in seen):
                return
        except Exception:  # a replica mid-update is briefly away from broadcast; keep polling
            pass
        await asyncio.sleep(0.05)
    raise ApiError(
        503,
        f"the change is live and recorded, but not every router replica confirmed it within {ctx.timeout_s:.0f} s",
    )
