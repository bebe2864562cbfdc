"""The dashboard's charts, drawn server-side with matplotlib and inlined as PNG data URIs (nothing is fetched).

Figures are built with `matplotlib.figure.Figure` rather than pyplot: the page is rendered on a thread pool, and
pyplot's global state is not thread-safe.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from serving.store.eventlog import MonitorVerdict

MAX_SERIES = 8  # more lines than this on one chart are unreadable; the table lists every check


def plain(label: str) -> str:
    """A label as text: matplotlib reads `$...$` as mathtext, and an unbalanced `$` would fail the whole page."""
    return label.replace("$", r"\$")


def png_data_uri(figure: object) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_history(verdicts: Sequence[MonitorVerdict]) -> str | None:
    """Each check's score over its runs (alarms marked), one line per scope/check; None when no check has a score."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[datetime, float, bool]]] = defaultdict(list)
    for v in verdicts:
        if v.score is not None:
            series[f"{v.scope}/{v.check}"].append((datetime.fromisoformat(v.ts), v.score, v.alarm))
    if not series:
        return None
    figure = Figure(figsize=(9, 2.8))
    axes = figure.add_subplot()
    for name in sorted(series)[:MAX_SERIES]:
        points = sorted(series[name])
        axes.plot(date2num([p[0] for p in points]), [p[1] for p in points], marker="o", markersize=3, label=plain(name))
        alarms = [p for p in points if p[2]]
        if alarms:
            axes.scatter(date2num([p[0] for p in alarms]), [p[1] for p in alarms], color="#c62828", zorder=3, s=30)
    axes.set_ylabel("score")
    axes.set_title("drift scores by run (red: alarm)", fontsize=10)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(alpha=0.3)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return png_data_uri(figure)


TRENDS = (
    ("net_saving", "net saving (agent min / email)"),
    ("accuracy", "routing accuracy"),
    ("auto_route_coverage", "auto-route coverage"),
    ("fallback_rate", "fallback rate"),
)


def daily_trends(report: Any) -> str | None:
    """Per-arm KPIs by day from an experiment report's `daily` groups, each with its interval as a band."""
    from matplotlib.figure import Figure

    daily = list(getattr(report, "daily", ()) or ())
    if not daily:
        return None
    days = sorted({g.key for g in daily})
    arms = sorted({g.arm for g in daily})
    figure = Figure(figsize=(12, 2.6))
    for i, (name, title) in enumerate(TRENDS):
        axes = figure.add_subplot(1, len(TRENDS), i + 1)
        for arm in arms:
            points = []
            for g in daily:
                value = g.values.get(name) if g.arm == arm else None
                if value is not None and value.estimate is not None:
                    points.append((days.index(g.key), value.estimate, value.lo, value.hi))
            if not points:
                continue
            points.sort()
            x = [p[0] for p in points]
            axes.plot(x, [p[1] for p in points], marker="o", markersize=3, label=plain(arm))
            bands = [(p[0], p[2], p[3]) for p in points if p[2] is not None and p[3] is not None]
            if bands:
                axes.fill_between([b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands], alpha=0.15)
        axes.set_title(title, fontsize=9)
        axes.set_xticks(range(len(days)), [d[5:] for d in days], fontsize=7, rotation=45 if len(days) > 7 else 0)
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    return png_data_uri(figure)
