"""The Serve applications mailroute runs, as deploy configs: one for the router, one per arm (and the shadow).

    mailroute              the FastAPI router (route prefix /); user_config: the experiment and the policy
    mailroute-arm-<arm>    one arm's ModelServer, deployment `arm-<arm>` (no route); user_config: the pinned version
    mailroute-shadow       the shadow model's ModelServer, deployment `shadow`, when the experiment has one

Each arm is an application of its own so that an arm can be added (a canary) or removed (a finished rollout) without
touching the router application: Serve rebuilds, and restarts, an application whose arguments change, but only
reconfigures one whose `user_config` changes. Routers reach the arms by name (`serving.app.Router`).

Versions are pinned when an arm is deployed: `model:champion` is resolved once, here, into `model:vN`, and that ref
is what the arm's replicas load and what the running experiment records, so that a promotion in the registry never
leaves one arm serving two versions (a replica that restarts loads the same pinned version as its siblings).
"""

from __future__ import annotations

import os
from typing import Any

from experiments.config import ExperimentConfig
from serving import clock
from serving.config import Home, ModelServerSpec, PolicyConfig, ServingConfig, config_dir
from serving.models.registry import REGISTRY_URI_ENV, RegistryError, open_registry
from serving.router import SHADOW

APP_NAME = "mailroute"


def arm_app(arm: str) -> str:
    """The Serve application serving `arm` (or the shadow)."""
    return f"{APP_NAME}-shadow" if arm == SHADOW else f"{APP_NAME}-arm-{arm}"


def arm_deployment(arm: str) -> str:
    """The deployment name inside that application, also the component name of its log lines."""
    return "shadow" if arm == SHADOW else f"arm-{arm}"


def arm_of_app(app: str) -> str | None:
    """The arm an application serves, or None when it is not an arm application."""
    if app == f"{APP_NAME}-shadow":
        return SHADOW
    prefix = f"{APP_NAME}-arm-"
    return app.removeprefix(prefix) if app.startswith(prefix) else None


def pin_versions(home: Home, experiment: ExperimentConfig) -> ExperimentConfig:
    """The experiment with every arm's (and the shadow's) version resolved in the registry: `champion`, `latest`
    or `canary` become `vN`. An unknown model or version raises RegistryError naming it."""
    registry = open_registry(home)
    data = experiment.model_dump(mode="json")
    for spec in data["arms"].values():
        spec["version"] = registry.resolve(f"{spec['model']}:{spec['version']}")[1]
    if data.get("shadow"):
        shadow = data["shadow"]
        shadow["version"] = registry.resolve(f"{shadow['model']}:{shadow['version']}")[1]
    return ExperimentConfig.model_validate(data)


def arm_specs(experiment: ExperimentConfig) -> dict[str, tuple[str, str]]:
    """arm -> (model, version) for every arm and the shadow."""
    specs = {arm: (s.model, s.version) for arm, s in experiment.arms.items()}
    if experiment.shadow is not None:
        specs[SHADOW] = (experiment.shadow.model, experiment.shadow.version)
    return specs


HEAVY_KINDS = ("transformer", "cascade")  # the transformer's replica settings, and batched calls
IN_ROUTER_KINDS = ("linear", "rules")  # cheap enough to run inside a router replica (`in_router_arms`)


def in_router(serving: ServingConfig, arm: str) -> bool:
    """Whether this arm's model runs inside the router replicas (never the shadow's: its answers are only logged)."""
    return arm != SHADOW and arm in serving.in_router_arms


def check_in_router(arm: str, ref: str, kind: str) -> None:
    """Only a cheap model may run inside the router: a RegistryError naming the arm otherwise."""
    if kind not in IN_ROUTER_KINDS:
        raise RegistryError(
            f"arm {arm} runs inside the router (in_router_arms), but {ref} is a {kind} model: only "
            f"{' and '.join(IN_ROUTER_KINDS)} models run there; take the arm out of in_router_arms"
        )


def arm_spec(serving: ServingConfig, kind: str) -> ModelServerSpec:
    """The replica settings an arm of this model kind runs with: the transformer's for a model that runs one."""
    return serving.transformer if kind in HEAVY_KINDS else serving.linear


def model_kind(home: Home, model: str, version: str) -> str:
    return open_registry(home).read_meta(model, version).kind


def arm_user_config(spec: ModelServerSpec, ref: str) -> dict[str, Any]:
    return {
        "ref": ref,
        "threads": spec.threads,
        "quantize": spec.quantize,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_timeout_s": spec.batch_wait_timeout_s,
    }


def _runtime_env() -> dict[str, Any]:
    # Every replica must stamp events on the driver's clock (a simulation runs on a scaled one), and read the same
    # registry (not a secret: credentials for it come from each node's environment, as the store's URL does).
    env = clock.env()
    if os.environ.get(REGISTRY_URI_ENV):
        env[REGISTRY_URI_ENV] = os.environ[REGISTRY_URI_ENV]
    return {"env_vars": env} if env else {}


def router_user_config(
    experiment: ExperimentConfig, policy: PolicyConfig, version: int, local: dict[str, str]
) -> dict[str, Any]:
    """What the router replicas are reconfigured with: the experiment, the policy, the change's number, and the
    pinned `model:version` of each arm that runs inside them."""
    return {"experiment": experiment.model_dump(mode="json"), "policy": policy.model_dump(mode="json"),
            "version": version, "local": dict(local)}  # fmt: skip


def router_app(
    home: Home, queues: dict[str, Any], serving: ServingConfig, experiment: ExperimentConfig, policy: PolicyConfig,
    local: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The router application's deploy config (`local`: the pinned refs of the arms that run inside it)."""
    return {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "serving.app:build_app",
        "runtime_env": _runtime_env(),
        "args": {
            "home": str(home.root),
            "queues": queues,
            "serving": serving.model_dump(mode="json"),
            "config_dir": str(config_dir().absolute()),
        },
        "deployments": [{"name": "Router", "user_config": router_user_config(experiment, policy, 1, local or {})}],
    }


def arm_app_config(
    home: Home, queues: dict[str, Any], serving: ServingConfig, arm: str, model: str, version: str,
    kind: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One arm's application deploy config, serving the pinned `model:version` (of `kind`, else the registry's)."""
    kind = kind or model_kind(home, model, version)
    spec = arm_spec(serving, kind)
    return {
        "name": arm_app(arm),
        "route_prefix": None,
        "import_path": "serving.app:build_arm",
        "runtime_env": _runtime_env(),
        "args": {
            "home": str(home.root),
            "queues": queues,
            "serving": serving.model_dump(mode="json"),
            "arm": arm,
            "kind": kind,
        },
        "deployments": [{"name": arm_deployment(arm), "user_config": arm_user_config(spec, f"{model}:{version}")}],
    }


def app_configs(
    home: Home,
    queues: dict[str, Any],
    serving: ServingConfig,
    experiment: ExperimentConfig,
    policy: PolicyConfig,
) -> list[dict[str, Any]]:
    """Every application of a start: the router and one per arm (but the arms that run inside the router), from an
    experiment whose versions are pinned."""
    local: dict[str, str] = {}
    arms = []
    for arm, (model, version) in arm_specs(experiment).items():
        if in_router(serving, arm):
            check_in_router(arm, f"{model}:{version}", model_kind(home, model, version))
            local[arm] = f"{model}:{version}"
        else:
            arms.append(arm_app_config(home, queues, serving, arm, model, version))
    return [router_app(home, queues, serving, experiment, policy, local), *arms]
