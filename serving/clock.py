"""The time mailroute stamps events with and schedules by: the system clock, or a scaled clock for simulations.

Every timestamp that analysis reads (predictions, feedback, audit records, verdicts, rollout steps, a version's
creation) and every scheduled interval goes through `now()` and `real_seconds()`, so a demo or a test can run a
simulated week in minutes: with `MAILROUTE_CLOCK=scaled:<real origin>:<simulated origin>:<speed>` (epoch seconds,
seconds, a factor), simulated time is `sim_origin + (wall time - real_origin) * speed`. It is a pure function of
the wall clock, so every process that reads the same variable (router replicas, arms, the scheduler actor, a CLI
command) agrees on the time without talking to the others. Unset, or `system`, is the ordinary clock.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

ENV = "MAILROUTE_CLOCK"


class ClockError(ValueError):
    """A MAILROUTE_CLOCK value that cannot be read; one line."""


@dataclass(frozen=True)
class Clock:
    """System time when `speed` is 1 and the origins coincide; else a scaled simulation of it."""

    real_origin: float = 0.0
    sim_origin: float = 0.0
    speed: float = 1.0

    @property
    def simulated(self) -> bool:
        return self.speed != 1.0 or self.real_origin != self.sim_origin

    def now(self) -> datetime:
        real = time.time()
        if not self.simulated:
            return datetime.fromtimestamp(real, UTC)
        return datetime.fromtimestamp(self.sim_origin + (real - self.real_origin) * self.speed, UTC)

    def real_seconds(self, sim_seconds: float) -> float:
        """How long `sim_seconds` of this clock's time take on the wall clock."""
        return sim_seconds / self.speed

    def to_env(self) -> str:
        return "system" if not self.simulated else f"scaled:{self.real_origin!r}:{self.sim_origin!r}:{self.speed!r}"


SYSTEM = Clock()


def scaled(start: datetime, speed: float) -> Clock:
    """A clock that reads `start` now and runs `speed` times faster than the wall clock."""
    if not speed > 0:
        raise ClockError(f"clock speed must be positive, got {speed}")
    return Clock(real_origin=time.time(), sim_origin=start.timestamp(), speed=float(speed))


@lru_cache(maxsize=8)
def parse(value: str) -> Clock:
    """A MAILROUTE_CLOCK value as a Clock; a malformed one is a ClockError naming it."""
    if value in ("", "system"):
        return SYSTEM
    kind, _, rest = value.partition(":")
    parts = rest.split(":")
    try:
        if kind != "scaled" or len(parts) != 3:
            raise ValueError
        real, sim, speed = (float(p) for p in parts)
    except ValueError:
        raise ClockError(f"{ENV}={value!r}: expected 'system' or 'scaled:<real epoch>:<sim epoch>:<speed>'") from None
    if not speed > 0:
        raise ClockError(f"{ENV}={value!r}: the speed must be positive")
    return Clock(real, sim, speed)


def current() -> Clock:
    """The clock this process runs on (read from the environment, so a process started with it inherits it)."""
    return parse(os.environ.get(ENV, ""))


def now() -> datetime:
    """The current time, timezone-aware UTC, on this process's clock."""
    return current().now()


def env() -> dict[str, str]:
    """The environment variable to hand to processes that must share this clock (empty on the system clock)."""
    clock = current()
    return {ENV: clock.to_env()} if clock.simulated else {}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
MAX_DURATION = timedelta(days=36500)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`, `2w` as a timedelta; anything else (a zero duration, one under a microsecond, one
    too long for a date) is a ValueError meant for a person."""
    match = _DURATION.match(str(text))
    bad = f"'{text}' is not a duration; use a positive number and a unit: 30m, 24h, 7d"
    if not match:
        raise ValueError(bad)
    try:
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    except OverflowError:
        delta = timedelta.max
    if delta <= timedelta(0):
        raise ValueError(bad)
    if delta > MAX_DURATION:  # a window reaching before year 1 cannot be subtracted from now
        raise ValueError(f"'{text}' is too long a duration; at most {MAX_DURATION.days}d")
    return delta
