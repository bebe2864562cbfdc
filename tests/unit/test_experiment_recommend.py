"""Guardrails and the recommendation rules on hand-made inputs: a guardrail needs enough emails to be judged, and
an outage both arms share is not the challenger's fault."""

from __future__ import annotations

import pytest

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.recommend import PROMOTE, ROLLBACK, guardrails, recommend
from experiments.analysis.stats import Difference, Interval, SrmResult

pytestmark = pytest.mark.unit
CFG = AnalysisConfig()
SRM_OK = SrmResult({"linear": 500, "transformer": 500}, {"linear": 0.5, "transformer": 0.5}, 0.0, 1.0, False, "ok")
CLEAR_GAIN = Difference("net_saving", Interval(1.0, 0.04, 0.92, 1.08), Interval(1.0, 0.05, 0.9, 1.1), 1000)


def diff(est: float, lo: float, hi: float) -> Difference:
    return Difference(
        "fallback_rate", Interval(est, (hi - lo) / 4, lo, hi), Interval(est, None, lo * 1.5, hi * 1.5), 1800
    )


def rates(fallback: Interval, other: float = 0.0) -> dict[str, Interval]:
    quiet = Interval(other, 0.001, other, other + 0.002)
    return {"triage_rate": quiet, "fallback_rate": fallback, "error_rate": quiet}


def test_one_email_cannot_break_a_guardrail() -> None:
    rails = guardrails("transformer", rates(Interval(1.0)), 12.0, emails=1, users=1, cfg=CFG)
    fallback = next(g for g in rails if g.name == "fallback_rate")
    assert fallback.status == "no data" and "too few" in fallback.text
    rec = recommend("transformer", "linear", emails=1, verdicts={"linear": 1, "transformer": 0}, primary=CLEAR_GAIN,
                    primary_unit="min/email", rails=rails, srm=SRM_OK, cfg=CFG)  # fmt: skip
    assert rec.action != ROLLBACK, rec.sentence


def test_an_outage_both_arms_share_does_not_roll_back_the_challenger() -> None:
    control = guardrails("linear", rates(Interval(0.027, 0.002, 0.023, 0.031)), 20.0, emails=5000, users=900, cfg=CFG)
    same = Difference(
        "fallback_rate", Interval(0.002, 0.003, -0.004, 0.008), Interval(0.002, 0.004, -0.006, 0.01), 1800
    )
    challenger = guardrails(
        "transformer", rates(Interval(0.029, 0.002, 0.025, 0.033)), 25.0, emails=5000, users=900, cfg=CFG,
        control=(control, {"fallback_rate": same}),
    )  # fmt: skip
    fallback = next(g for g in challenger if g.name == "fallback_rate")
    assert fallback.status == "shared" and "linear" in fallback.text
    verdicts = {"linear": 4000, "transformer": 4000}
    rec = recommend("transformer", "linear", emails=5000, verdicts=verdicts, primary=CLEAR_GAIN,
                    primary_unit="min/email", rails=[*control, *challenger], srm=SRM_OK, cfg=CFG)  # fmt: skip
    assert rec.action not in (ROLLBACK, PROMOTE), rec.sentence
    assert "both arms" in rec.sentence
    # The same fallback rate with a healthy control is the challenger's own: roll back.
    healthy = guardrails("linear", rates(Interval(0.001, 0.0005, 0.0, 0.002)), 20.0, emails=5000, users=900, cfg=CFG)
    worse = Difference(
        "fallback_rate", Interval(0.028, 0.002, 0.024, 0.032), Interval(0.028, 0.003, 0.022, 0.034), 1800
    )
    own = guardrails(
        "transformer", rates(Interval(0.029, 0.002, 0.025, 0.033)), 25.0, emails=5000, users=900, cfg=CFG,
        control=(healthy, {"fallback_rate": worse}),
    )  # fmt: skip
    assert next(g for g in own if g.name == "fallback_rate").status == "broken"
    rec = recommend("transformer", "linear", emails=5000, verdicts=verdicts, primary=CLEAR_GAIN,
                    primary_unit="min/email", rails=[*healthy, *own], srm=SRM_OK, cfg=CFG)  # fmt: skip
    assert rec.action == ROLLBACK


def test_an_arm_whose_every_email_fails_breaks_its_guardrail() -> None:
    # Found when a canary failed every one of its emails: every user's rate is 1, so the clustered interval has
    # no width and was left out ("no interval"), and the guardrail said only "at risk": nothing rolled it back.
    control = guardrails("linear", rates(Interval(0.0, 0.0)), 20.0, emails=199, users=199, cfg=CFG)
    canary = guardrails(
        "linear-canary", rates(Interval(1.0, 0.0)), 20.0, emails=157, users=157, cfg=CFG,
        control=(control, {"fallback_rate": Difference("fallback_rate", Interval(1.0, 0.0), Interval(1.0, 0.0), 156)}),
    )  # fmt: skip
    fallback = next(g for g in canary if g.name == "fallback_rate")
    assert fallback.status == "broken", fallback.text
    assert next(g for g in control if g.name == "fallback_rate").status == "ok"
