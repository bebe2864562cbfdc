"""The report's SQL: SQLAlchemy Core over the event log's tables, aggregating in the database.

Nothing here loads the log into memory: the heaviest result is one row per (arm, user) of column sums, which the
difference between arms needs (a user moved by a weight change is one cluster in both arms). Breakdowns by model
version and by day come back as moments (users, Σ of each column, Σ of the cross-products the KPIs use), one row
per group.

Portable SQL (SQLite and PostgreSQL run the same statements; tests/unit/test_experiment_report.py checks both):
timestamps are ISO 8601 UTC text compared as text; a row's local day is a balanced tree of CASE expressions over
the days' UTC starts computed in Python (a join against a list of days made SQLite walk the ts index row by row).
The per-email rows are summed once per (arm, model version, day, user) into a temporary table that every breakdown
groups further. Latency percentiles come from a histogram with three significant digits (GROUP BY bucket): the
exact nearest-rank value rounded down to 3 significant digits, so within 1% below it; histograms of days and
versions merge exactly into the arm's.
The dialect-specific bits are `_flag` (booleans are 0/1 integers in SQLite), `_floor` and `_tune` (pragmas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from experiments.analysis.days import Day
from experiments.analysis.kpi import COLUMNS, kpis
from experiments.analysis.stats import Moments
from serving.config import QueuesConfig

P = sa.table(
    "predictions",
    *(
        sa.column(c)
        for c in (
            "request_id",
            "ts",
            "user_key",
            "arm",
            "model_name",
            "model_version",
            "queue",
            "secondary_queue",
            "fallback",
            "reason",
            "latency_ms",
            "experiment",
            "in_experiment",
        )
    ),
)
AUDIT = sa.table("audit", sa.column("id"), sa.column("kind"), sa.column("record"))
F = sa.table("feedback", *(sa.column(c) for c in ("request_id", "ts", "true_queue", "source")))
PERCENTILES = (50, 95, 99)


def _flag(column: Any) -> Any:
    """A boolean column as a SQL condition (0/1 in SQLite, a boolean elsewhere: `= true` renders right in both)."""
    return column == sa.true()


def _floor(conn: Connection, expr: Any) -> Any:
    """floor() of a non-negative number: SQLite has no floor() everywhere, and CAST truncates there, while
    PostgreSQL's CAST rounds."""
    if conn.dialect.name == "sqlite":
        return sa.cast(expr, sa.Integer)
    return sa.func.floor(expr)


def _tune(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA temp_store = MEMORY")  # the report's temp table and sorts stay off the disk
            cur.execute("PRAGMA cache_size = -262144")  # 256 MiB of page cache
            cur.close()


def open_engine(url: str) -> Engine:
    """An engine on the event log's database (a `postgresql://` URL goes through the psycopg 3 driver)."""
    if url.startswith(("postgresql:", "postgres:")):
        from serving.store.postgres import driver_url

        engine = sa.create_engine(driver_url(url))
    else:
        engine = sa.create_engine(url)
    _tune(engine)
    return engine


@dataclass(frozen=True)
class Scope:
    """What the report reads: the window's days, one experiment, the feedback policy and the as-of time."""

    days: Sequence[Day]
    experiment: str
    policy: str  # implicit | audit | both
    as_of: str  # log text: feedback recorded after it is ignored
    implicit_cutoff: str  # log text: auto-routed emails at or before it with no feedback count as correct
    queues: QueuesConfig


def day_of(ts: Any, days: Sequence[Day]) -> Any:
    """The local day of a timestamp as a balanced tree of CASE expressions over the days' UTC starts (about
    log2(days) text comparisons per row, no join). Rows outside the window must be filtered out separately."""
    if len(days) == 1:
        return sa.literal(days[0].day)
    mid = len(days) // 2
    return sa.case((ts < days[mid].lo, day_of(ts, days[:mid])), else_=day_of(ts, days[mid:]))


def emails(scope: Scope) -> Any:
    """One row per email of the experiment in the window, with its day and the per-email columns of `kpi`."""
    q = scope.queues
    fb = F.alias("f")
    p = P.alias("p")

    def ind(cond: Any) -> Any:
        return sa.case((cond, 1), else_=0)

    auto = p.c.queue != q.triage_queue
    has_fb = fb.c.request_id.is_not(None)
    is_audit = fb.c.source == "audit"
    judged_by_fb = is_audit if scope.policy == "audit" else has_fb
    implicit_ok = sa.false() if scope.policy == "audit" else sa.and_(~has_fb, p.c.ts <= scope.implicit_cutoff)
    verdict = sa.and_(auto, sa.or_(judged_by_fb, implicit_ok))
    correct = sa.and_(auto, sa.or_(sa.and_(judged_by_fb, fb.c.true_queue == p.c.queue), implicit_ok))
    wrong = sa.and_(auto, judged_by_fb, fb.c.true_queue != p.c.queue)
    minutes = sa.case({name: s.manual_triage_minutes for name, s in q.queues.items()}, value=p.c.queue, else_=0.0)
    per_min = q.agent_cost_per_hour / 60
    mis_minutes = sa.case(
        {name: s.misroute_cost / per_min for name, s in q.queues.items()}, value=fb.c.true_queue, else_=0.0
    )
    has_sec = p.c.secondary_queue.is_not(None)
    cols = {
        "n": sa.literal(1),
        "auto": ind(auto),
        "triage": ind(~auto),
        "fallback": ind(_flag(p.c.fallback)),
        "error": ind(sa.and_(_flag(p.c.fallback), p.c.reason.endswith("_error", autoescape=True))),
        "verdict": ind(verdict),
        "correct": ind(correct),
        "saved_min": sa.case((correct, minutes), else_=0.0),
        "mis_min": sa.case((wrong, mis_minutes), else_=0.0),
        "feedback": ind(has_fb),
        "audit": ind(is_audit),
        "auto_fb": ind(sa.and_(auto, has_fb)),
        "corrections": ind(sa.and_(auto, has_fb, fb.c.true_queue != p.c.queue)),
        "sec_n": ind(sa.and_(verdict, has_sec)),
        "sec_hit": ind(sa.and_(verdict, has_sec, sa.or_(correct, fb.c.true_queue == p.c.secondary_queue))),
        "tri_fb": ind(sa.and_(~auto, judged_by_fb, has_sec)),
        "tri_ok": ind(sa.and_(~auto, judged_by_fb, fb.c.true_queue == p.c.secondary_queue)),
        "a_verdict": ind(sa.and_(auto, is_audit)),
        "a_correct": ind(sa.and_(auto, is_audit, fb.c.true_queue == p.c.queue)),
    }
    assert tuple(cols) == COLUMNS
    return (
        sa.select(
            p.c.arm,
            p.c.model_name,
            p.c.model_version,
            day_of(p.c.ts, scope.days).label("day"),
            p.c.user_key,
            p.c.ts,
            p.c.latency_ms,
            *(expr.label(name) for name, expr in cols.items()),
        )
        .select_from(p.outerjoin(fb, sa.and_(fb.c.request_id == p.c.request_id, fb.c.ts <= scope.as_of)))
        .where(
            p.c.ts >= scope.days[0].lo,
            p.c.ts < scope.days[-1].hi,
            p.c.experiment == scope.experiment,
            _flag(p.c.in_experiment),
        )
        .subquery("emails")
    )


CELL_KEYS = ("arm", "model_name", "model_version", "day", "user_key")


def build_cells(conn: Connection, scope: Scope) -> sa.Table:
    """Sum the per-email columns per (arm, model version, day, user) into a temporary table, in one pass over the
    log; every breakdown of the report is a GROUP BY over it. The table lives as long as `conn`."""
    meta = sa.MetaData()
    cells = sa.Table(
        "report_cells",
        meta,
        *(sa.Column(k, sa.String) for k in CELL_KEYS),
        sa.Column("first_ts", sa.String),
        *(sa.Column(c, sa.Float) for c in COLUMNS),
        prefixes=["TEMPORARY"],
    )
    cells.drop(conn, checkfirst=True)
    cells.create(conn)
    e = emails(scope)
    group = [e.c[k] for k in CELL_KEYS]
    select = sa.select(*group, sa.func.min(e.c.ts), *(sa.func.sum(e.c[c]) for c in COLUMNS)).group_by(*group)
    conn.execute(cells.insert().from_select([*CELL_KEYS, "first_ts", *COLUMNS], select))
    return cells


def user_sums(conn: Connection, cells: sa.Table) -> dict[str, tuple[list[str], np.ndarray]]:
    """arm -> (user keys, G x k column sums), for the overall per-arm figures and the differences."""
    c = cells.c
    q = sa.select(c.arm, c.user_key, *(sa.func.sum(c[k]) for k in COLUMNS)).group_by(c.arm, c.user_key)
    out: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    for row in conn.execute(q):
        keys, vals = out.setdefault(row[0], ([], []))
        keys.append(row[1])
        vals.append(tuple(row[2:]))
    return {arm: (keys, np.asarray(vals, dtype=float)) for arm, (keys, vals) in out.items()}


def first_arms(conn: Connection, cells: sa.Table) -> list[tuple[str, str, str]]:
    """(user_key, first ts, arm of that first email) per user of the experiment in the window, from the cells: the
    SRM check counts each user once, in the arm that first served them. One row per (user, arm) leaves the database
    (like `user_sums`); the earliest is picked here, ties by arm name."""
    c = cells.c
    rows = conn.execute(sa.select(c.user_key, c.arm, sa.func.min(c.first_ts)).group_by(c.user_key, c.arm))
    first: dict[str, tuple[str, str]] = {}
    for user, arm, ts in rows:
        seen = first.get(user)
        if seen is None or (ts, arm) < seen:
            first[user] = (ts, arm)
    return [(user, ts, arm) for user, (ts, arm) in first.items()]


def _pairs(queues: QueuesConfig, names: Sequence[str] | None) -> list[tuple[int, int]]:
    """Column pairs (i <= j) whose cross-products the KPIs `names` (None: all) need."""
    index = {c: i for i, c in enumerate(COLUMNS)}
    pairs: set[tuple[int, int]] = set()
    for kpi in kpis(queues).values():
        if names is not None and kpi.name not in names:
            continue
        used = sorted(index[c] for c in kpi.columns)
        pairs.update((a, b) for ai, a in enumerate(used) for b in used[ai:])
    return sorted(pairs)


def moments(
    conn: Connection, cells: sa.Table, keys: Sequence[str], queues: QueuesConfig, kpi_names: Sequence[str] | None
) -> dict[tuple[Any, ...], Moments]:
    """Moments per group of `keys` (e.g. ("arm", "day")): users, Σ per column, and the cross-products the KPIs
    `kpi_names` (None: all) use; the others are left 0, so only those KPIs may be computed from the result."""
    c = cells.c
    group = [c[k] for k in keys]
    per_user = (
        sa.select(*group, *(sa.func.sum(c[k]).label(k) for k in COLUMNS))
        .group_by(*group, c.user_key)
        .subquery("per_user")
    )
    pairs = _pairs(queues, kpi_names)
    u = per_user.c
    q = sa.select(
        *(u[k] for k in keys),
        sa.func.count().label("users"),
        *(sa.func.sum(u[k]) for k in COLUMNS),
        *(sa.func.sum(u[COLUMNS[i]] * u[COLUMNS[j]]) for i, j in pairs),
    ).group_by(*(u[k] for k in keys))
    out = {}
    k, nk = len(COLUMNS), len(keys)
    for row in conn.execute(q):
        vals = [0.0 if v is None else float(v) for v in row[nk + 1 :]]
        cross = np.zeros((k, k))
        for (i, j), v in zip(pairs, vals[k:], strict=True):
            cross[i, j] = cross[j, i] = v
        out[tuple(row[:nk])] = Moments(COLUMNS, int(row[nk]), np.asarray(vals[:k]), cross)
    return out


# Latency histogram: three significant digits, so a percentile is within 1% of the exact one. In the decade
# [10^d, 10^(d+1)) ms (d = -2..4) the bucket is floor(v / 10^(d-2)), 100..999, stored as (d+3)*1000 + bucket;
# below 0.01 ms is bucket 0 (reported as 0), from 100 s on bucket 8000 (reported as 100,000 ms).
_DECADES = range(-2, 5)


def latency_histogram(conn: Connection, scope: Scope) -> list[tuple[str, str, str, str, int, int]]:
    """(arm, model_name, model_version, day, bucket, emails) over the experiment's emails in the window."""
    p = P.alias("p")
    v = p.c.latency_ms
    whens = [(v < 0.01, sa.literal(0))]
    for d in _DECADES:
        # Integer multipliers and divisors, so a value on a bucket edge (10.0 ms) lands in its own bucket.
        scaled = v * 10 ** (2 - d) if d < 2 else v / 10 ** (d - 2)
        whens.append((v < 10.0 ** (d + 1), (d + 3) * 1000 + _floor(conn, scaled)))
    bucket = sa.case(*whens, else_=sa.literal(8000)).label("bucket")
    keys = [p.c.arm, p.c.model_name, p.c.model_version, day_of(p.c.ts, scope.days).label("day")]
    q = (
        sa.select(*keys, bucket, sa.func.count())
        .where(
            p.c.ts >= scope.days[0].lo,
            p.c.ts < scope.days[-1].hi,
            p.c.experiment == scope.experiment,
            _flag(p.c.in_experiment),
        )
        .group_by(*keys, bucket)
    )
    return [(r[0], r[1], r[2], r[3], int(r[4]), int(r[5])) for r in conn.execute(q)]


def bucket_floor_ms(bucket: int) -> float:
    """The lower edge of a histogram bucket, in ms: a value rounded down to three significant digits."""
    if bucket == 0:
        return 0.0
    if bucket >= 8000:
        return 100_000.0
    d, j = bucket // 1000 - 3, bucket % 1000
    return j / 10 ** (2 - d) if d < 2 else float(j * 10 ** (d - 2))


def percentiles(
    hist: Sequence[tuple[str, str, str, str, int, int]], key: Any
) -> dict[tuple[Any, ...], dict[int, float]]:
    """Nearest-rank percentiles (PERCENTILES) per group, `key(row)` naming a row's group: the lower edge of the
    bucket holding rank ceil(p·n/100), i.e. the exact value rounded down to three significant digits."""
    groups: dict[tuple[Any, ...], dict[int, int]] = {}
    for row in hist:
        g = groups.setdefault(key(row), {})
        g[row[4]] = g.get(row[4], 0) + row[5]
    out = {}
    for name, counts in groups.items():
        buckets = np.array(sorted(counts))
        cum = np.cumsum([counts[b] for b in buckets])
        n = int(cum[-1])
        ranks = {p: -(-p * n // 100) for p in PERCENTILES}  # ceil(p·n/100) in integers
        out[name] = {p: bucket_floor_ms(int(buckets[np.searchsorted(cum, r)])) for p, r in ranks.items()}
    return out


def daily_counts(conn: Connection, days: Sequence[Day], triage_queue: str) -> list[dict[str, Any]]:
    """Every email in the window (whatever experiment) counted once per (day, answered queue): each is a fallback
    (the assigned arm failed), else sent to triage, else auto-routed; that precedence makes the three add up."""
    p = P.alias("p")
    fallback = _flag(p.c.fallback)
    day = day_of(p.c.ts, days).label("day")
    q = (
        sa.select(
            day,
            p.c.queue,
            sa.func.count().label("emails"),
            sa.func.sum(sa.case((sa.and_(~fallback, p.c.queue != triage_queue), 1), else_=0)).label("auto_routed"),
            sa.func.sum(sa.case((sa.and_(~fallback, p.c.queue == triage_queue), 1), else_=0)).label("sent_to_triage"),
            sa.func.sum(sa.case((fallback, 1), else_=0)).label("fallback"),
        )
        .where(p.c.ts >= days[0].lo, p.c.ts < days[-1].hi)
        .group_by(day, p.c.queue)
        .order_by(day, p.c.queue)
    )
    return [dict(row._mapping) for row in conn.execute(q)]


def outside_experiment(conn: Connection, days: Sequence[Day], experiment: str) -> int:
    """Emails in the window not assigned by the experiment (holdout, forced arms, other or no experiment)."""
    p = P.alias("p")
    inside = sa.and_(p.c.experiment == experiment, _flag(p.c.in_experiment))
    q = sa.select(sa.func.count()).where(p.c.ts >= days[0].lo, p.c.ts < days[-1].hi, ~inside)
    return int(conn.execute(q).scalar_one())


def log_span(conn: Connection) -> tuple[str | None, str | None, int]:
    """(first ts, last ts, predictions) of the whole log."""
    row = conn.execute(sa.select(sa.func.min(P.c.ts), sa.func.max(P.c.ts), sa.func.count()).select_from(P)).one()
    return row[0], row[1], int(row[2])


def audit_records(conn: Connection) -> list[str]:
    """The audit log's records that may change arm weights (JSON text, oldest first)."""
    kinds = ("experiment", "rollout", "rollback")
    q = sa.select(AUDIT.c.record).where(AUDIT.c.kind.in_(kinds)).order_by(AUDIT.c.id)
    return [str(r) for r in conn.execute(q).scalars()]
