"""The admin API's changes, planned against the live state: the experiment (weights, coverage, versions, shadow), the
decision policy (thresholds), and the rollout commands, which `experiments.rollout.service` plans.

Every change is validated first by the same pydantic models as the config files, so a bad one changes nothing and
is answered with a 4xx and a one-line detail; it is then applied by `serving.ops.changes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experiments.assign import ArmRange
from experiments.config import ExperimentConfig
from serving.api import ApiError
from serving.config import ConfigError, PolicyConfig, parse_config
from serving.models.predictor import check_servable
from serving.models.registry import RegistryError, RegistryUnavailableError, open_registry
from serving.ops import changes
from serving.ops.apps import SHADOW, arm_specs
from serving.ops.changes import Change, Context, Live

CHANGEABLE = {"arms", "coverage", "active", "fallback_order", "shadow", "holdout_arm"}


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
            raise ApiError(
                422, "arms: arms are added and removed by a rollout (mailroute rollout start); change weights here"
            )
        for arm, value in change["arms"].items():  # a number is a weight; an object changes any arm fields
            if not isinstance(value, dict | int | float) or isinstance(value, bool):
                raise ApiError(422, f"arms.{arm}: expected a weight or an object of arm fields")
            data["arms"][arm] = {**data["arms"][arm], **(value if isinstance(value, dict) else {"weight": value})}
    data.update({k: v for k, v in change.items() if k != "arms"})
    try:
        candidate = parse_config(data, ExperimentConfig, "experiment")
        return candidate.pinned(ranges)
    except (ConfigError, ValueError) as err:
        raise ApiError(422, str(err).removeprefix("experiment: ")) from None


def registry_refusal(err: RegistryError) -> ApiError:
    """A registry that did not answer is a 503 to retry; anything else it refused is the request's fault, a 422."""
    if isinstance(err, RegistryUnavailableError):
        return ApiError(503, str(err), 10)
    return ApiError(422, str(err))


def servable(ctx: Context, model: str, version: str) -> tuple[str, str]:
    """`model:version` resolved, verified (checksums, every label a queue of the taxonomy); a 422 otherwise."""
    registry = open_registry(ctx.home)
    try:
        name, pinned = registry.resolve(f"{model}:{version}")
        info = registry.get(f"{name}:{pinned}", verify=True)
        check_servable(info.meta, list(ctx.queues["queues"]), ctx.queues.get("triage_queue", "triage"))
        if info.meta.kind == "cascade":
            from serving.models.cascade import check_cascade

            check_cascade(registry, info.path)
    except RegistryError as err:
        raise registry_refusal(err) from None
    return name, pinned


def same_labels(ctx: Context, served: tuple[str, str], candidate: tuple[str, str]) -> None:
    """A 422 unless the candidate (model, version) predicts the very queues of the served one (a new version of the
    arm's model or another model on the arm): one that lacks a queue would never route there again, one with another
    would need the router's taxonomy changed first."""
    registry = open_registry(ctx.home)
    try:
        # Resolved first: a live arm may still name `champion` or `latest`.
        served, candidate = registry.resolve(":".join(served)), registry.resolve(":".join(candidate))
        old, new = registry.read_meta(*served), registry.read_meta(*candidate)
    except RegistryError as err:
        raise registry_refusal(err) from None
    if set(new.labels) != set(old.labels):
        only_new = sorted(set(new.labels) - set(old.labels))
        only_old = sorted(set(old.labels) - set(new.labels))
        raise ApiError(
            422,
            f"{':'.join(candidate)} has another label set than {':'.join(served)} (only in the candidate: "
            f"{', '.join(only_new) or 'none'}; only in the arm: {', '.join(only_old) or 'none'})",
        )


def plan_experiment(ctx: Context, live: Live, name: str, body: Any) -> Change:
    new = merge_change(live.experiment, name, body, live.experiment.ranges())
    before, after = arm_specs(live.experiment), arm_specs(new)
    pinned = {arm: servable(ctx, m, v) for arm, (m, v) in after.items() if before.get(arm) != (m, v)}
    data = new.model_dump(mode="json")
    for arm, (model, version) in pinned.items():
        spec = data["shadow"] if arm == SHADOW else data["arms"][arm]
        spec["model"], spec["version"] = model, version
    new = ExperimentConfig.model_validate(data)
    start = {arm: mv for arm, mv in pinned.items() if arm not in before}  # a shadow switched on
    update = {arm: mv for arm, mv in pinned.items() if arm in before}
    for arm, candidate in update.items():
        same_labels(ctx, before[arm], candidate)  # the arm keeps routing to every queue it routed to
    removed = tuple(arm for arm in before if arm not in after)  # a shadow switched off
    return Change("experiment", experiment=new, start_arms=start, set_versions=update, remove_arms=removed)


async def change_experiment(ctx: Context, name: str, body: Any) -> dict[str, Any]:
    """PUT /v1/experiments/{name}: weights, coverage, activity, fallbacks, versions, the shadow."""
    return await changes.apply(ctx, lambda live: plan_experiment(ctx, live, name, body))


def plan_policy(live: Live, body: Any, queue_names: Sequence[str]) -> Change:
    if not isinstance(body, dict) or not body:
        raise ApiError(422, 'send a JSON object of policy fields, e.g. {"confidence_threshold": 0.55}')
    try:
        policy = parse_config({**live.policy.model_dump(mode="json"), **body}, PolicyConfig, "policy")
        policy.check_queues(queue_names)
    except (ConfigError, ValueError) as err:
        raise ApiError(422, str(err).removeprefix("policy: ")) from None
    return Change("policy", policy=policy)


async def change_policy(ctx: Context, body: Any, queue_names: Sequence[str]) -> dict[str, Any]:
    """PUT /v1/policy: the confidence threshold, per-queue thresholds, the second-queue margin."""
    return await changes.apply(ctx, lambda live: plan_policy(live, body, queue_names))


async def rollout_status(ctx: Context) -> dict[str, Any]:
    from experiments.rollout import service

    return await service.status(ctx)


async def start_rollout(ctx: Context, body: Any) -> dict[str, Any]:
    from experiments.rollout import service

    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise ApiError(422, 'send {"version": "name:vN", "canary_percent": 10, "arm": optional}')
    percent = body.get("canary_percent")
    arm = body.get("arm")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)):
        raise ApiError(422, "canary_percent: expected a number between 0 and 100")
    if arm is not None and not isinstance(arm, str):
        raise ApiError(422, "arm: expected an arm name")
    return await service.start(ctx, body["version"], percent, arm)


async def rollback(ctx: Context, body: Any) -> dict[str, Any]:
    from experiments.rollout import service

    arm = body.get("arm") if isinstance(body, dict) else None
    if arm is not None and not isinstance(arm, str):
        raise ApiError(422, "arm: expected an arm name")
    return await service.rollback(ctx, arm)
