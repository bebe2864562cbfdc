"""The KPIs of the experiment report, defined once: per-email quantities, and each KPI as a formula of their sums.

Every email of an arm contributes a row of per-email quantities (SQL computes them, `experiments.analysis.queries`):

| column      | per email                                                                                 |
| ----------- | ----------------------------------------------------------------------------------------- |
| n           | 1 (exposure: counted from prediction records, never from feedback)                        |
| auto        | 1 if routed to a specialist queue (queue is not the triage queue)                         |
| triage      | 1 if sent to the triage queue (low confidence, or every arm failed)                       |
| fallback    | 1 if the assigned arm failed (error or timeout) and a fallback arm or triage answered      |
| error       | 1 if the assigned arm raised an error (the logged reason ends in `_error`; a timeout is not)|
| verdict     | 1 if auto-routed and judged under the feedback policy (see below)                          |
| correct     | 1 if judged correct: the true queue is the routed queue                                    |
| saved_min   | correct x manual_triage_minutes of the queue (agent minutes auto-routing saved)            |
| mis_min     | judged wrong x misroute_cost of the true queue x 60 / agent_cost_per_hour (cost as minutes)|
| feedback    | 1 if any feedback record came (any source)                                                 |
| audit       | 1 if the feedback came from a random audit (source 'audit')                                |
| auto_fb     | 1 if auto-routed and any feedback came                                                     |
| corrections | auto_fb and the feedback says the routed queue was wrong                                  |
| sec_n       | 1 if auto-routed, judged, and a second queue was returned                                  |
| sec_hit     | sec_n and the true queue is the routed queue or the second queue                           |
| tri_fb      | 1 if sent to triage with the model's guess (secondary_queue) and judged by feedback        |
| tri_ok      | tri_fb and the true queue is the model's guess                                             |
| a_verdict   | 1 if auto-routed with audit feedback; a_correct: and the audit agrees with the routed queue |

Feedback policies (`analysis.feedback_policy`). Agents send corrections far more often than confirmations, so the
share correct among emails *with feedback* is biased low. `implicit`: an auto-routed email with feedback is judged
by it; one without feedback counts as correct once it is older than `implicit_correct_after_hours` at the report's
as-of time, and is pending (no verdict) before. `audit`: only audited emails are judged (an unbiased random sample,
but small). `both`: the verdicts of `implicit` (an email has at most one feedback record, so each email is judged by
its audit, its agent's feedback, or its age), with the audit-only accuracy shown beside them; when the two disagree
beyond their intervals, agents leave misroutes uncorrected and the report says the implicit figure runs high.

KPIs, with S(x) the sum of column x over the group's emails and T = triage_minutes:

    accuracy               = S(correct) / S(verdict)            misroute_rate = 1 - accuracy
    minutes_saved          = S(auto)/S(n) x S(saved_min)/S(verdict)      (per email)
    misroute_minutes       = S(auto)/S(n) x S(mis_min)/S(verdict)        (per email)
    triage_minutes         = T x S(triage)/S(n)                          (per email)
    net_saving             = minutes_saved - misroute_minutes - triage_minutes   (agent minutes per email)

Judged emails stand for all auto-routed ones: the saving per judged email is scaled by the auto-routed share, so
pending emails neither count as zero nor as correct. Money is minutes x agent_cost_per_hour / 60.

Worked example: 10 emails, 8 auto-routed, 2 to triage (T = 3 min); 4 of the auto-routed are judged, 3 correct
(billing, 2.5 min each) and 1 wrong (true queue shipping, misroute_cost 3.5 at 36 per hour = 5.833 min).
accuracy = 3/4 = 0.75; minutes_saved = 8/10 x 7.5/4 = 1.5; misroute_minutes = 8/10 x 5.833/4 = 1.167;
triage_minutes = 3 x 2/10 = 0.6; net_saving = 1.5 - 1.167 - 0.6 = -0.267 min per email (-0.16 EUR).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.config import QueuesConfig

COLUMNS = (
    "n", "auto", "triage", "fallback", "error", "verdict", "correct", "saved_min", "mis_min", "feedback", "audit",
    "auto_fb", "corrections", "sec_n", "sec_hit", "tri_fb", "tri_ok", "a_verdict", "a_correct",
)  # fmt: skip

Factor = tuple[str, str]  # numerator column, denominator column: S(num) / S(den)


@dataclass(frozen=True)
class Term:
    """coef x the product of the ratios S(num)/S(den) of its factors (an empty product is 1)."""

    coef: float
    factors: tuple[Factor, ...]


@dataclass(frozen=True)
class Kpi:
    """One KPI: `const + sum of terms`, a smooth function of the group's column sums (delta method applies)."""

    name: str
    label: str
    unit: str  # "share", "min/email", "money/email"
    terms: tuple[Term, ...]
    const: float = 0.0
    higher_is_better: bool = True

    @property
    def columns(self) -> set[str]:
        return {c for t in self.terms for f in t.factors for c in f}


def ratio(name: str, label: str, num: str, den: str, *, higher_is_better: bool = True) -> Kpi:
    return Kpi(name, label, "share", (Term(1.0, ((num, den),)),), higher_is_better=higher_is_better)


def kpis(queues: QueuesConfig) -> dict[str, Kpi]:
    """Every KPI of the report, by name, with the cost figures of `queues`."""
    per_min = queues.agent_cost_per_hour / 60  # money per agent minute
    t = queues.triage_minutes
    saved = Term(1.0, (("auto", "n"), ("saved_min", "verdict")))
    mis = Term(-1.0, (("auto", "n"), ("mis_min", "verdict")))
    tri = Term(-t, (("triage", "n"),))
    out = [
        ratio("auto_route_coverage", "auto-route coverage", "auto", "n"),
        ratio("triage_rate", "triage rate", "triage", "n", higher_is_better=False),
        ratio("fallback_rate", "fallback rate", "fallback", "n", higher_is_better=False),
        ratio("error_rate", "error rate", "error", "n", higher_is_better=False),
        ratio("accuracy", "routing accuracy", "correct", "verdict"),
        Kpi("misroute_rate", "misroute rate", "share", (Term(-1.0, (("correct", "verdict"),)),), 1.0, False),
        ratio("judged_share", "auto-routed emails with a verdict", "verdict", "auto"),
        ratio("feedback_coverage", "feedback coverage", "feedback", "n"),
        ratio("audit_coverage", "audit coverage", "audit", "n"),
        ratio("correction_share", "corrections among feedback", "corrections", "auto_fb", higher_is_better=False),
        ratio("audit_accuracy", "accuracy by audit alone", "a_correct", "a_verdict"),
        ratio("second_queue_accuracy", "second-queue accuracy (top 2)", "sec_hit", "sec_n"),
        ratio("triage_guess_accuracy", "model's guess on triaged emails", "tri_ok", "tri_fb"),
        Kpi("minutes_saved", "agent minutes saved per email", "min/email", (saved,)),
        Kpi(
            "misroute_minutes",
            "misroute cost per email, in minutes",
            "min/email",
            (Term(1.0, mis.factors),),
            higher_is_better=False,
        ),
        Kpi("triage_minutes", "triage minutes per email", "min/email", (Term(t, tri.factors),), higher_is_better=False),
        Kpi("net_saving", "net saving per email", "min/email", (saved, mis, tri)),
        Kpi(
            "net_saving_money",
            "net saving per email, money",
            "money/email",
            tuple(Term(x.coef * per_min, x.factors) for x in (saved, mis, tri)),
        ),
    ]
    return {k.name: k for k in out}


def evaluate(kpi: Kpi, sums: Mapping[str, float]) -> float | None:
    """The KPI's value from column sums (or means: every KPI is a ratio of sums); None when a denominator is 0."""
    total = kpi.const
    for term in kpi.terms:
        value = term.coef
        for num, den in term.factors:
            if not sums[den]:
                return None
            value *= sums[num] / sums[den]
        total += value
    return total


def gradient(kpi: Kpi, means: Mapping[str, float]) -> dict[str, float] | None:
    """d KPI / d mean(column) for each column it uses (product rule over the ratios); None if undefined."""
    grad = dict.fromkeys(kpi.columns, 0.0)
    for term in kpi.terms:
        if any(not means[den] for _, den in term.factors):
            return None
        ratios = [means[num] / means[den] for num, den in term.factors]
        for i, (num, den) in enumerate(term.factors):
            rest = term.coef
            for j, r in enumerate(ratios):
                if j != i:
                    rest *= r
            grad[num] += rest / means[den]
            grad[den] -= rest * ratios[i] / means[den]
    return grad
