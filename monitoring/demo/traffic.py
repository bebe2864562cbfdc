"""Simulated customers and agents for the demo: customers send emails over HTTP, agents handle them and report back.

A few hundred customers (each its own `user_id`, so the router's sticky assignment is exercised) send the emails of
a pool of synthetic mail (each once, in a shuffled order, before any is sent again), a few at a time, as fast as the
server answers. At a chosen moment of simulated time the pool switches to drifted mail (new products and phrasings,
another queue mix). Every routed email is handled by an agent some simulated hours later (a random delay): the agent
reports the queue the email belonged in (a correction when the route was wrong, a confirmation when it was right) and
the handling time; an email sent to triage is assigned by a triage agent the same way. Times are the app's
(`serving.clock`), so a simulated week takes minutes.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import pandas as pd

from serving import clock

log = logging.getLogger(__name__)


@dataclass
class TrafficStats:
    sent: int = 0
    failed: int = 0  # a route call that did not answer 200
    feedback: int = 0
    feedback_failed: int = 0
    by_arm: Counter[str] = field(default_factory=Counter)
    drifted: int = 0


class Traffic:
    """Customers and agents against a running server, on background threads, until `stop()`."""

    def __init__(
        self,
        url: str,
        fresh: pd.DataFrame,
        drifted: pd.DataFrame,
        *,
        drift_at: datetime,
        users: int = 600,
        senders: int = 4,
        feedback_delay_h: tuple[float, float] = (0.5, 3.0),
        seed: int = 7,
        client_token: str | None = None,
        agent_token: str | None = None,
    ) -> None:
        self.url = url
        self.route_headers = {"Authorization": f"Bearer {client_token}"} if client_token else {}
        self.agent_headers = {"Authorization": f"Bearer {agent_token}"} if agent_token else {}
        self.pools = {False: fresh.reset_index(drop=True), True: drifted.reset_index(drop=True)}
        self.drift_at = drift_at
        self.users = users
        self.senders = senders
        self.delay = feedback_delay_h
        self.rng = random.Random(seed)
        self.stats = TrafficStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, str, str]] = []  # (due sim epoch, seq, request_id, true queue)
        # Each pool is sent in a shuffled order, every email once before any repeats (a repeat is a duplicate).
        self._order = {k: self.rng.sample(range(len(v)), len(v)) for k, v in self.pools.items()}
        self._next = {k: 0 for k in self.pools}
        self._seq = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for k in range(self.senders):
            self._threads.append(
                threading.Thread(target=self._send_loop, args=(k,), name=f"customers-{k}", daemon=True)
            )
        self._threads.append(threading.Thread(target=self._agent_loop, name="agents", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _pick(self) -> tuple[dict[str, str], str, bool]:
        drifted = clock.now() >= self.drift_at
        pool = self.pools[drifted]
        with self._lock:
            order = self._order[drifted]
            row = pool.iloc[order[self._next[drifted] % len(order)]]
            self._next[drifted] += 1
            user = f"customer-{int(self.users * self.rng.random() ** 1.3)}"  # some customers write more often
            self._seq += 1
            seq = self._seq
        email = {"user_id": user, "subject": str(row["subject"]), "body": str(row["body"]), "email_id": f"demo-{seq}"}
        return email, str(row["queue"]), drifted

    def _send_loop(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.route_headers) as http:
            while not self._stop.is_set():
                email, truth, drifted = self._pick()
                try:
                    response = http.post("/v1/route", json=email)
                except httpx.HTTPError as err:
                    log.warning("route failed: %s", err)
                    response = None
                with self._lock:
                    self.stats.sent += 1
                    self.stats.drifted += drifted
                    if response is None or response.status_code != 200:
                        self.stats.failed += 1
                        continue
                    answer = response.json()
                    self.stats.by_arm[answer["arm"]] += 1
                    due = clock.now() + timedelta(hours=self.rng.uniform(*self.delay))
                    heapq.heappush(self._due, (due.timestamp(), self._seq, answer["request_id"], truth))

    def _agent_loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.agent_headers) as http:
            while not self._stop.is_set():
                now = clock.now().timestamp()
                with self._lock:
                    ready = []
                    while self._due and self._due[0][0] <= now:
                        ready.append(heapq.heappop(self._due))
                for _, _, request_id, truth in ready:
                    handling = round(max(20.0, self.rng.gauss(95, 35)), 1)
                    body = {"request_id": request_id, "true_queue": truth, "handling_seconds": handling}
                    ok = False
                    try:
                        ok = http.post("/v1/feedback", json=body).status_code == 200
                    except httpx.HTTPError as err:
                        log.warning("feedback failed: %s", err)
                    with self._lock:
                        self.stats.feedback += ok
                        self.stats.feedback_failed += not ok
                if not ready:
                    time.sleep(0.1)
