"""The real app on a PostgreSQL event store (a real server the tests start): routing, feedback and a runtime change
land in the database, the shared state (layout, audit) with them; a server that goes away mid-load is said by
/readyz while routing goes on (buffer mode), and every acknowledged record is written once it is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pg_server import PostgresServer
from serve_app import (
    AS_AGENT,
    AS_CLIENT,
    register_models,
    running_app,
    small_serving_config,
    two_arm_experiment,
    wait_for,
)

from serving.config import Home
from serving.ops import state
from serving.store.postgres import PostgresEventLog

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SALT = "a-cluster-wide-user-salt-0123456789"


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int, postgres: PostgresServer
) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("pg-home"))
    register_models(home)
    url = postgres.fresh_url()  # no password (the test server trusts its user): it may sit in serving.yaml
    serving = small_serving_config(event_log={"url": url, "flush_interval_ms": 20})
    with running_app(home, serve_port, serving, two_arm_experiment(), {"user_salt": SALT}) as running:
        running["pg_url"] = url
        yield running
    assert not home.event_log.exists()  # nothing went to the home's SQLite file


def _store(app: dict[str, Any]) -> PostgresEventLog:
    return PostgresEventLog(app["pg_url"])


def _route(app: dict[str, Any], i: int) -> httpx.Response:
    body = {"user_id": f"u-{i}", "subject": "Invoice", "body": f"please send me invoice {i} again"}
    return app["client"].post("/v1/route", json=body, headers=AS_CLIENT)


def test_routing_feedback_and_a_change_land_in_postgres(app: dict[str, Any]) -> None:
    answers = [_route(app, i) for i in range(20)]
    assert all(a.status_code == 200 for a in answers)
    first = answers[0].json()["request_id"]
    feedback = {"request_id": first, "true_queue": "billing", "handling_seconds": 30}
    assert app["client"].post("/v1/feedback", json=feedback, headers=AS_AGENT).status_code == 200
    change = app["client"].put("/v1/experiments/t-exp", json={"arms": {"linear": 0.7, "transformer": 0.3}})
    assert change.status_code == 200, change.text
    store = _store(app)
    try:
        stats = wait_for(store.stats, lambda s: s.predictions >= 20, 30)
        assert stats.predictions >= 20 and store.get_feedback(first) is not None
        audit = store.audit_records()
        assert audit[-1]["actor"] == "admin" and audit[-1]["kind"] == "experiment"
        saved = state.load_state(store, app["experiment"])
        assert saved.weights["linear"] == pytest.approx(0.7)
    finally:
        store.close()


def test_a_server_that_goes_away_is_said_routing_goes_on_and_nothing_is_lost(
    app: dict[str, Any], postgres: PostgresServer
) -> None:
    store = _store(app)
    before = store.stats().predictions
    store.close()
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 1000
        while not stop.is_set():
            answer = _route(app, i)
            if answer.status_code == 200:
                acked.append(answer.json()["request_id"])
            i += 1
            time.sleep(0.02)

    sender = threading.Thread(target=load)
    sender.start()
    try:
        time.sleep(1.0)
        postgres.pause()
        try:
            ready = wait_for(lambda: app["client"].get("/readyz").json(),
                             lambda r: r.get("event_log", {}).get("status") == "failing", 30)  # fmt: skip
            assert ready["status"] == "ready" and ready["event_log"]["status"] == "failing", ready  # buffer mode
            during = len(acked)
            time.sleep(2.0)
            assert len(acked) > during  # still routing while the store is away
        finally:
            postgres.resume()
        wait_for(lambda: app["client"].get("/readyz").json(), lambda r: r["event_log"]["status"] == "ok", 60)
        time.sleep(1.0)
    finally:
        stop.set()
        sender.join(timeout=30)
    store = _store(app)
    try:
        stored = wait_for(store.stats, lambda s: s.predictions >= before + len(acked), 60).predictions
        assert stored == before + len(acked)  # every acknowledged email, once
        assert all(store.get_prediction(rid) is not None for rid in acked[-50:])
    finally:
        store.close()
