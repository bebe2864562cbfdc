"""Alarms posted to a webhook: one JSON POST per alarming run, retried with back-off, never failing the run.

Any job with alarms calls `post_alarms` (the drift job here; the KPI report's guardrail and SRM alarms later, with
kind "guardrail" or "srm"). The URL comes from the environment variable the config names, else from the config;
with neither there are no alerts. A webhook that stays down is logged (as a warning, and as a `LogRecord` of the
calling job when it passes a `warn` callback) and the run carries on.

The URL is often a secret (a token in the path, a password in it): what is logged or returned names only its
scheme, host and port. Timeouts, connection errors and 5xx answers are retried; a 4xx answer is not (the request
itself is refused, sending it again will not help).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

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


def safe_url(url: str) -> str:
    """scheme://host[:port] of a URL: what may be logged of a webhook URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or '?'}://{host}{port}"


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [url, parts.netloc, parts.path, parts.query, parts.password or "", parts.username or ""]
    except ValueError:
        return [url]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) > 1}, key=len, reverse=True)


def _describe(err: BaseException | None, url: str) -> str:
    """The error in words, without any part of the URL but its scheme, host and port."""
    if isinstance(err, httpx.HTTPStatusError):
        return f"HTTP {err.response.status_code} {err.response.reason_phrase}".strip()
    text = f"{type(err).__name__}: {err}"
    for secret in _secrets(url):
        text = text.replace(secret, "<redacted>")
    return text


def _retryable(err: BaseException) -> bool:
    """Timeouts, connection errors and 5xx answers; not a 4xx (or any other refusal of the request itself)."""
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code >= 500
    return isinstance(err, httpx.TransportError | OSError)


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
                retry=retry_if_exception(_retryable),
            ):
                with attempt:
                    attempts += 1
                    client.post(url, json=body).raise_for_status()
    except RetryError as err:
        cause = err.last_attempt.exception()
        message = f"alert webhook {safe_url(url)} failed after {attempts} attempts: {_describe(cause, url)}"
        log.warning("%s", message)
        if warn is not None:
            warn(message)
        return AlertOutcome(sent=False, attempts=attempts, error=message)
    except httpx.HTTPStatusError as err:  # a 4xx: the webhook refuses this request; sending it again will not help
        message = f"alert webhook {safe_url(url)} refused the alarm (not retried): {_describe(err, url)}"
        log.warning("%s", message)
        if warn is not None:
            warn(message)
        return AlertOutcome(sent=False, attempts=attempts, error=message)
    except Exception as err:  # a bad URL, say: an alert must never fail the run that raised it
        message = f"alert webhook {safe_url(url)} unusable: {_describe(err, url)}"
        log.warning("%s", message)
        if warn is not None:
            warn(message)
        return AlertOutcome(sent=False, attempts=attempts, error=message)
    return AlertOutcome(sent=True, attempts=attempts)
