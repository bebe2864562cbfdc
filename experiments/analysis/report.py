"""The experiment report: per-arm KPIs with intervals, daily counts, SRM, differences, guardrails, recommendation.

`build_report(...)` is the one entry point (the CLI and the dashboard call it); it returns an `ExperimentReport`,
a frozen value with `to_dict()`/`to_json()`, rendered by `experiments.analysis.render` as text, HTML or CSV.
Definitions: `experiments.analysis.kpi` (KPIs), `experiments.analysis.stats` (intervals),
`experiments.analysis.recommend` (rules), and README.md ("Experiment analysis"). Every figure that cannot be
estimated is None and is printed as words, never as NaN.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from experiments.analysis import queries
from experiments.analysis.config import AnalysisConfig
from experiments.analysis.days import Day, local_days, log_ts, start_of_day
from experiments.analysis.kpi import COLUMNS, kpis
from experiments.analysis.recommend import RATE_GUARDRAILS, Guardrail, Recommendation, guardrails, overall, recommend
from experiments.analysis.stats import Difference, Interval, Moments, SrmResult, kpi_difference, kpi_interval, srm_test
from experiments.analysis.weights_history import expected_shares, read_changes, segments
from experiments.config import ExperimentConfig
from serving import clock
from serving.config import QueuesConfig

# The KPIs of the breakdowns by day and by model version (the arm rows carry every KPI).
BREAKDOWN = (
    "auto_route_coverage", "triage_rate", "fallback_rate", "error_rate", "accuracy", "feedback_coverage",
    "minutes_saved", "net_saving", "net_saving_money",
)  # fmt: skip


RATE_KEYS = tuple(key for key, _, _ in RATE_GUARDRAILS)


@dataclass(frozen=True)
class KpiGroup:
    """The KPIs of one arm over the window (key ""), one model version (key "model:version") or one day."""

    arm: str
    key: str
    emails: int
    users: int
    values: dict[str, Interval]
    latency_ms: dict[str, float | None]  # p50, p95, p99
    verdicts: int = 0  # auto-routed emails judged under the feedback policy


@dataclass(frozen=True)
class CountRow:
    """Emails of one (day, answered queue): auto_routed + sent_to_triage + fallback == emails."""

    day: str
    queue: str
    emails: int
    auto_routed: int
    sent_to_triage: int
    fallback: int


@dataclass(frozen=True)
class Comparison:
    challenger: str
    control: str
    accuracy: Difference
    net_saving: Difference


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str
    control: str
    arms_in_config: tuple[str, ...]
    since: str | None
    until: str | None
    as_of: str
    time_zone: str
    feedback_policy: str
    currency: str
    days: tuple[Day, ...]
    arms: tuple[KpiGroup, ...]
    versions: tuple[KpiGroup, ...]
    daily: tuple[KpiGroup, ...]
    counts: tuple[CountRow, ...]
    emails_outside_experiment: int
    srm: SrmResult | None
    comparisons: tuple[Comparison, ...]
    guardrails: tuple[Guardrail, ...]
    recommendations: tuple[Recommendation, ...]
    recommendation: Recommendation
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["recommendation"]["sentence"] = self.recommendation.sentence
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExperimentReport:
        """A report `to_json()` wrote (the scheduled KPI job's files), back as the same frozen value."""
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_json(text)

    def daily_totals(self) -> dict[str, int]:
        """Emails per day over every queue: the figure to match against the emails clients sent that day."""
        totals = {d.day: 0 for d in self.days}
        for row in self.counts:
            totals[row.day] = totals.get(row.day, 0) + row.emails
        return totals

    def arm(self, name: str) -> KpiGroup | None:
        return next((g for g in self.arms if g.arm == name), None)


def _empty(
    exp: ExperimentConfig,
    cfg: AnalysisConfig,
    queues: QueuesConfig,
    as_of: datetime,
    notes: list[str],
    since: datetime | None,
    until: datetime | None,
    days: tuple[Day, ...] = (),
) -> ExperimentReport:
    rec = Recommendation("keep running", None, tuple(notes[:1]) or ("nothing to report",))
    return ExperimentReport(
        exp.name,
        exp.control_arm,
        tuple(exp.arms),
        None if since is None else log_ts(since),
        None if until is None else log_ts(until),
        log_ts(as_of),
        cfg.time_zone,
        cfg.feedback_policy,
        queues.currency,
        days,
        (),
        (),
        (),
        (),
        0,
        None,
        (),
        (),
        (),
        rec,
        tuple(notes),
    )


def _group(
    arm: str,
    key: str,
    m: Moments,
    cfg: AnalysisConfig,
    queues: QueuesConfig,
    lat: dict[int, float] | None,
    names: tuple[str, ...] | None = None,
) -> KpiGroup:
    values = {n: kpi_interval(k, m, cfg.alpha) for n, k in kpis(queues).items() if names is None or n in names}
    emails = round(m.sum_of("n"))
    values["net_saving_total"] = values["net_saving"].scaled(emails)
    latency = {f"p{p}": (lat or {}).get(p) for p in queries.PERCENTILES}
    return KpiGroup(arm, key, emails, m.users, values, latency, round(m.sum_of("verdict")))


def _align(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sums of two arms on one row per user of either (zeros where a user never saw the arm)."""
    users = {u: i for i, u in enumerate(dict.fromkeys([*a[0], *b[0]]))}
    out = []
    for keys, x in (a, b):
        full = np.zeros((len(users), len(COLUMNS)))
        full[[users[u] for u in keys]] = x
        out.append(full)
    return out[0], out[1]


def build_report(
    event_log_url: str,
    *,
    experiment: ExperimentConfig,
    analysis: AnalysisConfig,
    queues: QueuesConfig,
    since: datetime | None = None,
    until: datetime | None = None,
    as_of: datetime | None = None,
) -> ExperimentReport:
    """The report over `[since, until)` of the log at `event_log_url` (a SQLAlchemy URL: `EventLog.sql_url`).

    since defaults to the first logged prediction, until and as_of to now; feedback recorded after as_of is
    ignored, and the implicit policy judges emails older than `implicit_correct_after_hours` at as_of.
    The store's audit log gives the weights in force over time for the SRM check.
    """
    cfg, exp = analysis, experiment
    as_of = (as_of or clock.now()).astimezone(UTC)
    notes: list[str] = []
    engine = queries.open_engine(event_log_url)
    try:
        with engine.connect() as conn:
            first, _last, total = queries.log_span(conn)
            if total == 0 or first is None:
                return _empty(
                    exp, cfg, queues, as_of, ["the event log is empty: no email has been routed yet"], since, until
                )
            until_is_now = until is None
            # From the first email's local midnight, so that the first day is whole rather than "partial".
            since = since or start_of_day(datetime.fromisoformat(first), cfg.zone)
            until = until or max(as_of, since + timedelta(microseconds=1))
            days = tuple(local_days(since, until, cfg.zone))
            cutoff = log_ts(as_of - timedelta(hours=cfg.implicit_correct_after_hours))
            scope = queries.Scope(days, exp.name, cfg.feedback_policy, log_ts(as_of), cutoff, queues)
            # The light scans (latency histogram, daily counts) run on a second connection beside the heavy one:
            # sqlite3 releases the GIL while a statement runs, so the two use both cores.
            with ThreadPoolExecutor(max_workers=1) as pool:
                light = pool.submit(_light_scans, engine, scope, queues.triage_queue)
                cells = queries.build_cells(conn, scope)
                per_user = queries.user_sums(conn, cells)
                by_version = queries.moments(conn, cells, ("arm", "model_name", "model_version"), queues, BREAKDOWN)
                by_day = queries.moments(conn, cells, ("arm", "day"), queues, BREAKDOWN)
                first_seen = queries.first_arms(conn, cells)
                hist, count_rows, outside = light.result()
    finally:
        engine.dispose()
    lat_arm = queries.percentiles(hist, lambda r: (r[0],))
    lat_version = queries.percentiles(hist, lambda r: (r[0], r[1], r[2]))
    lat_day = queries.percentiles(hist, lambda r: (r[0], r[3]))
    counts = tuple(CountRow(**r) for r in count_rows)
    for d in (days[0], days[-1]) if len(days) > 1 else days[:1]:
        if d is days[-1] and until_is_now and d.partial:
            notes.append(f"day {d.day} is today: counted up to now ({d.hours:.1f} of {d.full_hours:.0f} hours)")
        elif d.note:
            which = "first" if d is days[0] else "last"
            notes.append(f"{which} day {d.day} is a {d.note}")
    if not counts:
        notes.append("no emails in this window")
    if outside:
        notes.append(
            f"{outside} emails in the window were served outside the experiment (holdout, forced arm or "
            "another experiment): counted in the daily totals, not in the arm comparisons"
        )

    arms_seen = sorted(per_user)
    order = [*exp.arms, *(a for a in arms_seen if a not in exp.arms)]
    arm_groups = []
    for arm in order:
        if arm not in per_user:
            notes.append(f"arm {arm} has no emails in this window")
            continue
        if arm not in exp.arms:
            notes.append(
                f"arm {arm} is in the log but no longer in the experiment's config: shown, but left out of "
                "the SRM check and the comparisons"
            )
        arm_groups.append(
            _group(arm, "", Moments.from_users(COLUMNS, per_user[arm][1]), cfg, queues, lat_arm.get((arm,)))
        )
    versions = tuple(
        _group(k[0], f"{k[1]}:{k[2]}", m, cfg, queues, lat_version.get(k), BREAKDOWN)
        for k, m in sorted(by_version.items())
    )
    daily = tuple(_group(k[0], k[1], m, cfg, queues, lat_day.get(k), BREAKDOWN) for k, m in sorted(by_day.items()))
    groups = {g.arm: g for g in arm_groups}
    if arm_groups and all(g.values["feedback_coverage"].estimate == 0 for g in arm_groups):
        notes.append(
            "no feedback in this window"
            + (
                ": no email can be judged under the audit policy"
                if cfg.feedback_policy == "audit"
                else ": accuracy rests on implicit verdicts alone (auto-routed emails that nobody corrected)"
            )
        )

    # SRM: each user once, in the arm that first served them, against the weights in force when they first wrote.
    srm = None
    if arm_groups:
        with engine.connect() as conn:
            changes, audit_notes = read_changes(queries.audit_records(conn), exp.name)
        notes.extend(audit_notes)
        pieces, change_notes = segments(changes, exp.weights, since, until)
        notes.extend(change_notes)
        configured = [(ts, arm) for _user, ts, arm in first_seen if arm in exp.arms]
        shares = expected_shares(pieces, [datetime.fromisoformat(ts) for ts, _ in configured])
        expected = {a: shares.get(a, 0.0) for a in exp.arms}
        observed = {a: 0 for a in exp.arms}
        for _ts, arm in configured:
            observed[arm] += 1
        srm = srm_test(observed, expected, cfg.srm_alpha)

    control = exp.control_arm
    kp = kpis(queues)
    comparisons, rails, recs = [], [], []
    control_rails: list[Guardrail] = []
    if control in groups:
        c = groups[control]
        control_rails = guardrails(control, c.values, c.latency_ms["p95"], c.emails, c.users, cfg)
    for g in arm_groups:
        if g.arm == control:
            rails.extend(control_rails)
            continue
        rate_diffs = {}
        if control in per_user and g.arm in per_user:
            xa, xb = _align(per_user[control], per_user[g.arm])
            rate_diffs = {
                key: kpi_difference(kp[key], COLUMNS, xa, xb, cfg.alpha, cfg.sequential_planned_users)
                for key in RATE_KEYS
            }
        against = (control_rails, rate_diffs) if control in groups else None
        rails.extend(guardrails(g.arm, g.values, g.latency_ms["p95"], g.emails, g.users, cfg, control=against))
    for arm in exp.arms:
        if arm == control:
            continue
        if arm not in per_user or control not in per_user:
            who = f"{arm} has" if arm not in per_user else f"the control arm {control} has"
            recs.append(Recommendation("keep running", arm, (f"{who} no emails in this window",)))
            continue
        xa, xb = _align(per_user[control], per_user[arm])
        acc = kpi_difference(kp["accuracy"], COLUMNS, xa, xb, cfg.alpha, cfg.sequential_planned_users)
        net = kpi_difference(kp["net_saving"], COLUMNS, xa, xb, cfg.alpha, cfg.sequential_planned_users)
        comparisons.append(Comparison(arm, control, acc, net))
        primary = net if cfg.primary_metric == "net_saving" else acc
        verdicts = {a: int(Moments.from_users(COLUMNS, per_user[a][1]).sum_of("verdict")) for a in (control, arm)}
        assert srm is not None
        recs.append(
            recommend(
                arm,
                control,
                emails=groups[arm].emails,
                verdicts=verdicts,
                primary=primary,
                primary_unit=kp[cfg.primary_metric].unit,
                rails=rails,
                srm=srm,
                cfg=cfg,
            )
        )
    if cfg.feedback_policy == "both":
        notes.extend(_implicit_vs_audit(arm_groups))
    if not arm_groups and counts:
        notes.append(f"no emails of experiment {exp.name} in this window (is it stopped?)")
    return ExperimentReport(
        exp.name,
        control,
        tuple(exp.arms),
        log_ts(since),
        log_ts(until),
        log_ts(as_of),
        cfg.time_zone,
        cfg.feedback_policy,
        queues.currency,
        days,
        tuple(arm_groups),
        versions,
        daily,
        counts,
        outside,
        srm,
        tuple(comparisons),
        tuple(rails),
        tuple(recs),
        overall(recs) if arm_groups else _no_data(notes),
        tuple(notes),
    )


def _light_scans(engine: Engine, scope: queries.Scope, triage_queue: str) -> tuple[Any, Any, int]:
    with engine.connect() as conn:
        return (
            queries.latency_histogram(conn, scope),
            queries.daily_counts(conn, scope.days, triage_queue),
            queries.outside_experiment(conn, scope.days, scope.experiment),
        )


def _no_data(notes: list[str]) -> Recommendation:
    return Recommendation("keep running", None, (notes[-1] if notes else "no emails in this window",))


def _implicit_vs_audit(groups: list[KpiGroup]) -> list[str]:
    """Under the `both` policy: warn where the audit-only accuracy lies below the implicit one beyond both intervals."""
    out = []
    for g in groups:
        imp, aud = g.values["accuracy"], g.values["audit_accuracy"]
        if not aud.known or aud.hi is None or imp.lo is None:
            out.append(f"{g.arm}: no audited emails, so the implicit accuracy cannot be checked against an audit")
        elif aud.hi < imp.lo:
            out.append(
                f"{g.arm}: audited accuracy {aud.estimate:.3f} is below the implicit {imp.estimate:.3f} "
                "beyond both intervals: agents leave misroutes uncorrected, so the implicit figure runs high"
            )
    return out
