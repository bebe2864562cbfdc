"""Faults with real processes and real signals, under a bounded load on loopback.

- an arm's replica is SIGKILLed: requests fall back (none fails), Serve starts a new replica, and the arm takes
  traffic again by itself once its circuit closes;
- an arm hangs (never answers): routing keeps at least half its throughput, because the router's per-arm circuit
  breaker stops waiting for it after a few timeouts, and the arm serves again once it is healthy;
- a router replica (the process that writes the event log) is SIGKILLed: the durability promise holds. With an
  `email_id` an answer is sent only after its record is committed, so every acknowledged one is in the log; without
  one, records wait up to `flush_interval_ms` in the replica's buffer, so a hard crash loses at most what was
  acknowledged in that last interval (the test measures it);
- the disk fills (the event log lives on a small tmpfs mounted for the test, and a file fills it): `/readyz` says so,
  routing goes on (buffer mode), and once space is free again every buffered record is written and the file is
  intact;
- a corrupt model version pushed to a rollout is refused and the running version keeps serving.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_app import (
    AS_CLIENT,
    corrupt_version,
    register_linear,
    register_models,
    running_app,
    set_fault,
    small_serving_config,
    two_arm_experiment,
    wait_for,
)

from serving.config import Home
from serving.store.eventlog import open_event_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BODY = {"subject": "Refund", "body": "I was charged twice for my order, please refund one of them"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("faults-home"))
    register_models(home)
    # The event log on a file system of its own, small enough to fill (tmpfs needs root; without it the disk-full
    # test is skipped and the log stays in the home).
    disk = tmp_path_factory.mktemp("faults-disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    store = disk / "events.db" if mounted.returncode == 0 else home.event_log
    serving = small_serving_config(
        circuit_breaker={"failures": 3, "reset_after_s": 1.0},
        event_log={"flush_interval_ms": 20, "url": f"sqlite:///{store}"},
    )
    try:
        with running_app(home, serve_port, serving, two_arm_experiment()) as running:
            running.update(store=store, disk=disk if mounted.returncode == 0 else None)
            yield running
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _pids(title: str) -> list[int]:
    """Processes whose title (Ray names an actor's worker `ray::<actor class>`) contains `title`."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if title in line and "ps -eo" not in line]


class Load:
    """Client threads routing emails until stopped; every answer is kept with its time (what was acknowledged)."""

    def __init__(self, app: dict[str, Any], threads: int = 4, email_ids: bool = False) -> None:
        self.url, self.email_ids = app["url"], email_ids
        self.acks: list[tuple[float, str, str | None, dict[str, Any]]] = []  # (time, request_id, email_id, answer)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=AS_CLIENT) as client:
            i = 0
            while not self._stop.is_set():
                email_id = f"w{worker}-{i}" if self.email_ids and i % 2 == 0 else None
                body = {**BODY, "user_id": f"load-{worker}-{i % 97}", **({"email_id": email_id} if email_id else {})}
                try:
                    response = client.post("/v1/route", json=body)
                except httpx.HTTPError as err:  # the connection to a killed process: not acknowledged
                    with self._lock:
                        self.failures.append(type(err).__name__)
                else:
                    with self._lock:
                        if response.status_code == 200:
                            answer = response.json()
                            self.acks.append((time.monotonic(), answer["request_id"], email_id, answer))
                        else:
                            self.failures.append(f"{response.status_code}: {response.text[:120]}")
                i += 1
                time.sleep(0.005)


def _forced(app: dict[str, Any], arm: str) -> dict[str, Any]:
    answer = app["client"].post("/v1/route", json={**BODY, "user_id": "qa", "force_arm": arm})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _logged(app: dict[str, Any]) -> set[str]:
    return set(open_event_log(f"sqlite:///{app['store']}").predictions_frame()["request_id"])


def test_a_killed_arm_replica_costs_no_request_and_comes_back_by_itself(app: dict[str, Any]) -> None:
    title = "ServeReplica:mailroute-arm-transformer:arm-transformer"
    (victim,) = wait_for(lambda: _pids(title), lambda pids: len(pids) == 1, 30)
    assert not _forced(app, "transformer")["fallback"]
    with Load(app) as load:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: _pids(title), lambda pids: len(pids) == 1 and victim not in pids, 90)
        assert len(replaced) == 1 and victim not in replaced, "Serve did not start a new replica"
        time.sleep(1.0)
    assert load.failures == [] and len(load.acks) > 50  # the budget: no request fails, they fall back
    fell_back = [a for _, _, _, a in load.acks if a["fallback"]]
    assert all(a["queue"] and a["reason"].startswith("fallback_to_linear:transformer_") for a in fell_back)
    # The arm takes traffic again by itself: its circuit closes after a second, the new replica answers.
    back = wait_for(lambda: _forced(app, "transformer"), lambda a: not a["fallback"], 60)
    assert not back["fallback"] and back["model_version"].startswith("transformer:")


def _rate(app: dict[str, Any], seconds: float) -> tuple[float, Load]:
    """Answers per second of eight client threads over `seconds`."""
    with Load(app, threads=8) as load:
        time.sleep(seconds)
    return len(load.acks) / seconds, load


def test_routing_keeps_its_throughput_while_one_arm_hangs(app: dict[str, Any]) -> None:
    wait_for(lambda: _forced(app, "transformer"), lambda a: not a["fallback"], 60)  # both routers' circuits closed
    healthy, _ = _rate(app, 8.0)
    set_fault("transformer", "hang")  # every call to it now waits forever: only the router's timeout ends it
    try:
        hung, load = _rate(app, 8.0)
    finally:
        set_fault("transformer", None)
    assert load.failures == [], load.failures[:3]
    fell_back = [a for _, _, _, a in load.acks if a["fallback"]]
    # The transformer arm's half of the traffic falls back; once its circuit opens (three timeouts per router
    # replica), calls skip it at once instead of each waiting out the one-second timeout.
    assert fell_back and all(a["reason"].startswith("fallback_to_linear:transformer_") for a in fell_back)
    assert any(a["reason"] == "fallback_to_linear:transformer_open" for a in fell_back)
    print(f"\nthroughput with the transformer arm hung: {hung:.1f}/s against {healthy:.1f}/s healthy "
          f"({hung / healthy:.2f}x); {len(fell_back)} of {len(load.acks)} fell back")  # fmt: skip
    assert hung >= 0.5 * healthy, (hung, healthy)
    # The hung calls were cancelled with their timeouts: the arm answers again once its circuit closes.
    back = wait_for(lambda: _forced(app, "transformer"), lambda a: not a["fallback"], 60)
    assert back["model_version"].startswith("transformer:")


def test_readyz_names_a_failing_arm_in_one_line_without_rays_internals(app: dict[str, Any]) -> None:
    """Found in review: /readyz (open to anyone) answered with 500 characters of the arm's Ray error: a process id,
    an internal address, actor ids, the remote traceback. Now: the arm and the error's kind; the rest in the log."""
    set_fault("transformer", "error")
    try:
        answer = wait_for(lambda: app["client"].get("/readyz"), lambda r: r.status_code == 503, 30)
    finally:
        set_fault("transformer", None)
    detail = answer.json()["detail"]
    assert detail.startswith("arm transformer: not answering (") and "\n" not in detail, detail
    assert not any(word in detail for word in ("pid=", "ip=", "Traceback", "actor", "File ")), detail
    assert int(answer.headers["retry-after"]) > 0
    wait_for(lambda: app["client"].get("/readyz"), lambda r: r.status_code == 200, 30)


def test_a_killed_event_log_writer_loses_no_acknowledged_email_with_an_id(app: dict[str, Any]) -> None:
    title = "ServeReplica:mailroute:Router"
    routers = wait_for(lambda: _pids(title), lambda pids: len(pids) == 2, 30)
    flush_s = app["serving"].event_log.flush_interval_ms / 1000
    with Load(app, email_ids=True) as load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        os.kill(routers[0], signal.SIGKILL)
        wait_for(lambda: _pids(title), lambda pids: len(pids) == 2 and routers[0] not in pids, 90)
        time.sleep(1.0)
    time.sleep(1.0)  # the surviving replicas' buffers reach the log
    logged = _logged(app)
    with_id = [(t, r) for t, r, e, _ in load.acks if e is not None]
    without = [(t, r) for t, r, e, _ in load.acks if e is None]
    assert with_id and without
    assert [r for _, r in with_id if r not in logged] == []  # the promise: committed before the answer
    lost = [t for t, r in without if r not in logged]
    # A hard crash loses at most what that replica acknowledged in its last flush interval (and the commit then
    # under way): every lost record was acknowledged shortly before the kill.
    assert all(killed_at - (flush_s + 1.0) <= t <= killed_at for t in lost), (len(lost), flush_s)
    print(f"\nSIGKILL of a router replica: {len(lost)} of {len(without)} acknowledged emails without an email_id "
          f"lost (flush interval {flush_s * 1000:.0f} ms); 0 of {len(with_id)} with one")  # fmt: skip


def test_a_full_disk_keeps_routing_says_so_and_loses_nothing_when_it_is_back(app: dict[str, Any]) -> None:
    if app["disk"] is None:
        pytest.skip("mounting a small tmpfs for the event log needs root (CAP_SYS_ADMIN)")
    before = _logged(app)
    with sqlite3.connect(app["store"]) as raw:  # an empty write-ahead log: the next write needs new blocks
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = app["disk"] / "filler"
    with filler.open("wb") as fh:  # fill the file system to the last block
        try:
            while True:
                fh.write(b"\0" * 2**20)
                fh.flush()
        except OSError:
            pass
    try:
        with httpx.Client(base_url=app["url"], timeout=30, headers=AS_CLIENT) as client:
            answers = [client.post("/v1/route", json={**BODY, "user_id": f"full-{i}"}) for i in range(60)]
        assert [a.status_code for a in answers] == [200] * 60  # triage-safe: routing goes on
        ready = wait_for(
            lambda: app["client"].get("/readyz").json(), lambda r: r.get("event_log", {}).get("status") == "failing", 30
        )
        assert ready["status"] == "ready" and ready["event_log"]["status"] == "failing", ready
        assert ready["event_log"]["buffered"] > 0
        metrics = app["client"].get("/metrics").text
        assert "mailroute_event_log_failing 0" not in metrics and "mailroute_events_dropped_total 0" in metrics
        assert not ({a.json()["request_id"] for a in answers} & _logged(app))  # nothing written meanwhile
    finally:
        filler.unlink()
    ids = {a.json()["request_id"] for a in answers}
    logged = wait_for(lambda: _logged(app), lambda got: ids <= got, 60)
    assert ids <= logged and before <= logged  # every buffered record written, nothing earlier lost
    ready = wait_for(lambda: app["client"].get("/readyz").json(), lambda r: r["event_log"]["status"] == "ok", 30)
    assert ready["event_log"] == {"status": "ok", "buffered": 0, "dropped": 0}
    with sqlite3.connect(app["store"]) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_corrupt_version_pushed_to_a_rollout_is_refused_and_the_arm_keeps_serving(app: dict[str, Any]) -> None:
    version = register_linear(app["home"], seed=61, rows=600)
    corrupt_version(app["home"], version)
    served = _forced(app, "linear")["model_version"]
    answer = app["client"].post("/v1/rollout", json={"version": f"linear:{version}"}, timeout=120)
    assert answer.status_code == 422 and "checksum mismatch" in answer.json()["detail"], answer.text
    assert "\n" not in answer.json()["detail"]
    after = _forced(app, "linear")
    assert after["model_version"] == served and not after["fallback"]
    assert "linear-canary" not in app["client"].get("/v1/experiments").json()["experiment"]["arms"]
