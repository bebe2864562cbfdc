"""Renderings of an `ExperimentReport`: plain text for the terminal, self-contained HTML, CSV of the daily counts,
and the by-day plot (a PNG, drawn server-side with matplotlib) that the HTML page and the dashboard embed.

Every figure that could not be estimated prints as words ("n/a: ..."), never as NaN. In the HTML every text that
came from the log or the config (arm names, model versions, notes) is escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Sequence

from jinja2 import Environment, select_autoescape

from experiments.analysis.report import ExperimentReport, KpiGroup
from experiments.analysis.stats import Interval

SHOWN = (
    ("accuracy", "share"), ("misroute_rate", "share"), ("judged_share", "share"), ("auto_route_coverage", "share"),
    ("triage_rate", "share"), ("fallback_rate", "share"), ("error_rate", "share"), ("feedback_coverage", "share"),
    ("audit_coverage", "share"), ("correction_share", "share"), ("audit_accuracy", "share"),
    ("second_queue_accuracy", "share"), ("triage_guess_accuracy", "share"), ("minutes_saved", "min"),
    ("misroute_minutes", "min"), ("triage_minutes", "min"), ("net_saving", "min"), ("net_saving_money", "money"),
)  # fmt: skip
LABELS = {
    "accuracy": "routing accuracy", "misroute_rate": "misroute rate", "judged_share": "auto-routed with a verdict",
    "auto_route_coverage": "auto-route coverage", "triage_rate": "triage rate", "fallback_rate": "fallback rate",
    "error_rate": "error rate", "feedback_coverage": "feedback coverage", "audit_coverage": "audit coverage",
    "correction_share": "corrections among feedback", "audit_accuracy": "accuracy by audit alone",
    "second_queue_accuracy": "second queue (top-2) accuracy", "triage_guess_accuracy": "guess on triaged emails",
    "minutes_saved": "minutes saved / email", "misroute_minutes": "misroute cost / email (min)",
    "triage_minutes": "triage minutes / email", "net_saving": "net saving / email (min)",
    "net_saving_money": "net saving / email",
}  # fmt: skip


def fmt(iv: Interval, kind: str, currency: str = "") -> str:
    """'0.912 [0.901, 0.923]' (shares as percentages), or 'n/a' when it cannot be estimated."""
    if not iv.known or iv.estimate is None:
        return "n/a"

    def one(v: float) -> str:
        if kind == "share":
            return f"{100 * v:.1f}%"
        if kind == "money":
            return f"{v:.3f} {currency}".strip()
        return f"{v:.3f}"

    if iv.lo is None or iv.hi is None:
        return one(iv.estimate)
    return f"{one(iv.estimate)} [{one(iv.lo)}, {one(iv.hi)}]"


def _latency(g: KpiGroup) -> str:
    vals = [g.latency_ms.get(k) for k in ("p50", "p95", "p99")]
    if any(v is None for v in vals):
        return "n/a"
    return " / ".join(f"{v:.1f}" for v in vals if v is not None) + " ms"


def render_text(r: ExperimentReport) -> str:
    """The report for a terminal: window, recommendation, per-arm KPIs, comparisons, SRM, guardrails, days."""
    out = [
        f"experiment {r.experiment}: control {r.control}; window {r.since or 'n/a'} to {r.until or 'n/a'} "
        f"(days in {r.time_zone}); as of {r.as_of}; feedback policy {r.feedback_policy}",
        "",
        f"RECOMMENDATION: {r.recommendation.sentence}",
    ]
    if r.recommendations and len(r.recommendations) > 1:
        out += [f"  - {rec.sentence}" for rec in r.recommendations]
    for note in r.notes:
        out.append(f"note: {note}")
    if r.arms:
        width = max(len(label) for label in LABELS.values()) + 2
        out += ["", "per arm (intervals clustered by user)"]
        out.append(" " * width + "".join(f"{g.arm:<34}" for g in r.arms))
        out.append(f"{'emails / users':<{width}}" + "".join(f"{f'{g.emails} / {g.users}':<34}" for g in r.arms))
        for name, kind in SHOWN:
            cells = "".join(f"{fmt(g.values[name], kind, r.currency):<34}" for g in r.arms)
            out.append(f"{LABELS[name]:<{width}}{cells}")
        out.append(f"{'latency p50/p95/p99':<{width}}" + "".join(f"{_latency(g):<34}" for g in r.arms))
    for c in r.comparisons:
        out += ["", f"{c.challenger} - {c.control}:"]
        for label, diff, kind in (("accuracy", c.accuracy, "share"), ("net saving/email", c.net_saving, "min")):
            out.append(f"  {label:<18} {fmt(diff.fixed, kind)}   always-valid {fmt(diff.sequential, kind)}")
    if r.srm is not None:
        out += ["", r.srm.note]
    if r.guardrails:
        out += ["", "guardrails:"] + [f"  [{g.status}] {g.text}" for g in r.guardrails]
    if r.days:
        out += ["", "emails per day (auto-routed + triage + fallback = total):"]
        per_day: dict[str, list[int]] = {}
        for row in r.counts:
            t = per_day.setdefault(row.day, [0, 0, 0, 0])
            for i, v in enumerate((row.auto_routed, row.sent_to_triage, row.fallback, row.emails)):
                t[i] += v
        quiet = 0
        for day in r.days:
            a, tr, f, n = per_day.get(day.day, [0, 0, 0, 0])
            if n == 0:
                quiet += 1  # a long window must not print hundreds of zero lines
                continue
            out.append(f"  {day.day}  {a:>7} + {tr:>6} + {f:>5} = {n:>7}" + (f"   ({day.note})" if day.note else ""))
        if quiet:
            out.append(f"  ({quiet} day{'s' if quiet > 1 else ''} without email not shown)")
    return "\n".join(out) + "\n"


def counts_csv(r: ExperimentReport) -> str:
    """Daily counts per answered queue: day, partial, queue, emails, auto_routed, sent_to_triage, fallback."""
    partial = {d.day: d.partial for d in r.days}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["day", "partial_day", "queue", "emails", "auto_routed", "sent_to_triage", "fallback"])
    for row in r.counts:
        w.writerow([row.day, int(partial.get(row.day, False)), row.queue, row.emails, row.auto_routed,
                    row.sent_to_triage, row.fallback])  # fmt: skip
    return buf.getvalue()


def plot_daily(r: ExperimentReport, kpi: str = "net_saving", *, width: float = 7.0, height: float = 3.0) -> bytes:
    """PNG of one KPI by day and arm, with its interval as a band (KPIs of `report.BREAKDOWN`). Thread-safe: it
    draws on its own matplotlib Figure, never on pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot()
    days = [d.day for d in r.days]
    for arm in dict.fromkeys(g.arm for g in r.daily):
        rows = {g.key: g.values.get(kpi, Interval(None)) for g in r.daily if g.arm == arm}
        xs, est, lo, hi = [], [], [], []
        for i, day in enumerate(days):
            iv = rows.get(day, Interval(None))
            if iv.estimate is None:
                continue
            xs.append(i)
            est.append(iv.estimate)
            lo.append(iv.lo if iv.lo is not None else iv.estimate)
            hi.append(iv.hi if iv.hi is not None else iv.estimate)
        if not xs:
            continue
        # An arm name from the log is text: matplotlib reads `$...$` in a label as mathtext (and fails on a bad one).
        ax.plot(xs, est, marker="o", markersize=3, label=arm.replace("$", r"\$"))
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_title(LABELS.get(kpi, kpi) + " by day")
    if days:
        step = max(1, len(days) // 8)
        ax.set_xticks(range(0, len(days), step), [days[i][5:] for i in range(0, len(days), step)])
    if ax.lines:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data by day", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>experiment {{ r.experiment }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
.rec{font-size:1.2em;padding:.6em;background:#eef}.broken{color:#b00}.at-risk{color:#a60}.note{color:#555}</style>
</head><body>
<h1>Experiment {{ r.experiment }}</h1>
<p>control <b>{{ r.control }}</b>; window {{ r.since or "n/a" }} to {{ r.until or "n/a" }} (days in {{ r.time_zone }});
as of {{ r.as_of }}; feedback policy {{ r.feedback_policy }}</p>
<p class="rec"><b>{{ r.recommendation.action }}{% if r.recommendation.arm %} {{ r.recommendation.arm }}{% endif %}</b>:
{{ r.recommendation.reasons | join("; ") }}</p>
{% for n in r.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if r.arms %}<h2>Per arm</h2><table><tr><th></th>{% for g in r.arms %}<th>{{ g.arm }}</th>{% endfor %}</tr>
<tr><td>emails / users</td>{% for g in r.arms %}<td>{{ g.emails }} / {{ g.users }}</td>{% endfor %}</tr>
{% for name, kind in shown %}<tr><td>{{ labels[name] }}</td>{% for g in r.arms %}
<td>{{ fmt(g.values[name], kind, r.currency) }}</td>{% endfor %}</tr>{% endfor %}
<tr><td>latency p50 / p95 / p99</td>{% for g in r.arms %}<td>{{ latency(g) }}</td>{% endfor %}</tr></table>{% endif %}
{% if r.comparisons %}<h2>Challenger − control</h2><table><tr><th>challenger</th><th>accuracy</th>
<th>always-valid</th><th>net saving / email (min)</th><th>always-valid</th></tr>
{% for c in r.comparisons %}<tr><td>{{ c.challenger }} − {{ c.control }}</td>
<td>{{ fmt(c.accuracy.fixed, "share") }}</td><td>{{ fmt(c.accuracy.sequential, "share") }}</td>
<td>{{ fmt(c.net_saving.fixed, "min") }}</td>
<td>{{ fmt(c.net_saving.sequential, "min") }}</td></tr>{% endfor %}</table>{% endif %}
{% if r.srm %}<h2>Sample ratio</h2><p>{{ r.srm.note }}</p>{% endif %}
{% if r.guardrails %}<h2>Guardrails</h2><ul>{% for g in r.guardrails %}
<li class="{{ g.status | replace(' ', '-') }}">[{{ g.status }}] {{ g.text }}</li>{% endfor %}</ul>{% endif %}
{% if plots %}<h2>By day</h2>{% for p in plots %}<img alt="{{ p.0 }} by day" src="{{ p.1 }}">{% endfor %}{% endif %}
{% if r.days %}<h2>Emails per day</h2><table><tr><th>day</th><th>auto-routed</th><th>triage</th><th>fallback</th>
<th>total</th><th></th></tr>{% for d in r.days %}{% set t = totals.get(d.day, [0, 0, 0, 0]) %}<tr><td>{{ d.day }}</td>
<td>{{ t[0] }}</td><td>{{ t[1] }}</td><td>{{ t[2] }}</td><td>{{ t[3] }}</td><td>{{ d.note or "" }}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>
"""


def render_html(r: ExperimentReport, plot_kpis: Sequence[str] = ("net_saving", "accuracy", "triage_rate")) -> str:
    """One self-contained HTML page (plots inline as PNG, no external resources); log texts are escaped."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    totals: dict[str, list[int]] = {}
    for row in r.counts:
        t = totals.setdefault(row.day, [0, 0, 0, 0])
        for i, v in enumerate((row.auto_routed, row.sent_to_triage, row.fallback, row.emails)):
            t[i] += v
    plots = [(k, _png_uri(plot_daily(r, k))) for k in plot_kpis] if r.daily else []
    return env.from_string(_TEMPLATE).render(
        r=r, shown=SHOWN, labels=LABELS, fmt=fmt, latency=_latency, plots=plots, totals=totals
    )
