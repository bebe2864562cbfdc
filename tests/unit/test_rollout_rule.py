"""The rollout rule on hand-made evidence: a broken guardrail or a canary shown worse rolls back at once, exposure
is waited for, non-inferiority widens, the last step promotes only by `promote_requires`; and the rollout config
refuses steps that cannot end in a promotion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from experiments.analysis.recommend import Guardrail
from experiments.analysis.stats import Difference, Interval
from experiments.rollout.config import RolloutConfig
from experiments.rollout.rule import PROMOTE, ROLLBACK, WAIT, WIDEN, Evidence, decide
from serving.config import ConfigError, parse_config

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
CFG = RolloutConfig(min_step_duration="6h", min_emails=100, min_verdicts=50, non_inferiority_margin=0.1)
STEPS = (10.0, 25.0, 50.0, 100.0)


def diff(lo: float, hi: float) -> Difference:
    mid = (lo + hi) / 2
    return Difference("net_saving", Interval(mid, 0.1, lo, hi), Interval(mid, 0.1, lo, hi), 500)


def rail(status: str, name: str = "fallback_rate") -> Guardrail:
    return Guardrail("linear-canary", name, 0.5, 0.02, status, f"linear-canary {name} {status}")


def evidence(**overrides: Any) -> Evidence:
    values: dict[str, Any] = {
        "now": NOW,
        "step_started": NOW - timedelta(hours=7),
        "canary_emails_at_step": 500,
        "verdicts": {"linear-canary": 300, "linear": 3000},
        "rails": [rail("ok")],
        "primary": diff(-0.05, 0.2),
        "primary_unit": "minutes",
    }
    values.update(overrides)
    return Evidence(**values)


def run(step: int = 0, cfg: RolloutConfig = CFG, **overrides: Any) -> Any:
    return decide("linear-canary", "linear", STEPS, step, evidence(**overrides), cfg)


def test_a_broken_guardrail_rolls_back_at_once_whatever_the_exposure() -> None:
    got = run(rails=[rail("broken")], canary_emails_at_step=3, step_started=NOW)
    assert got.action == ROLLBACK and got.percent == 0 and "fallback_rate broken" in got.sentence


def test_a_canary_shown_worse_beyond_the_margin_rolls_back() -> None:
    assert run(primary=diff(-0.9, -0.2)).action == ROLLBACK
    assert run(primary=diff(-0.3, -0.05)).action != ROLLBACK  # worse, but maybe within the margin


def test_exposure_is_waited_for_with_the_reasons_in_words() -> None:
    got = run(step_started=NOW - timedelta(hours=1), canary_emails_at_step=40, verdicts={"linear-canary": 10})
    assert got.action == WAIT and got.percent == 10
    text = got.sentence
    assert "1.0 h at this step of the 6 h" in text and "40 linear-canary emails" in text
    assert "linear-canary has 10, linear has 0" in text


def test_non_inferior_widens_to_the_next_step() -> None:
    got = run(step=1)
    assert got.action == WIDEN and got.percent == 50
    assert run(step=1, primary=diff(-0.3, 0.1)).action == WAIT  # not yet shown within the margin


def test_the_last_step_promotes_only_by_promote_requires() -> None:
    assert run(step=2).action == WAIT  # 'better' (the default) needs the interval above 0
    assert run(step=2, primary=diff(0.05, 0.4)).action == PROMOTE
    lenient = CFG.model_copy(update={"promote_requires": "non_inferior"})
    assert run(step=2, cfg=lenient).action == PROMOTE
    assert run(step=2, cfg=lenient, rails=[rail("at risk")]).action == WAIT


def test_an_srm_alarm_holds_the_rollout() -> None:
    got = run(srm_alarm=True, srm_note="sample ratio mismatch (p 1e-6)")
    assert got.action == WAIT and "fix the assignment" in got.sentence


def test_an_unknown_difference_waits() -> None:
    assert run(primary=None).action == WAIT


@pytest.mark.parametrize(
    ("steps", "words"),
    [([10, 50], "last step must be 100"), ([50, 10, 100], "must increase"), ([0, 100], "(0, 100]"), ([], "(0, 100]")],
)
def test_steps_must_increase_to_100(steps: list[float], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("]", r"\]")):
        parse_config({"steps": steps}, RolloutConfig, "rollout")


def test_durations_and_suffix_are_checked() -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_config({"check_every": "soon"}, RolloutConfig, "rollout")
    for bad in ("-Canary!", "-canary-", "_", "--c", "canary"):  # each would make an invalid arm name
        with pytest.raises(ConfigError, match="canary_suffix"):
            parse_config({"canary_suffix": bad}, RolloutConfig, "rollout")
    assert parse_config({"canary_suffix": "_new-2"}, RolloutConfig, "rollout").canary_suffix == "_new-2"
