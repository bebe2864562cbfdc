"""The threshold what-if: what each confidence threshold would have done to the judged emails of the event log.

Pure (pandas/numpy); the input is one row per judged email with a logged probability vector (`top`: the model's
top queue, `p_top`: its probability, `true_queue`; `experiments.analysis.errors.what_if_sample` builds it). At a
threshold t an email is auto-routed to its top queue when p_top >= t (as `serving.policy.decide` does), else it
goes to triage. With the KPI module's definitions (`experiments.analysis.kpi`), over the N judged emails of a group:

    coverage   = routed / N
    accuracy   = correct among routed / routed                 (None when nothing is routed)
    net saving = ( Σ_routed [ correct ? manual_triage_minutes(top queue) : −misroute_minutes(true queue) ]
                   − triage_minutes × (N − routed) ) / N         (agent minutes per judged email)

where misroute_minutes(q) = misroute_cost(q) × 60 / agent_cost_per_hour (a queue outside the taxonomy counts 0,
as in the KPI SQL). Candidates are 0.30, 0.35, …, 0.95 and the current threshold. The global table covers every
email; a queue's table covers the emails whose top queue it is, and since a queue's threshold only decides its own
emails, the best per-queue thresholds are chosen independently and the combined policy's saving is the sum of the
queues' savings. The best threshold maximises net saving (ties: the one closest to the current threshold, then the
higher). A queue with fewer than `min_emails` judged emails keeps the global best, and says so.

The same judged-email bias as the KPIs applies: under the implicit policy an email that went to triage counts only
when an agent gave feedback on it, so the emails a lower threshold would newly route are those agents answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving.config import PolicyConfig, QueuesConfig

GRID = tuple(round(0.30 + 0.05 * k, 2) for k in range(14))  # 0.30 ... 0.95
MIN_EMAILS = 30
_TIE_DIGITS = 9  # savings equal to 9 decimals are a tie (sums in another order differ in the last bits)


class ThresholdInputError(ValueError):
    """A bad threshold or `--queue` spec; one line, the CLI exits 2."""


@dataclass(frozen=True)
class Row:
    threshold: float
    routed: int
    coverage: float
    accuracy: float | None
    net_saving: float  # agent minutes per judged email


@dataclass(frozen=True)
class Table:
    scope: str  # "all", or the top queue whose emails the table covers
    emails: int
    current: float  # the threshold in force for these emails
    best: float  # the table's own best
    chosen: float  # what the per-queue policy uses: `best`, or the global best (see `note`)
    rows: tuple[Row, ...]
    note: str | None = None

    def row(self, threshold: float) -> Row:
        return next(r for r in self.rows if r.threshold == threshold)


@dataclass(frozen=True)
class Figures:
    """A policy's figures on the judged emails."""

    emails: int
    routed: int
    coverage: float
    accuracy: float | None
    net_saving: float


@dataclass(frozen=True)
class WhatIf:
    emails: int
    min_emails: int
    current: Figures  # the policy in force (its global and per-queue thresholds)
    global_table: Table
    queue_tables: tuple[Table, ...]
    per_queue: Figures  # every queue at its chosen threshold
    per_queue_thresholds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _minutes(queues: QueuesConfig) -> tuple[dict[str, float], dict[str, float]]:
    manual = {n: s.manual_triage_minutes for n, s in queues.queues.items()}
    misroute = {n: s.misroute_cost * 60 / queues.agent_cost_per_hour for n, s in queues.queues.items()}
    return manual, misroute


def _arrays(sample: pd.DataFrame, queues: QueuesConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_top, correct, gain if routed) per email."""
    manual, misroute = _minutes(queues)
    correct = (sample["top"] == sample["true_queue"]).to_numpy(dtype=bool)
    saved = sample["top"].map(manual).fillna(0.0).to_numpy(dtype=float)
    lost = sample["true_queue"].map(misroute).fillna(0.0).to_numpy(dtype=float)
    return sample["p_top"].to_numpy(dtype=float), correct, np.where(correct, saved, -lost)


def _figures(routed: np.ndarray, correct: np.ndarray, gain: np.ndarray, triage_minutes: float) -> Figures:
    n, r = len(routed), int(routed.sum())
    accuracy = float(correct[routed].sum()) / r if r else None
    net = (float(gain[routed].sum()) - triage_minutes * (n - r)) / n if n else 0.0
    return Figures(n, r, r / n if n else 0.0, accuracy, net)


def _best(rows: Sequence[Row], current: float) -> float:
    def key(r: Row) -> tuple[float, float, float]:
        return round(r.net_saving, _TIE_DIGITS), -round(abs(r.threshold - current), 6), r.threshold

    return max(rows, key=key).threshold


def _table(scope: str, p: np.ndarray, correct: np.ndarray, gain: np.ndarray, current: float, t_min: float) -> Table:
    rows = []
    for t in sorted({*GRID, current}):
        f = _figures(p >= t, correct, gain, t_min)
        rows.append(Row(t, f.routed, f.coverage, f.accuracy, f.net_saving))
    best = _best(rows, current)
    return Table(scope, len(p), current, best, best, tuple(rows))


def what_if(
    sample: pd.DataFrame, queues: QueuesConfig, policy: PolicyConfig, *, min_emails: int = MIN_EMAILS
) -> WhatIf:
    """The global and per-queue tables over `sample` (columns top, p_top, true_queue), the current policy's figures
    and the combined per-queue policy's."""
    if sample.empty:
        raise ValueError("the threshold what-if needs at least one judged email with a probability vector")
    p, correct, gain = _arrays(sample, queues)
    t_min = queues.triage_minutes
    glob = _table("all", p, correct, gain, policy.confidence_threshold, t_min)
    tops = sample["top"].to_numpy()
    tables = []
    for queue in [q for q in queues.names if q in set(tops)] + sorted(set(tops) - set(queues.names)):
        mask = tops == queue
        table = _table(queue, p[mask], correct[mask], gain[mask], policy.threshold(queue), t_min)
        if queue not in queues.names:
            table = dataclasses.replace(table, chosen=glob.best, note="not a queue of the taxonomy: keeps the global")
        elif table.emails < min_emails:
            note = f"{table.emails} judged emails (fewer than {min_emails}): keeps the global best {glob.best:.2f}"
            table = dataclasses.replace(table, chosen=glob.best, note=note)
        tables.append(table)
    chosen = {t.scope: t.chosen for t in tables}
    current = _figures(p >= _thresholds(tops, policy.threshold), correct, gain, t_min)
    combined = _figures(p >= _thresholds(tops, chosen.__getitem__), correct, gain, t_min)
    return WhatIf(len(sample), min_emails, current, glob, tuple(tables), combined, chosen)


def _thresholds(tops: np.ndarray, threshold_of: Any) -> np.ndarray:
    return np.array([threshold_of(q) for q in tops], dtype=float)


def evaluate(sample: pd.DataFrame, queues: QueuesConfig, policy: PolicyConfig) -> Figures:
    """A policy's figures on `sample`: each email routed when p_top >= the threshold of its top queue."""
    p, correct, gain = _arrays(sample, queues)
    return _figures(p >= _thresholds(sample["top"].to_numpy(), policy.threshold), correct, gain, queues.triage_minutes)


def choose_thresholds(w: WhatIf, current: PolicyConfig, *, global_only: bool = False) -> PolicyConfig:
    """The policy to apply: the global best, and (unless `global_only`) each taxonomy queue's chosen threshold
    where it differs from the global best; per-queue thresholds not chosen are dropped (they follow the global)."""
    best = w.global_table.best
    queue_thresholds = {} if global_only else {t.scope: t.chosen for t in w.queue_tables if t.chosen != best}
    return current.model_copy(update={"confidence_threshold": best, "queue_thresholds": queue_thresholds})


def parse_queue_specs(items: Iterable[str], names: Sequence[str]) -> dict[str, float]:
    """`QUEUE=THRESHOLD` specs as a dict; a malformed spec, a queue outside `names`, a repeat or a threshold
    outside [0, 1] is a ThresholdInputError."""
    out: dict[str, float] = {}
    for item in items:
        queue, sep, value = item.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            sep = ""
        if not sep or not queue:
            raise ThresholdInputError(f"expected QUEUE=THRESHOLD (e.g. billing=0.7), got '{item}'")
        if queue not in names:
            raise ThresholdInputError(f"'{queue}' is not a queue of the taxonomy ({', '.join(names)})")
        if queue in out:
            raise ThresholdInputError(f"queue '{queue}' is given twice")
        check_threshold(threshold, f"{queue}'s threshold")
        out[queue] = threshold
    return out


def check_threshold(value: float, what: str = "threshold") -> float:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ThresholdInputError(f"{what} {value} is not in [0, 1]")
    return value


def explicit_policy(
    current: PolicyConfig,
    *,
    threshold: float | None = None,
    queue_thresholds: Mapping[str, float] | None = None,
    global_only: bool = False,
) -> PolicyConfig:
    """The current policy with the given values: a global threshold, and per-queue ones added to (or replacing)
    those in force; `global_only` drops every per-queue threshold."""
    if global_only and queue_thresholds:
        raise ThresholdInputError("--global-only drops every per-queue threshold: it cannot be given --queue too")
    new_global = current.confidence_threshold if threshold is None else check_threshold(threshold)
    merged = {} if global_only else {**current.queue_thresholds, **(queue_thresholds or {})}
    return current.model_copy(update={"confidence_threshold": new_global, "queue_thresholds": merged})


@dataclass(frozen=True)
class ThresholdPlan:
    """What `mailroute analyze apply-thresholds` applies, with its expected effect on the judged emails."""

    source: str  # "what-if" or "explicit"
    current: PolicyConfig
    proposed: PolicyConfig
    current_figures: Figures | None  # None: no judged email with a probability vector to estimate on
    proposed_figures: Figures | None
    notes: tuple[str, ...] = ()

    @property
    def gain(self) -> float | None:
        """Expected net saving per judged email of the proposed policy over the current one (minutes)."""
        if self.current_figures is None or self.proposed_figures is None:
            return None
        return self.proposed_figures.net_saving - self.current_figures.net_saving

    @property
    def changed(self) -> bool:
        return (self.proposed.confidence_threshold, self.proposed.queue_thresholds) != (
            self.current.confidence_threshold,
            self.current.queue_thresholds,
        )

    def change(self) -> dict[str, Any]:
        """The body of PUT /v1/policy."""
        return {
            "confidence_threshold": self.proposed.confidence_threshold,
            "queue_thresholds": dict(self.proposed.queue_thresholds),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "current": self.current.model_dump(mode="json"),
            "proposed": self.proposed.model_dump(mode="json"),
            "current_figures": None if self.current_figures is None else dataclasses.asdict(self.current_figures),
            "proposed_figures": None if self.proposed_figures is None else dataclasses.asdict(self.proposed_figures),
            "gain": self.gain,
            "changed": self.changed,
            "notes": list(self.notes),
        }


def plan(
    source: str,
    current: PolicyConfig,
    proposed: PolicyConfig,
    sample: pd.DataFrame | None,
    queues: QueuesConfig,
    notes: Sequence[str] = (),
) -> ThresholdPlan:
    """Both policies' figures on `sample` (when there is one), for the plan's expected gain."""
    if sample is None or sample.empty:
        return ThresholdPlan(source, current, proposed, None, None, tuple(notes))
    return ThresholdPlan(
        source, current, proposed, evaluate(sample, queues, current), evaluate(sample, queues, proposed), tuple(notes)
    )
