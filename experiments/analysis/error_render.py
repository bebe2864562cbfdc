"""Renderings of the error analysis and the threshold what-if: compact text tables, JSON, a self-contained HTML page,
and the plan `mailroute analyze apply-thresholds` prints.

Figures that cannot be computed print as "n/a", never NaN. In the HTML every text from the log (subjects, bodies,
queue and arm names) is escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import json

from jinja2 import Environment, select_autoescape

from experiments.analysis.errors import ErrorAnalysis
from experiments.analysis.thresholds import Figures, Table, ThresholdPlan, WhatIf


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def minutes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def figures(f: Figures) -> str:
    return f"coverage {pct(f.coverage)}, accuracy {pct(f.accuracy)}, net saving {minutes(f.net_saving)} min/email"


def policy_words(confidence_threshold: float, queue_thresholds: dict[str, float]) -> str:
    extra = ", ".join(f"{q} {t:.2f}" for q, t in sorted(queue_thresholds.items()))
    return f"global {confidence_threshold:.2f}" + (f" ({extra})" if extra else "")


def _mark(table: Table, threshold: float) -> str:
    marks = ("*" if threshold == table.chosen else "") + ("<" if threshold == table.current else "")
    return f"{marks:<2}"


def what_if_text(w: WhatIf) -> list[str]:
    """The what-if as text: the global table, then net saving by threshold for each top queue (one column each)."""
    out = [
        f"threshold what-if over {w.emails} judged emails with a probability vector (net saving: agent minutes "
        "per judged email; * best, < current)",
        f"  current policy: {figures(w.current)}",
        f"  {'threshold':>9}  {'routed':>7}  {'coverage':>8}  {'accuracy':>8}  {'net':>7}",
    ]
    g = w.global_table
    for r in g.rows:
        out.append(
            f"  {r.threshold:>9.2f}  {r.routed:>7}  {pct(r.coverage):>8}  {pct(r.accuracy):>8}  "
            f"{minutes(r.net_saving):>7} {_mark(g, r.threshold)}"
        )
    if w.queue_tables:
        out += ["", "  net saving per email of each top queue (emails: its judged emails)"]
        width = max(9, *(len(t.scope) + 3 for t in w.queue_tables))
        out.append(f"  {'threshold':>9}" + "".join(f"{t.scope:>{width}}" for t in w.queue_tables))
        out.append(f"  {'emails':>9}" + "".join(f"{t.emails:>{width}}" for t in w.queue_tables))
        thresholds = sorted({r.threshold for t in w.queue_tables for r in t.rows})
        for th in thresholds:
            cells = []
            for t in w.queue_tables:
                row = next((r for r in t.rows if r.threshold == th), None)
                cells.append(" " * width if row is None else f"{minutes(row.net_saving):>{width - 2}}{_mark(t, th)}")
            out.append(f"  {th:>9.2f}" + "".join(cells))
        out += [f"  note: {t.scope}: {t.note}" for t in w.queue_tables if t.note]
    out.append(f"  per-queue policy: {figures(w.per_queue)}")
    return [line.rstrip() for line in out]


def render_text(a: ErrorAnalysis, w: WhatIf | None) -> str:
    scope = ", ".join(x for x in (a.arm and f"arm {a.arm}", a.version and f"version {a.version}") if x)
    out = [
        f"error analysis: {a.emails} emails{f' ({scope})' if scope else ''}"
        f"{f' since {a.since}' if a.since else ''}, as of {a.as_of}; feedback policy {a.feedback_policy}",
        f"judged {a.judged} ({a.judged_with_proba} with a probability vector); auto-routed and judged "
        f"{a.auto_routed_judged}, of which misrouted {a.misroutes}",
    ]
    out += [f"note: {n}" for n in a.notes]
    if a.labels:
        width = max(7, *(len(q) + 2 for q in a.labels))
        out += ["", "confusion (rows: true queue; columns: the model's guess)"]
        out.append(" " * (width + 2) + "".join(f"{q:>{width}}" for q in a.labels))
        for t in a.labels:
            out.append(f"  {t:<{width}}" + "".join(f"{a.confusion[t][g]:>{width}}" for g in a.labels))
    if a.pairs:
        out += ["", "most frequent misroutes (true queue -> routed queue: emails, share of misroutes)"]
        for p in a.pairs:
            out.append(f"  {p.true_queue} -> {p.routed_queue}: {p.count} ({pct(p.share)})")
            for e in p.examples:
                body = f"  {e.snippet}" if e.snippet else ""
                out.append(f"      {e.request_id} ({e.confidence:.2f}) {e.subject}{body}")
    out += ["", f"  {'confidence':<12}{'judged':>8}{'routed':>8}{'misrouted':>11}{'accuracy':>10}"]
    for b in a.bands:
        label = f"[{b.lo:.1f}, {b.hi:.1f}{']' if b.hi == 1.0 else ')'}"
        out.append(f"  {label:<12}{b.judged:>8}{b.auto_routed:>8}{b.misrouted:>11}{pct(b.accuracy):>10}")
    c = a.triage_catch
    out += [
        "",
        f"triage catch: of {c.model_wrong} judged emails the model got wrong, triage caught {c.sent_to_triage} "
        f"({pct(c.share_caught)}) and {c.auto_routed} were misrouted",
    ]
    if w is not None:
        out += ["", *what_if_text(w)]
    return "\n".join(line.rstrip() for line in out) + "\n"


def to_json(a: ErrorAnalysis, w: WhatIf | None) -> str:
    return json.dumps({"errors": a.to_dict(), "what_if": None if w is None else w.to_dict()}, indent=2, allow_nan=False)


def plan_text(p: ThresholdPlan, dry_run: bool) -> str:
    out = [
        f"current policy:  {policy_words(p.current.confidence_threshold, p.current.queue_thresholds)}",
        f"{'proposed' if p.source == 'what-if' else 'given'} policy: "
        f"{policy_words(p.proposed.confidence_threshold, p.proposed.queue_thresholds)}",
    ]
    if p.current_figures is not None and p.proposed_figures is not None:
        out += [f"  now:      {figures(p.current_figures)}", f"  proposed: {figures(p.proposed_figures)}"]
        out.append(f"expected net saving: {minutes(p.gain)} agent min per judged email against the current policy")
    out += [f"note: {n}" for n in p.notes]
    if not p.changed:
        out.append("nothing to change: the proposed policy is the current one")
    elif dry_run:
        out.append("dry run: nothing sent")
    return "\n".join(out) + "\n"


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mailroute error analysis</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
.note{color:#555}.best{font-weight:bold;background:#efe}.ex{color:#444;font-size:.9em}.zero{color:#bbb}</style>
</head><body>
<h1>Error analysis</h1>
<p>{{ a.emails }} emails{% if a.arm %}, arm {{ a.arm }}{% endif %}{% if a.version %}, version {{ a.version }}{% endif %}
{% if a.since %} since {{ a.since }}{% endif %}; as of {{ a.as_of }}; feedback policy {{ a.feedback_policy }}.
Judged {{ a.judged }} ({{ a.judged_with_proba }} with a probability vector); auto-routed and judged
{{ a.auto_routed_judged }}, misrouted {{ a.misroutes }}.</p>
{% for n in a.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if a.labels %}<h2>Confusion</h2><p>rows: true queue; columns: the model's guess (top of its probabilities)</p>
<table><tr><th></th>{% for q in a.labels %}<th>{{ q }}</th>{% endfor %}</tr>
{% for t in a.labels %}<tr><th>{{ t }}</th>{% for g in a.labels %}{% set n = a.confusion[t][g] %}
<td class="{{ 'zero' if n == 0 else '' }}">{{ n }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if a.pairs %}<h2>Most frequent misroutes</h2><table><tr><th>true queue → routed</th><th>emails</th>
<th>share of misroutes</th><th>examples (most confident first)</th></tr>
{% for p in a.pairs %}<tr><td>{{ p.true_queue }} → {{ p.routed_queue }}</td><td>{{ p.count }}</td>
<td>{{ pct(p.share) }}</td><td style="text-align:left">{% for e in p.examples %}<div class="ex">
<b>{{ e.subject }}</b> ({{ e.request_id }}, {{ "%.2f" | format(e.confidence) }}) {{ e.snippet }}</div>
{% endfor %}</td></tr>{% endfor %}</table>{% endif %}
<h2>By confidence</h2><table><tr><th>top probability</th><th>judged</th><th>auto-routed</th><th>misrouted</th>
<th>accuracy among routed</th></tr>{% for b in a.bands %}<tr><td>[{{ "%.1f" | format(b.lo) }},
{{ "%.1f" | format(b.hi) }}{{ "]" if b.hi == 1.0 else ")" }}</td><td>{{ b.judged }}</td><td>{{ b.auto_routed }}</td>
<td>{{ b.misrouted }}</td><td>{{ pct(b.accuracy) }}</td></tr>{% endfor %}</table>
{% set c = a.triage_catch %}<p>Of {{ c.model_wrong }} judged emails the model got wrong, triage caught
{{ c.sent_to_triage }} ({{ pct(c.share_caught) }}) and {{ c.auto_routed }} were misrouted.</p>
{% if w %}<h2>Threshold what-if</h2><p>{{ w.emails }} judged emails with a probability vector; net saving in agent
minutes per judged email. Current policy: {{ figures(w.current) }}. Per-queue policy: {{ figures(w.per_queue) }}.</p>
{% for t in [w.global_table] + w.queue_tables | list %}
<h3>{{ "all emails" if t.scope == "all" else "top queue " ~ t.scope }}
({{ t.emails }} emails; current {{ "%.2f" | format(t.current) }}, chosen {{ "%.2f" | format(t.chosen) }})</h3>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}<table><tr><th>threshold</th><th>routed</th>
<th>coverage</th><th>accuracy</th><th>net saving</th></tr>{% for r in t.rows %}
<tr class="{{ 'best' if r.threshold == t.chosen else '' }}"><td>{{ "%.2f" | format(r.threshold) }}
{{ "(current)" if r.threshold == t.current else "" }}</td><td>{{ r.routed }}</td><td>{{ pct(r.coverage) }}</td>
<td>{{ pct(r.accuracy) }}</td><td>{{ minutes(r.net_saving) }}</td></tr>{% endfor %}</table>{% endfor %}{% endif %}
</body></html>
"""


def render_html(a: ErrorAnalysis, w: WhatIf | None) -> str:
    """One self-contained page (no external resources); every text from the log is escaped."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(_TEMPLATE).render(a=a, w=w, pct=pct, minutes=minutes, figures=figures)
