"""The Python client resends only what the server never received (found in review: a read timeout was retried, so
an email without an email_id could be routed twice), and waits what Retry-After asks."""

from __future__ import annotations

import httpx
import pytest

from serving.client import MailrouteClient, MailrouteError

pytestmark = pytest.mark.unit
ANSWER = {"request_id": "r", "queue": "billing"}


def client(handler: httpx.MockTransport) -> MailrouteClient:
    c = MailrouteClient("http://mailroute.test", retries=3, backoff_s=0.001)
    c._http = httpx.Client(base_url="http://mailroute.test", transport=handler)
    return c


def test_a_lost_answer_is_not_resent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(MailrouteError) as err:
        client(httpx.MockTransport(handler)).route("u1", subject="s", body="b")
    assert len(sent) == 1 and err.value.status == 503 and "ReadTimeout" in err.value.detail


def test_a_refused_connection_and_a_503_are_retried() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(sent) == 2:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=ANSWER)

    assert client(httpx.MockTransport(handler)).route("u1", subject="s", body="b") == ANSWER
    assert len(sent) == 3
