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

from serving.store.eventlog import MonitorVerdict

MAX_SERIES = 8  # more lines than this on one chart are unreadable; the table lists every check


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
        axes.plot(date2num([p[0] for p in points]), [p[1] for p in points], marker="o", markersize=3, label=name)
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
