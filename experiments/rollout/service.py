"""Rollout commands, planned against the live app and applied by `serving.ops.changes`: start a canary, widen it,
promote it, roll it back, or restore an arm's previous champion. The admin API calls them for people, the rollout
job (`experiments.rollout.job`) for the rule.

A canary is an arm of its own, `<arm>-canary`, serving the candidate to a share of the replaced arm's users (its
weight is that share of the arm's weight, and the bucket layout moves only those users: `experiments.assign`). It
is started as a new arm application before any router sends it a user, and deleted after the routers stopped. A
promotion first makes the arm itself serve the candidate, then gives the canary's users back to it; a rollback gives
them back to the arm still serving the previous version. Each step is audited (kind rollout or rollback), written to
the store's `rollout` document with its reason, and mirrored in the registry's stages (canary, champion, archived).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig, ExperimentsFile, load_experiments
from experiments.rollout import state as rollout_state
from experiments.rollout.rule import PROMOTE, ROLLBACK, WIDEN
from experiments.rollout.state import RolloutState, Step
from serving import clock
from serving.api import ApiError
from serving.config import ConfigError, parse_config
from serving.models.registry import ModelRegistry, RegistryError, open_registry
from serving.ops import changes
from serving.ops.admin import same_labels, servable
from serving.ops.changes import Change, Context, Live
from serving.store.eventlog import EventLogError

log = logging.getLogger(__name__)


def experiments_file(config_dir: Path) -> ExperimentsFile:
    try:
        return load_experiments(Path(config_dir) / "experiments.yaml")
    except ConfigError as err:
        raise ApiError(422, f"config error: {err}") from None


def _load(ctx: Context) -> RolloutState | None:
    try:
        return rollout_state.load(ctx.store)
    except rollout_state.RolloutStateError as err:
        raise ApiError(409, str(err)) from None
    except EventLogError as err:  # the store cannot be reached: say so, and when to try again
        raise ApiError(503, f"the event store is unavailable: {err}", 5) from None


def _weights(live: Live, rs: RolloutState, percent: float) -> dict[str, Any]:
    """The arms with the arm and its canary sharing their combined weight at `percent` for the canary."""
    arms = live.experiment.model_dump(mode="json")["arms"]
    total = arms[rs.arm]["weight"] + arms.get(rs.canary_arm, {}).get("weight", 0.0)
    arms[rs.arm]["weight"] = total * (1 - percent / 100)
    if percent >= 100 or percent <= 0:
        arms.pop(rs.canary_arm, None)
        arms[rs.arm]["weight"] = total
    else:
        arms.setdefault(rs.canary_arm, {"model": rs.model, "version": rs.candidate})["weight"] = total * percent / 100
    return arms


def _experiment(live: Live, arms: dict[str, Any], **changes_: Any) -> ExperimentConfig:
    data = {**live.experiment.model_dump(mode="json", exclude={"layout"}), "arms": arms, **changes_}
    fallback = data.get("fallback_order")
    if fallback:
        data["fallback_order"] = [a for a in fallback if a in arms]
    try:
        return parse_config(data, ExperimentConfig, "experiment").pinned(live.experiment.ranges())
    except (ConfigError, ValueError) as err:
        raise ApiError(422, str(err).removeprefix("experiment: ")) from None


def _step(action: str, percent: float, actor: str, reason: str) -> Step:
    return Step(ts=clock.now().isoformat(), action=action, percent=percent, actor=actor, reason=reason)


# ---- start ---------------------------------------------------------------------------------------------------
def plan_start(ctx: Context, live: Live, ref: str, percent: float | None, arm: str | None) -> Change:
    files = experiments_file(ctx.config_dir)
    cfg = files.rollout
    current = _load(ctx)
    if current is not None and current.running:
        raise ApiError(
            409,
            f"a rollout of {current.ref} is running ({current.percent:g}% of {current.arm}'s users): it must be "
            "promoted or rolled back (mailroute rollback) first",
        )
    registry = open_registry(ctx.home)
    model, version = servable(ctx, *_split(ref))
    serving_it = {
        a: s for a, s in live.experiment.arms.items() if s.model == model and not a.endswith(cfg.canary_suffix)
    }
    if not serving_it:
        raise ApiError(422, f"no arm of the running experiment serves model {model}; a rollout replaces an arm's model")
    if arm is None:
        if len(serving_it) > 1:
            raise ApiError(422, f"arms {', '.join(sorted(serving_it))} serve {model}: name the one to replace")
        arm = next(iter(serving_it))
    elif arm not in serving_it:
        raise ApiError(
            422, f"arm {arm} does not serve model {model} (arms serving it: {', '.join(sorted(serving_it))})"
        )
    served = serving_it[arm].version
    if served == version:
        raise ApiError(409, f"{model}:{version} already serves arm {arm}: it is the champion there")
    if not live.experiment.active or serving_it[arm].weight == 0:
        raise ApiError(
            422, f"arm {arm} serves no user now (weight 0, or the experiment is stopped): a canary needs users"
        )
    same_labels(ctx, (model, served), (model, version))
    percent = float(cfg.steps[0] if percent is None else percent)
    if not 0 < percent < 100:
        raise ApiError(422, f"canary_percent: {percent:g} is not between 0 and 100 (exclusive); the job promotes")
    canary = f"{arm}{cfg.canary_suffix}"
    if canary in live.experiment.arms:
        raise ApiError(409, f"arm {canary} already exists in the running experiment")
    now = clock.now().isoformat()
    rs = RolloutState(
        model=model, candidate=version, previous=served, arm=arm, canary_arm=canary,
        arm_weight=live.experiment.arms[arm].weight, steps=(percent, *[s for s in cfg.steps if s > percent]),
        step=0, status="running", started=now, step_started=now,
    )  # fmt: skip
    reason = f"{model}:{version} on {percent:g}% of {arm}'s users (replacing {model}:{served})"
    started = rs.model_copy(update={"history": (_step("start", percent, ctx.actor, reason),)})

    return Change(
        "rollout", experiment=_experiment(live, _weights(live, rs, percent)), start_arms={canary: (model, version)},
        detail=f"rollout start: {reason}", states=_saved(started),
        commit=lambda: _quietly(registry.promote, f"{model}:{version}", "canary"),
    )  # fmt: skip


async def start(ctx: Context, ref: str, percent: float | None, arm: str | None) -> dict[str, Any]:
    result = await changes.apply(ctx, lambda live: plan_start(ctx, live, ref, percent, arm))
    return {**result, "rollout": _dump(_load(ctx))}


def _split(ref: str) -> tuple[str, str]:
    model, sep, version = ref.partition(":")
    if not model or not sep or not version:
        raise ApiError(422, f"version '{ref}': expected name:vN (e.g. linear:v2)")
    return model, version


# ---- steps the rule takes ------------------------------------------------------------------------------------------
def plan_step(ctx: Context, live: Live, expected: RolloutState, action: str, reason: str) -> Change:
    """Widen, promote or roll back the running rollout, if it is still the one the caller looked at."""
    rs = _load(ctx)
    if rs is None or not rs.running:
        raise ApiError(409, "no rollout is running")
    if (rs.ref, rs.step, rs.started) != (expected.ref, expected.step, expected.started):
        raise ApiError(409, "the rollout moved on since it was checked; check again")
    if rs.canary_arm not in live.experiment.arms:
        return _ended_elsewhere(ctx, rs)
    registry = open_registry(ctx.home)
    if action == WIDEN:
        nxt = rs.steps[rs.step + 1]
        after = rs.model_copy(update={"step": rs.step + 1, "step_started": clock.now().isoformat(),
                                      "history": (*rs.history, _step(WIDEN, nxt, ctx.actor, reason))})  # fmt: skip
        return Change("rollout", experiment=_experiment(live, _weights(live, rs, nxt)),
                      detail=f"rollout widen {rs.ref} to {nxt:g}%: {reason}",
                      states=_saved(after))  # fmt: skip
    if action == PROMOTE:
        arms = _weights(live, rs, 100.0)
        arms[rs.arm]["version"] = rs.candidate
        done = rs.model_copy(update={"status": "promoted",
                                     "history": (*rs.history, _step(PROMOTE, 100.0, ctx.actor, reason))})  # fmt: skip

        def promoted() -> None:
            if registry.get(f"{rs.model}:champion", verify=False).meta.version != rs.candidate:
                _quietly(registry.promote, rs.ref, "champion")

        return Change("rollout", experiment=_experiment(live, arms), set_versions={rs.arm: (rs.model, rs.candidate)},
                      remove_arms=(rs.canary_arm,), detail=f"rollout promote {rs.ref}: {reason}",
                      states=_saved(done), commit=promoted)  # fmt: skip
    if action == ROLLBACK:
        return _plan_rollback_canary(ctx, live, rs, reason)
    raise ApiError(422, f"unknown rollout action {action!r}")


def _plan_rollback_canary(ctx: Context, live: Live, rs: RolloutState, reason: str) -> Change:
    registry = open_registry(ctx.home)
    done = rs.model_copy(update={"status": "rolled back",
                                 "history": (*rs.history, _step(ROLLBACK, 0.0, ctx.actor, reason))})  # fmt: skip

    return Change("rollback", experiment=_experiment(live, _weights(live, rs, 0.0)), remove_arms=(rs.canary_arm,),
                  detail=f"rollout of {rs.ref} rolled back: {reason}", states=_saved(done),
                  commit=lambda: _quietly(registry.retire, rs.ref))  # fmt: skip


async def step(ctx: Context, expected: RolloutState, action: str, reason: str) -> dict[str, Any]:
    return await changes.apply(ctx, lambda live: plan_step(ctx, live, expected, action, reason))


# ---- rollback --------------------------------------------------------------------------------------------------
def plan_rollback(ctx: Context, live: Live, arm: str | None) -> Change:
    """End the running rollout (its canary's users go back to the arm), or else restore the previous champion of
    `arm`'s model on that arm."""
    rs = _load(ctx)
    if rs is not None and rs.running and (arm is None or arm in (rs.arm, rs.canary_arm)):
        if rs.canary_arm not in live.experiment.arms:
            return _ended_elsewhere(ctx, rs)
        return _plan_rollback_canary(ctx, live, rs, f"rolled back by {ctx.actor}")
    if arm is None:
        arms = ", ".join(sorted(live.experiment.arms))
        raise ApiError(422, f"no rollout is running: name the arm whose previous champion to restore ({arms})")
    if arm not in live.experiment.arms:
        raise ApiError(404, f"no arm '{arm}' in the running experiment ({', '.join(sorted(live.experiment.arms))})")
    spec = live.experiment.arms[arm]
    registry = open_registry(ctx.home)
    try:
        history = registry.champion_history(spec.model)
    except RegistryError as err:
        raise ApiError(422, str(err)) from None
    if not history:
        raise ApiError(409, f"model {spec.model} has no previous champion to roll back to")
    previous = history[-1]
    if previous == spec.version:
        raise ApiError(409, f"arm {arm} already serves {spec.model}:{previous}, the previous champion")
    servable(ctx, spec.model, previous)
    arms = live.experiment.model_dump(mode="json")["arms"]
    arms[arm]["version"] = previous
    reason = f"arm {arm} back to {spec.model}:{previous} (from {spec.model}:{spec.version}) by {ctx.actor}"
    return Change("rollback", experiment=_experiment(live, arms), set_versions={arm: (spec.model, previous)},
                  detail=reason, commit=lambda: _restore(registry, spec.model))  # fmt: skip


def _restore(registry: ModelRegistry, model: str) -> None:
    _quietly(registry.rollback, model)


def _quietly(step: Callable[..., Any], *args: Any) -> None:
    """A registry stage change after the app changed: the app is what users see, so a stage that is already as
    wanted (a champion promoted by hand, say) is logged and the rollout goes on."""
    try:
        step(*args)
    except RegistryError as err:
        log.warning("registry left as it was: %s", err)


def _ended_elsewhere(ctx: Context, rs: RolloutState) -> Change:
    """The canary arm is gone from the running app (a restart from a config, a hand edit): the rollout is over."""
    reason = f"the running experiment no longer has arm {rs.canary_arm}: the rollout ended outside the rollout job"
    done = rs.model_copy(update={"status": "rolled back",
                                 "history": (*rs.history, _step(ROLLBACK, 0.0, ctx.actor, reason))})  # fmt: skip
    return Change("rollback", detail=reason, states=_saved(done))


def _saved(rollout: RolloutState) -> dict[str, dict[str, Any]]:
    """The rollout's state document, for `Change.states`: saved with the layout and the audit line, atomically."""
    return {rollout_state.ROLLOUT_KEY: rollout.model_dump(mode="json")}


async def rollback(ctx: Context, arm: str | None) -> dict[str, Any]:
    result = await changes.apply(ctx, lambda live: plan_rollback(ctx, live, arm))
    return {**result, "rollout": _dump(_load(ctx))}


async def status(ctx: Context) -> dict[str, Any]:
    live = await changes.read_live(ctx.app_name)
    arms = {a: {"model": s.model, "version": s.version, "weight": s.weight} for a, s in live.experiment.arms.items()}
    return {"rollout": _dump(await asyncio.to_thread(_load, ctx)), "arms": arms}


def _dump(rs: RolloutState | None) -> dict[str, Any] | None:
    return None if rs is None else rs.model_dump(mode="json")
