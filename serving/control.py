"""Runtime control of the running app: the Serve deploy config, experiment changes, the audit log.

A change never restarts replicas: it rewrites the `user_config` of the deployments it touches and sends the whole
config back to Serve's controller (`apply_config`), which calls `reconfigure()` on the running replicas. Every change
is validated first by the same pydantic model as `configs/experiments.yaml`, so a bad one changes nothing, and it
is appended to `<home>/audit.jsonl` (who, when, old, new). The running experiment, with its pinned bucket layout,
is kept in `<home>/experiment.json`, so that a restart keeps every user's arm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from experiments.assign import ArmRange, moved_share
from experiments.config import ExperimentConfig
from serving.api import ApiError
from serving.config import ConfigError, Home, ModelServerSpec, ServingConfig, parse_config
from serving.models.registry import ModelRegistry, RegistryError
from serving.router import SHADOW

log = logging.getLogger(__name__)
STATE_FILE = "experiment.json"
AUDIT_FILE = "audit.jsonl"
SALT_FILE = "user_salt"
CHANGEABLE = {"arms", "coverage", "active", "fallback_order", "shadow", "holdout_arm"}


def user_salt(home: Home) -> str:
    """The salt of user pseudonyms: created once per home (0600), so every replica and restart agrees."""
    path = home.root / SALT_FILE
    home.root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    for _ in range(100):  # another replica may have created it a moment ago and still be writing
        salt = path.read_text().strip()
        if salt:
            return salt
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")


def load_state(home: Home, configured: ExperimentConfig) -> ExperimentConfig:
    """The saved running experiment if it is the configured one (same name and salt), else the configured one."""
    path = home.root / STATE_FILE
    if not path.exists():
        return configured
    try:
        saved = parse_config(json.loads(path.read_text()), ExperimentConfig, str(path))
    except (json.JSONDecodeError, ConfigError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return configured
    if (saved.name, saved.salt) != (configured.name, configured.salt):
        return configured
    return saved


def save_state(home: Home, experiment: ExperimentConfig) -> None:
    home.root.mkdir(parents=True, exist_ok=True)
    tmp = home.root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(experiment.model_dump(mode="json"), indent=2))
    os.replace(tmp, home.root / STATE_FILE)


def audit(home: Home, actor: str, old: dict[str, Any], new: dict[str, Any], moved: float) -> None:
    record = {"ts": datetime.now(UTC).isoformat(), "actor": actor, "old": old, "new": new, "moved_share": moved}
    home.root.mkdir(parents=True, exist_ok=True)
    with (home.root / AUDIT_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def resolve_arms(home: Home, experiment: ExperimentConfig) -> dict[str, tuple[str, str]]:
    """arm -> (kind, ref) for every arm and the shadow; an unknown model or version is an error naming it."""
    registry = ModelRegistry(home.registry)
    specs = {arm: (s.model, s.version) for arm, s in experiment.arms.items()}
    if experiment.shadow is not None:
        specs[SHADOW] = (experiment.shadow.model, experiment.shadow.version)
    out: dict[str, tuple[str, str]] = {}
    for arm, (model, version) in specs.items():
        ref = f"{model}:{version}"
        info = registry.get(ref, verify=False)
        out[arm] = (info.meta.kind, ref)
    return out


def arm_user_config(spec: ModelServerSpec, ref: str) -> dict[str, Any]:
    return {
        "ref": ref,
        "threads": spec.threads,
        "quantize": spec.quantize,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_timeout_s": spec.batch_wait_timeout_s,
    }


def deploy_config(
    home: Home, queues: dict[str, Any], serving: ServingConfig, experiment: ExperimentConfig, app_name: str
) -> dict[str, Any]:
    """The Serve application config (import path + args + per-deployment user_config)."""
    arms = resolve_arms(home, experiment)
    deployments = [{"name": "Router", "user_config": {"experiment": experiment.model_dump(mode="json"), "version": 1}}]
    for arm, (kind, ref) in arms.items():
        spec = serving.transformer if kind == "transformer" else serving.linear
        name = "shadow" if arm == SHADOW else f"arm-{arm}"
        deployments.append({"name": name, "user_config": arm_user_config(spec, ref)})
    return {
        "name": app_name,
        "route_prefix": "/",
        "import_path": "serving.app:build_app",
        "args": {
            "home": str(home.root),
            "queues": queues,
            "serving": serving.model_dump(mode="json"),
            "arms": {arm: kind for arm, (kind, _) in arms.items()},
            "secrets": {
                name: os.environ[name]
                for name in (serving.admin_token_env, serving.user_salt_env)
                if os.environ.get(name)
            },
        },
        "deployments": deployments,
    }


def merge_change(current: ExperimentConfig, name: str, change: Any, ranges: Sequence[ArmRange]) -> ExperimentConfig:
    """Validate a PUT body against the running experiment; returns the new config with its layout pinned."""
    if name != current.name:
        raise ApiError(404, f"no running experiment named '{name}' (running: {current.name})")
    if not isinstance(change, dict) or not change:
        raise ApiError(422, 'send a JSON object with the fields to change, e.g. {"arms": {...}} or {"coverage": 0.5}')
    unknown = sorted(set(change) - CHANGEABLE)
    if unknown:
        raise ApiError(
            422, f"cannot change {', '.join(unknown)} at runtime (changeable: {', '.join(sorted(CHANGEABLE))})"
        )
    data = current.model_dump(mode="json", exclude={"layout"})
    if "arms" in change:
        if not isinstance(change["arms"], dict):
            raise ApiError(422, "arms: expected an object of arm name -> {model, version, weight}")
        if not set(change["arms"]) <= set(current.arms):
            raise ApiError(422, "arms: adding or removing arms needs a redeploy (mailroute serve); change weights here")
        for arm, value in change["arms"].items():  # a number is a weight; an object changes any arm fields
            data["arms"][arm] = {**data["arms"][arm], **(value if isinstance(value, dict) else {"weight": value})}
    data.update({k: v for k, v in change.items() if k != "arms"})
    try:
        candidate = parse_config(data, ExperimentConfig, "experiment")
        return candidate.pinned(ranges)
    except (ConfigError, ValueError) as err:
        raise ApiError(422, str(err).removeprefix("experiment: ")) from None


async def apply_change(
    home: Home,
    app_name: str,
    current: ExperimentConfig,
    ranges: Sequence[ArmRange],
    name: str,
    change: Any,
    actor: str,
    timeout_s: float,
    router_replicas: int,
) -> dict[str, Any]:
    """Validate, check the model versions exist, push the new user_configs to Serve, wait until every router
    replica runs the new experiment, then record the change."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.schema import ServeDeploySchema

    new = merge_change(current, name, change, ranges)
    try:
        arms = resolve_arms(home, new)
    except RegistryError as err:
        raise ApiError(422, str(err)) from None
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    configs = await controller.get_app_configs.remote()
    if app_name not in configs:
        raise ApiError(409, f"application '{app_name}' was not deployed from a config; restart with mailroute serve")
    apps = []
    version = 0
    for app, cfg in configs.items():
        data = cfg.model_dump(exclude_unset=True)
        if app == app_name:
            for dep in data.get("deployments", []):
                uc = dep.get("user_config") or {}
                if dep["name"] == "Router":
                    version = int(uc.get("version", 0)) + 1
                    dep["user_config"] = {"experiment": new.model_dump(mode="json"), "version": version}
                elif dep["name"].startswith("arm-") or dep["name"] == "shadow":
                    arm = SHADOW if dep["name"] == "shadow" else dep["name"].removeprefix("arm-")
                    if arm in arms:
                        dep["user_config"] = {**uc, "ref": arms[arm][1]}
        apps.append(data)
    await controller.apply_config.remote(ServeDeploySchema.model_validate({"applications": apps}))
    await _wait_for_routers(app_name, version, router_replicas, timeout_s=max(10.0, timeout_s * 5))
    moved = moved_share(ranges, new.ranges())
    save_state(home, new)
    audit(home, actor, current.model_dump(mode="json"), new.model_dump(mode="json"), moved)
    log.info("experiment %s changed by %s: moved %.4f of users", name, actor, moved)
    return {"experiment": new.model_dump(mode="json"), "config_version": version, "moved_share": moved}


async def _wait_for_routers(app_name: str, version: int, replicas: int, timeout_s: float) -> None:
    """Until `replicas` router replicas report `version` (reconfigure reaches them one at a time, and a replica
    being updated is briefly absent from broadcast, so the count matters as much as the versions)."""
    from ray import serve

    handle = serve.get_deployment_handle("Router", app_name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen = await handle.broadcast("config_version_of_replica").results_async()
            if len(seen) >= replicas and all(v == version for v in seen):
                return
        except Exception:  # a replica mid-update is briefly away from broadcast; keep polling
            pass
        await asyncio.sleep(0.05)
    raise ApiError(503, f"the change was sent but not every router replica confirmed it within {timeout_s:.0f} s")
