"""A small Python client for the HTTP API, with timeouts and retries on 503 (load shedding, rolling updates).

client = MailrouteClient("http://127.0.0.1:8000", token=os.environ["MAILROUTE_TOKEN"])
answer = client.route("user-17", subject="Refund", body="I was charged twice")
client.feedback(answer["request_id"], "billing", handling_seconds=42)
"""

from __future__ import annotations

import time
from typing import Any

import httpx

CHANGE_TIMEOUT_S = 300.0  # longer than the server's worst case: the change lock, then the arms, then the routers


class MailrouteError(Exception):
    """The service refused a request (4xx) or stayed unavailable; `status` and the one-line `detail`."""

    def __init__(self, status: int, detail: str, *, answered: bool = True) -> None:
        # `answered`: the server said so (shown with its HTTP status); else nothing came back (no status to show).
        super().__init__(f"HTTP {status}: {detail}" if answered else detail)
        self.status = status
        self.detail = detail


class MailrouteClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        token: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self.retries = retries
        self.backoff_s = backoff_s

    def _call(
        self, method: str, path: str, json: Any = None, *, retry: bool = True, timeout_s: float | None = None
    ) -> Any:
        """One call; retried on 503, 429 and transport errors unless `retry` is off (changes that must not run
        twice), waiting what the server's Retry-After asks (at most 30 s) or the backoff."""
        retries = self.retries if retry else 0
        timeout = self._http.timeout if timeout_s is None else httpx.Timeout(timeout_s)
        for attempt in range(retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                response = self._http.request(method, path, json=json, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:  # never sent: safe to send again
                if attempt == retries:
                    raise MailrouteError(503, f"cannot reach {self._http.base_url}: {err}", answered=False) from None
            except httpx.TransportError as err:
                # Sent, answer lost (a read timeout, a dropped connection): the server may have acted on it, so a
                # resend could route an email twice. Said, not retried; an email_id makes a resend safe.
                raise MailrouteError(
                    503, f"no answer from {self._http.base_url} ({type(err).__name__}): {err}", answered=False
                ) from None
            else:
                if response.status_code not in (429, 503) or attempt == retries:
                    break
                after = response.headers.get("retry-after", "")
                wait = min(30.0, float(after)) if after.isdigit() else wait
            time.sleep(wait)
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:  # not our JSON (a proxy's HTML page, say)
                detail = response.text
            detail = " ".join(detail.split())[:300]
            if response.status_code == 401:
                detail += f" (the command line sends the token in ${TOKEN_ENV}: mailroute tokens add makes one)"
            raise MailrouteError(response.status_code, detail)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def route(
        self,
        user_id: str,
        *,
        subject: str | None = None,
        body: str | None = None,
        raw: str | None = None,
        email_id: str | None = None,
        force_arm: str | None = None,
    ) -> dict[str, Any]:
        payload = {"user_id": user_id, "subject": subject, "body": body, "raw": raw, "email_id": email_id,
                   "force_arm": force_arm}  # fmt: skip
        result: dict[str, Any] = self._call("POST", "/v1/route", {k: v for k, v in payload.items() if v is not None})
        return result

    def route_batch(self, emails: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("POST", "/v1/route/batch", emails)
        return result

    def feedback(
        self,
        request_id: str,
        true_queue: str,
        *,
        handling_seconds: float | None = None,
        agent_id: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        payload = {"request_id": request_id, "true_queue": true_queue, "handling_seconds": handling_seconds,
                   "agent_id": agent_id, "source": source}  # fmt: skip
        result: dict[str, Any] = self._call("POST", "/v1/feedback", {k: v for k, v in payload.items() if v is not None})
        return result

    def experiment(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/experiments")
        return result

    def change_experiment(self, name: str, change: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PUT", f"/v1/experiments/{name}", change, retry=False, timeout_s=CHANGE_TIMEOUT_S
        )
        return result

    def policy(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/policy")
        return result

    def change_policy(self, change: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", "/v1/policy", change, retry=False, timeout_s=CHANGE_TIMEOUT_S)
        return result

    def rollout(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/rollout")
        return result

    def start_rollout(
        self, version: str, canary_percent: float | None = None, arm: str | None = None
    ) -> dict[str, Any]:
        body = {"version": version, "canary_percent": canary_percent, "arm": arm}
        body = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self._call("POST", "/v1/rollout", body, retry=False, timeout_s=CHANGE_TIMEOUT_S)
        return result

    def rollback(self, arm: str | None = None) -> dict[str, Any]:
        body = {} if arm is None else {"arm": arm}
        result: dict[str, Any] = self._call("POST", "/v1/rollback", body, retry=False, timeout_s=CHANGE_TIMEOUT_S)
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MailrouteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TOKEN_ENV = "MAILROUTE_TOKEN"


def env_token() -> tuple[str | None, str]:
    """The caller's token for the command line: $MAILROUTE_TOKEN, else the admin token variable serving.yaml names;
    and where it was looked for, for the error message."""
    import os

    from serving.config import ServingConfig, config_dir, load_serving

    # Run away from the project's configs (no serving.yaml here): the default variable name.
    found = (config_dir() / "serving.yaml").is_file()
    admin_env = (load_serving() if found else ServingConfig()).admin_token_env
    return os.environ.get(TOKEN_ENV) or os.environ.get(admin_env), f"${TOKEN_ENV} or ${admin_env}"


def admin_client(url: str, *, needed_for: str | None = None, retries: int = 1) -> MailrouteClient:
    """A client with the token from the environment (`env_token`). With `needed_for`, a missing token is a one-line
    error before anything is sent."""
    token, where = env_token()
    if needed_for and not token:
        raise MailrouteError(401, f"{needed_for} needs an admin token in {where}")
    return MailrouteClient(url, token=token, retries=retries)
