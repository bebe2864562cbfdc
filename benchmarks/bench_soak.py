"""Soak: a steady load near 70% of the measured capacity for ten minutes, with a weight change and a rollout rolled
back during it, on the whole stack (HTTP -> proxy -> router -> linear and MiniLM arms -> event log).

    .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--load 0.7]

1. capacity: a closed loop at concurrency 16 for 20 s (the baseline of this run);
2. the soak: an open loop sending `load x capacity` requests per second (each at its planned time, whatever the
   answers do), for `--minutes`; at 30% of it the weights move 50/50 -> 60/40, at 60% a rollout of a second linear
   version starts (a 10% canary), at 80% it is rolled back;
3. every 10 s the resident memory of every Ray process (workers by actor, raylet, GCS) is read from /proc.

Reports, per minute: requests, errors, latency p50/p95/p99; the memory of each process at the end of the first
minute and at the end (the bound: at most +20% and +64 MB), its peak and its slope over the second half (a leak
keeps climbing, a high-water mark stays flat), with every 10 s sample kept; and the log count against the
acknowledged count (every 200 has its record). Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import REPO, RESULTS, build_registry, make_bodies

from serving.ops.ports import free_port

ADMIN_TOKEN = "soak-admin-token-0123456789"
CLIENT_TOKEN = "soak-gateway-token-0123456789"
MEMORY_BOUND = (1.2, 64 * 2**20)  # at the end, each process at most 20% and 64 MB above its size after minute 1


def ray_processes() -> dict[str, int]:
    """Resident bytes of every Ray process, by a stable name (its title; several alike get #1, #2...)."""
    out = subprocess.run(["ps", "-eo", "pid=,rss=,args="], capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        _pid, rss, args = line.split(None, 2)
        if not any(key in args for key in ("ray::", "raylet", "gcs_server", "haproxy")):
            continue
        name = args.split()[0].rsplit("/", 1)[-1][:80]
        key, n = name, 1
        while key in found:
            n += 1
            key = f"{name}#{n}"
        found[key] = int(rss) * 1024
    return found


async def closed_loop(
    url: str, bodies: list[dict[str, Any]], headers: dict[str, str], seconds: float
) -> tuple[float, int]:
    """Requests per second at concurrency 16, and how many were answered 200."""
    import aiohttp

    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        nonlocal done
        i = w
        while time.perf_counter() < deadline:
            async with session.post(url, json=bodies[i % len(bodies)], headers=headers) as response:
                await response.read()
                done += response.status == 200
            i += 16

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, w) for w in range(16)))
        return done / (time.perf_counter() - started), done


async def soak(
    url: str, bodies: list[dict[str, Any]], rate: float, minutes: float, events: list[Any]
) -> dict[str, Any]:
    """Open loop at `rate`/s for `minutes`; `events` are (fraction of the run, coroutine factory) run on time."""
    import aiohttp

    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    seconds = minutes * 60
    samples: list[tuple[float, float | None, int]] = []  # (time since start, latency ms or None, status)
    memory: list[tuple[float, dict[str, int]]] = []
    changes: list[dict[str, Any]] = []
    in_flight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, i: int, at: float) -> None:
        began = time.perf_counter()
        try:
            async with session.post(url, json=bodies[i % len(bodies)], headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        samples.append((at, (time.perf_counter() - began) * 1000 if status == 200 else None, status))

    async def run_event(name: str, make: Any, at: float) -> None:
        began = time.perf_counter()
        status, detail = await make()
        changes.append({"at_s": round(at, 1), "change": name, "status": status, "detail": detail[:200],
                        "took_s": round(time.perf_counter() - began, 1)})  # fmt: skip

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512), timeout=timeout) as session:
        start = time.perf_counter()
        i, next_memory, pending_events = 0, 0.0, sorted(events, key=lambda e: e[0])
        while (now := time.perf_counter() - start) < seconds:
            while pending_events and now >= pending_events[0][0] * seconds:
                _, name, make = pending_events.pop(0)
                task = asyncio.create_task(run_event(name, make, now))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if now >= next_memory:
                memory.append((now, await asyncio.to_thread(ray_processes)))
                next_memory += 10.0
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(session, i, time.perf_counter() - start))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        await asyncio.gather(*in_flight)
        memory.append((time.perf_counter() - start, await asyncio.to_thread(ray_processes)))
    return {"samples": samples, "memory": memory, "changes": changes, "sent": i}


def per_minute(samples: list[tuple[float, float | None, int]], minutes: float) -> list[dict[str, Any]]:
    rows = []
    for m in range(int(np.ceil(minutes))):
        cell = [s for s in samples if m * 60 <= s[0] < (m + 1) * 60]
        ok = np.array([s[1] for s in cell if s[1] is not None])
        q = np.percentile(ok, [50, 95, 99]) if len(ok) else [float("nan")] * 3
        rows.append({"minute": m + 1, "requests": len(cell), "errors": sum(s[2] != 200 for s in cell),
                     "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1),
                     "p99_ms": round(float(q[2]), 1)})  # fmt: skip
    return rows


def memory_growth(memory: list[tuple[float, dict[str, int]]]) -> dict[str, Any]:
    """Each process's size after the first minute (warm), at its peak and at the end, whether it stayed within
    MEMORY_BOUND, its biggest rise between two samples (a step: a burst of work, such as a canary starting) and its
    trend over the last quarter of the run (MB per minute, a least-squares slope): a leak keeps climbing there, an
    allocator's high-water mark after a step stays flat."""
    warm = next((snap for t, snap in memory if t >= 60), memory[0][1])
    end = memory[-1][1]
    last_quarter = memory[-1][0] * 0.75
    rows = {}
    for name in sorted(set(warm) & set(end)):
        limit = max(warm[name] * MEMORY_BOUND[0], warm[name] + MEMORY_BOUND[1])
        series = [(t, snap[name] / 2**20) for t, snap in memory if name in snap]
        late = [(t / 60, mb) for t, mb in series if t >= last_quarter]
        slope = float(np.polyfit([m for m, _ in late], [mb for _, mb in late], 1)[0]) if len(late) >= 3 else None
        rise, at = max(((b[1] - a[1], b[0]) for a, b in itertools.pairwise(series)), default=(0.0, None))
        rows[name] = {"warm_mb": round(warm[name] / 2**20, 1), "end_mb": round(end[name] / 2**20, 1),
                      "within_bound": end[name] <= limit,
                      "peak_mb": round(max(mb for _, mb in series), 1),
                      "largest_step_mb": round(rise, 1), "largest_step_at_s": at,
                      "last_quarter_mb_per_min": None if slope is None else round(slope, 2)}  # fmt: skip
    return rows


def memory_series(memory: list[tuple[float, dict[str, int]]]) -> dict[str, list[tuple[float, float]]]:
    """(seconds, MB) of each process at every sample, for a plot or a closer look."""
    names = sorted({name for _, snap in memory for name in snap})
    return {n: [(round(t, 1), round(snap[n] / 2**20, 1)) for t, snap in memory if n in snap] for n in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of the measured capacity")
    args = parser.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "MAILROUTE_ADMIN_TOKEN": ADMIN_TOKEN,
                       "MAILROUTE_TOKEN_SOAK_GATEWAY": f"client:{CLIENT_TOKEN}",
                       "MAILROUTE_CONFIG_DIR": str(REPO / "configs")})  # fmt: skip

    import httpx

    from experiments.config import ExperimentConfig
    from serving.config import Home, ServingConfig, load_queues
    from serving.mail.text import PREPROCESSING_VERSION, model_text
    from serving.models.registry import open_registry
    from serving.ops import launch
    from serving.store.eventlog import open_event_log
    from training.config import LinearConfig
    from training.linear import fit_linear
    from training.synth import generate

    home = Home(Path(tempfile.mkdtemp(prefix="mr-soak-")))
    build_registry(home)  # linear:v1 and MiniLM
    frame = generate(5000, seed=9)
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    candidate = fit_linear(texts, frame["queue"].tolist(), LinearConfig(n_jobs=1))
    open_registry(home).register(
        "linear",
        candidate.save,
        kind="linear",
        labels=candidate.labels,
        preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint="soak",
        metrics={},
        params={},
        parent="linear:v1",
    )  # fmt: skip  (linear:v2, the rollout's candidate)
    bodies = make_bodies(3000)
    serving = ServingConfig.model_validate({"linear": {"num_cpus": 0.5}, "transformer": {"num_cpus": 1.0}})
    experiment = ExperimentConfig.model_validate(
        {"name": "soak", "salt": "soak", "holdout_arm": "linear",
         "arms": {"linear": {"model": "linear", "version": "v1", "weight": 0.5},
                  "transformer": {"model": "transformer", "weight": 0.5}}}
    )  # fmt: skip
    running = launch.start(home, load_queues(REPO / "configs" / "queues.yaml"), serving, experiment, port=free_port())
    url = f"{running.url}/v1/route"

    def change(method: str, path: str, body: dict[str, Any]) -> Any:
        async def send() -> tuple[int, str]:
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=running.url, timeout=300, headers=auth) as admin:
                answer = await admin.request(method, path, json=body)
                return answer.status_code, answer.text

        return send

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "proxy": running.proxy, "minutes": args.minutes, "load": args.load}  # fmt: skip
    try:
        clients = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        capacity, capacity_acked = asyncio.run(closed_loop(url, bodies, clients, 20.0))
        rate = args.load * capacity
        results["capacity_rps"], results["rate_rps"] = round(capacity, 1), round(rate, 1)
        print(f"capacity {capacity:.1f} req/s; soaking at {rate:.1f} req/s for {args.minutes:g} min", flush=True)
        events = [
            (0.3, "weights 50/50 -> 60/40", change("PUT", "/v1/experiments/soak",
                                                   {"arms": {"linear": 0.6, "transformer": 0.4}})),
            (0.6, "rollout linear:v2 at 10%", change("POST", "/v1/rollout", {"version": "linear:v2",
                                                                            "canary_percent": 10})),
            (0.8, "rollback", change("POST", "/v1/rollback", {})),
        ]  # fmt: skip
        run = asyncio.run(soak(url, bodies, rate, args.minutes, events))
        time.sleep(3.0)  # the buffers' last records reach the log
    finally:
        launch.stop(running.started_ray)
    acked = sum(s[2] == 200 for s in run["samples"])
    logged = open_event_log(f"sqlite:///{home.event_log}").stats().predictions
    results["per_minute"] = per_minute(run["samples"], args.minutes)
    results["changes"] = run["changes"]
    results["memory"] = memory_growth(run["memory"])
    results["memory_series"] = memory_series(run["memory"])
    total = len(run["samples"])
    errors = sum(s[2] != 200 for s in run["samples"])
    ok_lat = np.array([s[1] for s in run["samples"] if s[1] is not None])
    first, last = results["per_minute"][0], results["per_minute"][-1]
    results["summary"] = {
        "requests": total,
        "error_rate": round(errors / max(1, total), 5),
        "p99_ms": round(float(np.percentile(ok_lat, 99)), 1) if len(ok_lat) else None,
        "p99_last_minute_vs_first": round(last["p99_ms"] / first["p99_ms"], 2) if first["p99_ms"] else None,
        # Every answered email has its record: the log holds the capacity phase's and the soak's.
        "acknowledged": capacity_acked + acked,
        "log_count": logged,
        "log_equals_acknowledged": logged == capacity_acked + acked,
        "memory_within_bound": all(r["within_bound"] for r in results["memory"].values()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("summary", "changes", "per_minute")}, indent=1))
    print(json.dumps(results["memory"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
