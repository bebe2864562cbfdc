"""Alarms posted to a webhook: one JSON POST per alarming run, retried with back-off, never failing the run.

Any job with alarms calls `post_alarms` (the drift job here; the KPI report's guardrail and SRM alarms later, with
kind "guardrail" or "srm"). The URL comes from the environment variable the config names, else from the config;
with neither there are no alerts. A webhook that stays down is logged (as a warning, and as a `LogRecord` of the
calling job when it passes a `log` callback) and the run carries on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from monitoring.config import AlertSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alarm:
    """One alarming check, as the webhook receives it."""

    kind: str  # "drift", "quality", later "guardrail", "srm"
    scope: str
    check: str
    score: float | None
    threshold: float | None
    detail: str
    report: str | None = None


@dataclass(frozen=True)
class AlertOutcome:
    sent: bool
    attempts: int
    error: str | None = None  # why it was not sent, in words; None when sent or when no URL is set


def webhook_url(spec: AlertSpec) -> str | None:
    if spec.webhook_url_env and os.environ.get(spec.webhook_url_env):
        return os.environ[spec.webhook_url_env]
    return spec.webhook_url


def payload(run_id: str, ts: str, window: tuple[str, str], alarms: Sequence[Alarm], job: str) -> dict[str, Any]:
    lines = [f"{a.scope}/{a.check}: {a.detail}" for a in alarms]
    return {
        "source": "mailroute",
        "job": job,
        "run_id": run_id,
        "ts": ts,
        "window_start": window[0],
        "window_end": window[1],
        "alarms": [asdict(a) for a in alarms],
        "text": f"mailroute {job}: {len(alarms)} alarm(s) in {window[0]} .. {window[1]}: " + "; ".join(lines),
    }


def post_alarms(
    spec: AlertSpec,
    body: dict[str, Any],
    *,
    warn: Callable[[str], None] | None = None,
    wait_s: float = 0.5,
) -> AlertOutcome:
    """POST `body` to the configured webhook with `spec.attempts` tries; any 2xx counts as delivered."""
    url = webhook_url(spec)
    if not url or not body.get("alarms"):
        return AlertOutcome(sent=False, attempts=0)
    attempts = 0
    try:
        with httpx.Client(timeout=spec.timeout_s) as client:
            for attempt in Retrying(
                stop=stop_after_attempt(spec.attempts),
                wait=wait_exponential(multiplier=wait_s, max=10 * wait_s),
                retry=retry_if_exception_type((httpx.HTTPError, OSError)),
            ):
                with attempt:
                    attempts += 1
                    client.post(url, json=body).raise_for_status()
    except RetryError as err:
        cause = err.last_attempt.exception()
        message = f"alert webhook {url} failed after {attempts} attempts: {type(cause).__name__}: {cause}"
        log.warning("%s", message)
        if warn is not None:
            warn(message)
        return AlertOutcome(sent=False, attempts=attempts, error=message)
    except Exception as err:  # a bad URL, say: an alert must never fail the run that raised it
        message = f"alert webhook {url} unusable: {type(err).__name__}: {err}"
        log.warning("%s", message)
        if warn is not None:
            warn(message)
        return AlertOutcome(sent=False, attempts=attempts, error=message)
    return AlertOutcome(sent=True, attempts=attempts)
