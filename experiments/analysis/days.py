"""The report's window and its calendar days in the reporting time zone, as UTC bounds the store can compare.

The store keeps UTC timestamps as ISO 8601 text (`2026-03-29T01:00:00.000000+00:00`), which sort as text. A local
day is `[local midnight, next local midnight)`; converted to UTC it lasts 24 hours, or 23 and 25 on the days a
daylight-saving change falls on (Europe/Berlin, 2026-03-29: 22:00 UTC on the 28th to 22:00 UTC on the 29th is 23 h).
The window `[since, until)` may cut the first and the last day; such a day is marked partial, with the hours it
covers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_RELATIVE = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
MAX_DAYS = 3660  # ten years of days; a longer window is almost certainly a typo


class ReportInputError(ValueError):
    """A bad argument to the report (a time, a window); the message is one line meant for a person."""


def log_ts(moment: datetime) -> str:
    """A moment in the event log's text format (UTC, microseconds), so it compares with stored timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str, zone: ZoneInfo, now: datetime, what: str = "time") -> datetime:
    """`2026-01-31T09:00:00+01:00` (ISO 8601 with an offset), `2026-01-31` (local midnight in `zone`),
    `2026-01-31T09:00` (local time in `zone`), or a span back from `now`: `24h`, `7d`, `2w`. Returns UTC."""
    raw = text.strip()
    rel = _RELATIVE.match(raw)
    if rel:
        try:
            return (now - int(rel.group(1)) * _UNITS[rel.group(2)]).astimezone(UTC)
        except OverflowError:
            raise ReportInputError(f"{what} '{text}' reaches back before the year 1") from None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ReportInputError(
            f"{what} '{text}' is not a time: use ISO 8601 (2026-01-31, 2026-01-31T09:00+01:00) or a span back "
            "from now (24h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class Day:
    """One local calendar day as the report counts it: `[lo, hi)` in UTC log text, cut to the window."""

    day: str  # the local date, YYYY-MM-DD
    lo: str  # UTC start of what the report counts (local midnight, or the window start if later)
    hi: str  # UTC end (next local midnight, or the window end if earlier)
    hours: float  # hours of the day inside the window
    full_hours: float  # 23, 24 or 25: the whole local day's length
    partial: bool  # the window cuts this day

    @property
    def note(self) -> str | None:
        """Words for a cut day, or None."""
        if not self.partial:
            return None
        return f"partial day: {self.hours:.1f} of {self.full_hours:.0f} hours inside the window"


def _midnight(d: date, zone: ZoneInfo) -> datetime:
    # fold=0: the first of two equal wall times; midnight is never skipped in the zones that shift at 2-3 am.
    return datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)


def start_of_day(moment: datetime, zone: ZoneInfo) -> datetime:
    """Local midnight (in UTC) of the day `moment` falls on in `zone`."""
    return _midnight(moment.astimezone(zone).date(), zone)


def local_days(since: datetime, until: datetime, zone: ZoneInfo) -> list[Day]:
    """The local days that `[since, until)` touches, oldest first, each cut to the window."""
    if until <= since:
        raise ReportInputError(f"the window is empty: until ({log_ts(until)}) is not after since ({log_ts(since)})")
    first = since.astimezone(zone).date()
    last = (until - timedelta(microseconds=1)).astimezone(zone).date()
    if (last - first).days + 1 > MAX_DAYS:
        raise ReportInputError(f"the window spans {(last - first).days + 1} days; the report handles {MAX_DAYS}")
    days = []
    d = first
    while d <= last:
        start, end = _midnight(d, zone), _midnight(d + timedelta(days=1), zone)
        lo, hi = max(start, since), min(end, until)
        days.append(
            Day(
                day=d.isoformat(),
                lo=log_ts(lo),
                hi=log_ts(hi),
                hours=(hi - lo).total_seconds() / 3600,
                full_hours=(end - start).total_seconds() / 3600,
                partial=(lo, hi) != (start, end),
            )
        )
        d += timedelta(days=1)
    return days
