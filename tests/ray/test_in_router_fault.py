"""An arm inside the router whose pinned version fails to load in the router replica (found in review: raising in
`reconfigure` makes Serve stop the replica, and the ingress with it). The router stays up, /readyz says which arm and
why, and that arm's emails fall back to the other arm."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registered import COMMON
from serve_app import ADMIN, register_models, running_app, small_serving_config, two_arm_experiment

from serving.config import Home
from serving.models.linear import MODEL_FILE
from serving.models.registry import ModelRegistry

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("in-router-fault") / "home")
    register_models(home)
    registry = ModelRegistry(home.registry)

    def garbage(folder: Path) -> None:  # checksummed at registration: only loading it finds the fault
        (folder / MODEL_FILE).write_bytes(b"not a pickle")

    broken = registry.register("linear", garbage, kind="linear", labels=list(registry.read_meta("linear", "v1").labels),
                               **COMMON).version  # fmt: skip
    experiment = two_arm_experiment(arms={"linear": {"model": "linear", "version": broken, "weight": 0.5},
                                          "transformer": {"model": "transformer", "weight": 0.5}})  # fmt: skip
    with running_app(home, serve_port, small_serving_config(in_router_arms=["linear"]), experiment) as running:
        running["broken"] = broken
        yield running


def test_the_router_stays_up_says_why_and_the_arm_falls_back(app: dict[str, Any]) -> None:
    ready = app["client"].get("/readyz")
    assert ready.status_code == 503 and ready.headers.get("Retry-After")
    detail = ready.json()["detail"]
    assert f"arm linear (inside the router): linear:{app['broken']} did not load" in detail and "\n" not in detail
    email = {"user_id": "u1", "subject": "Charged twice", "body": "My card was charged twice.", "force_arm": "linear"}
    response = app["client"].post("/v1/route", headers=ADMIN, json=email)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == "transformer:v1" and answer["reason"].startswith("fallback_to_transformer")
    assert app["client"].get("/healthz").status_code == 200
