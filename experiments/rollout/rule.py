"""The rollout rule: from the canary's figures against the arm it would replace, wait, widen, promote or roll back.

Pure: the rollout job gathers the evidence (the experiment report over the rollout, with the replaced arm as the
control) and applies what this returns. The first rule that applies decides:

1. a guardrail of the canary broken (the report's judgement: above its limit and worse than the arm): **roll back**,
   at once, whatever the exposure;
2. the always-valid interval of (canary - arm) on the primary metric wholly below minus the margin: **roll back**;
3. a sample-ratio mismatch: **wait** (no difference can be trusted while the split is off);
4. not enough exposure at this step (`min_step_duration`, `min_emails`) or too few judged emails since the rollout
   began (`min_verdicts`, in the canary and in the arm): **wait**;
5. the next step is 100%: **promote** when `promote_requires` holds (better: the interval above 0; non_inferior:
   above minus the margin) and no guardrail is at risk; else **wait**;
6. otherwise **widen** to the next step when the interval lies above minus the margin; else **wait**.

The always-valid interval, not the fixed-horizon one, decides, so looking at every check does not promote on noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from experiments.analysis.recommend import Guardrail, describe_difference
from experiments.analysis.stats import Difference
from experiments.rollout.config import RolloutConfig
from serving.clock import parse_duration

WAIT, WIDEN, PROMOTE, ROLLBACK = "wait", "widen", "promote", "roll back"


@dataclass(frozen=True)
class Evidence:
    """What the rollout job read for one check."""

    now: datetime
    step_started: datetime
    canary_emails_at_step: int
    verdicts: Mapping[str, int]  # judged emails since the rollout began, in the canary and in the arm
    rails: Sequence[Guardrail]  # the canary's guardrails, judged against the arm
    primary: Difference | None  # canary - arm on the primary metric; None when not estimable
    primary_unit: str  # "share" (accuracy) or "minutes" (net saving)
    srm_alarm: bool = False
    srm_note: str = ""


@dataclass(frozen=True)
class Decision:
    action: str  # wait | widen | promote | roll back
    percent: float  # the canary's share of the arm's users after the action
    reasons: tuple[str, ...]

    @property
    def sentence(self) -> str:
        return f"{self.action}: {'; '.join(self.reasons)}"


def decide(canary: str, arm: str, steps: Sequence[float], step: int, ev: Evidence, cfg: RolloutConfig) -> Decision:
    """The decision at `steps[step]` percent (rules in the module docstring)."""
    here = steps[step]
    nxt = steps[step + 1] if step + 1 < len(steps) else 100.0
    broken = [g.text for g in ev.rails if g.status == "broken"]
    if broken:
        return Decision(ROLLBACK, 0.0, tuple(broken))
    margin = cfg.non_inferiority_margin
    if ev.primary is None or not ev.primary.sequential.known:
        diff_text = f"the difference between {canary} and {arm} cannot be estimated yet"
        lo = hi = None
    else:
        diff_text = describe_difference(ev.primary, canary, arm, ev.primary_unit)
        lo, hi = ev.primary.sequential.lo, ev.primary.sequential.hi
    if hi is not None and hi < -margin:
        return Decision(ROLLBACK, 0.0, (diff_text, f"{canary} is worse than {arm} beyond the margin ({margin:g})"))
    if ev.srm_alarm:
        return Decision(WAIT, here, (f"{ev.srm_note}: fix the assignment before trusting any difference",))
    waiting = _exposure(ev, cfg, canary, arm)
    if waiting:
        return Decision(WAIT, here, (*waiting, diff_text))
    if lo is None:
        return Decision(WAIT, here, (diff_text,))
    if nxt >= 100:
        at_risk = [g.text for g in ev.rails if g.status == "at risk"]
        bar = 0.0 if cfg.promote_requires == "better" else -margin
        if lo > bar and not at_risk:
            return Decision(PROMOTE, 100.0, (diff_text, "no guardrail broken or at risk"))
        why = at_risk or [f"promotion needs the always-valid interval above {bar:g} ({cfg.promote_requires})"]
        return Decision(WAIT, here, (diff_text, *why))
    if lo > -margin:
        return Decision(WIDEN, nxt, (diff_text, f"not worse than {arm} by more than {margin:g}; no guardrail broken"))
    return Decision(WAIT, here, (diff_text, f"widening needs the always-valid interval above {-margin:g}"))


def _exposure(ev: Evidence, cfg: RolloutConfig, canary: str, arm: str) -> list[str]:
    """Why the step has not seen enough yet (empty: enough)."""
    out = []
    needed = parse_duration(cfg.min_step_duration)
    if ev.now - ev.step_started < needed:
        hours = (ev.now - ev.step_started).total_seconds() / 3600
        out.append(f"{hours:.1f} h at this step of the {needed.total_seconds() / 3600:g} h needed")
    if ev.canary_emails_at_step < cfg.min_emails:
        out.append(f"{ev.canary_emails_at_step} {canary} emails at this step of the {cfg.min_emails} needed")
    few = {a: ev.verdicts.get(a, 0) for a in (canary, arm) if ev.verdicts.get(a, 0) < cfg.min_verdicts}
    if few:
        detail = ", ".join(f"{a} has {n}" for a, n in few.items())
        out.append(f"too few judged emails since the rollout began ({detail}; {cfg.min_verdicts} needed)")
    return out
