"""No request body over the limit is read: declared too large, or sent chunked without a length (found in review:
the first version looked at Content-Length only, and a chunked body reached FastAPI whole, before the token check)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.api import BodyLimit

pytestmark = pytest.mark.unit


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.state.max_request_bytes = 1000
    app.add_middleware(BodyLimit)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    return TestClient(app)


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_a_body_within_the_limit_passes_declared_or_chunked(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 1000).json() == {"read": 1000}
    assert client.post("/echo", content=chunks(900)).json() == {"read": 900}


def test_a_body_over_the_limit_is_413_declared_or_chunked(client: TestClient) -> None:
    declared = client.post("/echo", content=b"x" * 1001)
    assert (
        declared.status_code == 413 and declared.json()["detail"] == "the request body is 1001 bytes; the limit is 1000"
    )
    chunked = client.post("/echo", content=chunks(50_000))
    assert chunked.status_code == 413 and "over the limit of 1000 bytes" in chunked.json()["detail"]
