"""Guardrails and the recommendation — keep running, promote the challenger, roll it back — with reasons in words.

Rules, for each challenger against the control, in this order (the first that applies decides):

1. no emails from the challenger in the window: **keep running**;
2. a guardrail broken: **roll back**, whatever it saves. A guardrail is judged only once the arm has `min_verdicts`
   emails from at least 2 users ("no data" before: one unlucky email must not roll an arm back). A rate is broken
   when its whole interval lies above the limit and the challenger is worse than the control (the difference's
   interval above 0); p95 latency when it is above the limit and the control's is not. Above the limit in the
   control too, it is **shared** — an outage or overload of both arms, not the challenger's doing — and the rule
   is **keep running** and fix it: neither arm's figures are what they will be;
3. SRM alarm: **keep running** and fix the assignment: no difference can be trusted while the split is off;
4. fewer than `min_verdicts` judged emails in either arm: **keep running**;
5. the always-valid interval of the primary metric's difference (challenger − control) wholly above 0:
   **promote**, unless a guardrail is at risk (its estimate above the limit, its interval not yet): then keep running;
   wholly below 0: **roll back**;
6. otherwise **keep running**: the difference is not yet clear.

The always-valid interval, not the fixed-horizon one, decides, so a daily look does not promote on noise; both are
printed. Pure functions: the report assembles the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.stats import Difference, Interval, SrmResult

KEEP, PROMOTE, ROLLBACK = "keep running", "promote", "roll back"
RATE_GUARDRAILS = (
    ("triage_rate", "triage rate", "max_triage_rate"),
    ("fallback_rate", "fallback rate", "max_fallback_rate"),
    ("error_rate", "error rate", "max_error_rate"),
)


@dataclass(frozen=True)
class Guardrail:
    arm: str
    name: str  # p95_latency_ms, triage_rate, fallback_rate, error_rate
    value: float | None
    threshold: float
    status: str  # ok | at risk | broken | shared (above the limit in the control too) | no data
    text: str


@dataclass(frozen=True)
class Recommendation:
    action: str  # keep running | promote | roll back
    arm: str | None  # the challenger it is about (None: the experiment as a whole)
    reasons: tuple[str, ...]

    @property
    def sentence(self) -> str:
        head = self.action if self.arm is None else f"{self.action} {self.arm}"
        return f"{head}: {'; '.join(self.reasons)}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def guardrails(
    arm: str,
    values: Mapping[str, Interval],
    p95: float | None,
    emails: int,
    users: int,
    cfg: AnalysisConfig,
    *,
    control: tuple[Sequence[Guardrail], Mapping[str, Difference]] | None = None,
) -> list[Guardrail]:
    """The four guardrails of one arm (rules in the module docstring). `control`: the control arm's own guardrails
    and this arm's differences from it on the rates, for a challenger; None for the control itself."""
    g = cfg.guardrails
    limits = {"p95_latency_ms": g.max_p95_latency_ms, **{key: getattr(g, f) for key, _, f in RATE_GUARDRAILS}}
    labels = {"p95_latency_ms": "p95 latency", **{key: label for key, label, _ in RATE_GUARDRAILS}}
    if emails < cfg.min_verdicts or users < 2:
        why = f"too few emails to judge ({emails} from {users} users; {cfg.min_verdicts} from at least 2 users needed)"
        return [Guardrail(arm, k, None, limit, "no data", f"{arm} {labels[k]}: {why}") for k, limit in limits.items()]
    theirs = {r.name: r for r in (control[0] if control else ())}
    diffs = control[1] if control else {}

    def control_over(key: str) -> bool:
        other = theirs.get(key)
        return other is not None and other.status in ("broken", "at risk", "shared")

    out = []
    limit = limits["p95_latency_ms"]
    if p95 is None:
        out.append(Guardrail(arm, "p95_latency_ms", None, limit, "no data", f"{arm}: no latency measured"))
    else:
        over = p95 > limit
        status = ("shared" if control_over("p95_latency_ms") else "broken") if over else "ok"
        text = f"{arm} p95 latency {p95:.1f} ms {'above' if over else 'within'} the {limit:g} ms limit"
        out.append(Guardrail(arm, "p95_latency_ms", p95, limit, status, _shared(text, status, control)))
    for key, label, _ in RATE_GUARDRAILS:
        limit = limits[key]
        iv = values.get(key, Interval(None))
        if not iv.known or iv.estimate is None:
            out.append(Guardrail(arm, key, None, limit, "no data", f"{arm}: no {label} (no emails)"))
            continue
        # Every user alike (se 0: all failed, say) gives no interval, but the estimate is then the whole story.
        lo = iv.lo if iv.lo is not None else (iv.estimate if iv.se == 0 else None)
        above = lo is not None and lo > limit
        if not above:
            status = "at risk" if iv.estimate > limit else "ok"
        elif control is None:
            status = "broken"
        else:
            worse = diffs.get(key)
            worse_than_control = worse is not None and worse.fixed.lo is not None and worse.fixed.lo > 0
            status = "broken" if worse_than_control or not control_over(key) else "shared"
        word = {"broken": "above", "shared": "above", "at risk": "possibly above", "ok": "within"}[status]
        text = f"{arm} {label} {_pct(iv.estimate)} {word} the {_pct(limit)} limit"
        out.append(Guardrail(arm, key, iv.estimate, limit, status, _shared(text, status, control)))
    return out


def _shared(text: str, status: str, control: tuple[Sequence[Guardrail], Mapping[str, Difference]] | None) -> str:
    if status != "shared" or control is None or not control[0]:
        return text
    return f"{text}, as is the control {control[0][0].arm}'s (both arms)"


def describe_difference(diff: Difference, challenger: str, control: str, unit: str) -> str:
    """E.g. 'transformer saves 0.41 ± 0.12 min per email more than linear (always-valid ± 0.20)'."""
    f, s = diff.fixed, diff.sequential
    if not f.known or f.estimate is None or f.half_width is None or s.half_width is None:
        return f"the difference between {challenger} and {control} cannot be estimated yet"
    est, hw, shw = f.estimate, f.half_width, s.half_width
    if unit == "share":
        word = "higher" if est >= 0 else "lower"
        return (
            f"{challenger}'s accuracy is {abs(est) * 100:.2f} ± {hw * 100:.2f} points {word} than {control}'s "
            f"(always-valid ± {shw * 100:.2f})"
        )
    more = "more" if est >= 0 else "less"
    return (
        f"{challenger} saves {abs(est):.2f} ± {hw:.2f} min per email {more} than {control} (always-valid ± {shw:.2f})"
    )


def recommend(
    challenger: str,
    control: str,
    *,
    emails: int,
    verdicts: Mapping[str, int],
    primary: Difference,
    primary_unit: str,
    rails: Sequence[Guardrail],
    srm: SrmResult,
    cfg: AnalysisConfig,
) -> Recommendation:
    """The recommendation for one challenger (rules in the module docstring)."""
    if emails == 0:
        return Recommendation(KEEP, challenger, (f"{challenger} has no emails in this window",))
    mine = [g for g in rails if g.arm == challenger]
    broken = [g.text for g in mine if g.status == "broken"]
    shared = [g.text for g in mine if g.status == "shared"]
    at_risk = [g.text for g in mine if g.status == "at risk"]
    rails_text = "no guardrail broken" if not broken and not at_risk else "; ".join(broken + at_risk)
    srm_text = srm.note if srm.alarm else ("SRM check passed" if srm.p_value is not None else srm.note)
    diff_text = describe_difference(primary, challenger, control, primary_unit)
    if broken:
        return Recommendation(ROLLBACK, challenger, (*broken, diff_text, srm_text))
    if shared:
        return Recommendation(
            KEEP, challenger, (*shared, "fix what both arms share before deciding", diff_text, srm_text)
        )
    if srm.alarm:
        return Recommendation(
            KEEP, challenger, (srm_text + ": fix the assignment before trusting any difference", diff_text, rails_text)
        )
    few = {arm: n for arm, n in verdicts.items() if n < cfg.min_verdicts}
    if few:
        detail = ", ".join(f"{arm} has {n}" for arm, n in few.items())
        return Recommendation(
            KEEP, challenger, (f"too few emails with a verdict ({detail}; {cfg.min_verdicts} needed)", diff_text)
        )
    side = primary.sequential.excludes_zero()
    if side > 0 and not at_risk:
        return Recommendation(PROMOTE, challenger, (diff_text, rails_text, srm_text))
    if side > 0:
        return Recommendation(KEEP, challenger, (diff_text, "but " + rails_text, srm_text))
    if side < 0:
        return Recommendation(ROLLBACK, challenger, (diff_text, rails_text, srm_text))
    return Recommendation(
        KEEP, challenger, (diff_text + ": not yet clear (the always-valid interval holds 0)", rails_text, srm_text)
    )


def overall(recs: Sequence[Recommendation]) -> Recommendation:
    """One headline for the experiment: a rollback first (safety), then a promotion, else keep running (the report
    lists every challenger's own recommendation beside it)."""
    if not recs:
        return Recommendation(KEEP, None, ("no challenger arm to compare with the control",))
    if len(recs) == 1:
        return recs[0]
    for action in (ROLLBACK, PROMOTE):
        chosen = [r for r in recs if r.action == action]
        if chosen:
            return chosen[0]
    return Recommendation(KEEP, None, tuple(r.sentence for r in recs))
