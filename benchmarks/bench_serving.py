"""Serving benchmark: throughput and latency through the whole stack (HTTP -> proxy -> router -> arm), against
baselines measured in the same run.

    .venv/bin/python benchmarks/bench_serving.py [--seconds 8]

- linear arm at concurrency 1/8/32 vs the same predictor + decision policy behind a bare single-process
  FastAPI/uvicorn app (goal: >= 0.8 of the bare app's throughput at concurrency 8);
- transformer arm at concurrency 1/8/32 vs the raw in-process batched inference rate (batch 16) with the same
  thread count (goal: >= 0.8 at concurrency 32). The transformer is MiniLM with an untrained head: speed does not
  depend on the head's weights.
- the linear model as an arm inside the router replicas (`in_router_arms`) at concurrency 1/8/32, same bare app
  (goal: >= 0.8 at concurrency 8);
- a backlog: 100,000 emails through POST /v1/route/batch (1,000 per call, 2 calls in flight) to the in-router and
  the deployed linear arm vs the in-process batched predictor (parsing, cleaning, the model and the policy on
  1,000 emails per call; goal: >= 0.8 of it);
- nothing lost: prediction records in the event log == successful responses.

Load comes from an aiohttp client on loopback, bounded in requests and time. Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.ops.ports import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOKEN = "bench-admin-token-0123456789"
ARMS = ("linear", "inrouter", "transformer")  # inrouter: the linear model inside the router replicas


async def load(
    url: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    max_requests = 20_000
    counter = iter(range(max_requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            async with session.post(url, json=bodies[i % len(bodies)], headers=headers) as response:
                await response.read()
                if response.status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up: one request per connection
        await asyncio.gather(*(session.post(url, json=bodies[0], headers=headers) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    arr = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        **{f"p{q}_ms": round(float(np.percentile(arr, q)), 2) for q in (50, 95, 99)},
    }


def make_bodies(n: int) -> list[dict[str, Any]]:
    from training.synth import generate

    frame = generate(n, seed=77)
    return [
        {"user_id": str(u), "subject": s, "body": b}
        for u, s, b in zip(frame["user_id"], frame["subject"], frame["body"], strict=True)
    ]


def build_registry(home: Any) -> None:
    from serving.config import load_queues
    from serving.mail.text import PREPROCESSING_VERSION, model_text
    from serving.models.registry import open_registry
    from training.config import LinearConfig
    from training.linear import fit_linear
    from training.synth import generate
    from training.torch_loop import build_model, export_model, load_tokenizer
    from training.transformer_config import TransformerConfig

    registry = open_registry(home)
    frame = generate(10_000, seed=5)
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    linear = fit_linear(texts, frame["queue"].tolist(), LinearConfig(n_jobs=1))
    common: dict[str, Any] = {
        "preprocessing_version": PREPROCESSING_VERSION,
        "data_fingerprint": "bench",
        "metrics": {},
        "params": {},
    }
    registry.register("linear", linear.save, kind="linear", labels=linear.labels, **common)
    labels = load_queues(REPO / "configs" / "queues.yaml").names
    cfg = TransformerConfig()
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, labels, len(tokenizer))

    def write(folder: Path) -> None:
        export_model(model, tokenizer, labels, cfg, folder)

    registry.register("transformer", write, kind="transformer", labels=labels, **common)


def raw_transformer_rate(home: Any, texts: list[str], seconds: float) -> float:
    import torch

    from serving.models.predictor import load_version
    from serving.models.registry import open_registry

    torch.set_num_threads(1)
    predictor, _ = load_version(open_registry(home), "transformer")
    predictor.predict_proba(texts[:16])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict_proba(texts[done % (len(texts) - 16) : done % (len(texts) - 16) + 16])
        done += 16
    return done / (time.perf_counter() - started)


def raw_batched_rate(home: Any, bodies: list[dict[str, Any]], total: int, batch: int) -> float:
    """Emails per second through the in-process pipeline a backlog call runs per email: parse the request, clean
    the text, score (in batches of `batch`) and decide."""
    from serving.api import RouteRequest, email_from_request, text_for_model
    from serving.config import ServingConfig, load_queues
    from serving.models.predictor import load_version
    from serving.models.registry import open_registry
    from serving.policy import decide

    predictor, _ = load_version(open_registry(home), "linear")
    policy, triage = ServingConfig().policy, load_queues(REPO / "configs" / "queues.yaml").triage_queue
    started = time.perf_counter()
    for start in range(0, total, batch):
        chunk = [bodies[i % len(bodies)] for i in range(start, min(start + batch, total))]
        texts = [text_for_model(email_from_request(RouteRequest.model_validate(b), 262_144)) for b in chunk]
        for row in predictor.predict_proba(texts):
            decide(predictor.labels, row, policy, triage)
    return total / (time.perf_counter() - started)


async def backlog(url: str, bodies: list[dict[str, Any]], total: int, batch: int, headers: dict[str, str]) -> float:
    """Emails per second for `total` emails sent as batches of `batch`, two calls in flight (a gateway catching up)."""
    import aiohttp

    calls = [[bodies[i % len(bodies)] for i in range(start, min(start + batch, total))]
             for start in range(0, total, batch)]  # fmt: skip
    pending = iter(calls)
    routed = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal routed
        for call in pending:
            async with session.post(url, json=call, headers=headers) as response:
                items = await response.json()
                assert response.status == 200, items
                routed += sum(1 for item in items if "error" not in item)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(2)))
        elapsed = time.perf_counter() - started
    assert routed == total, f"{total - routed} emails of the backlog were not routed"
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per cell")
    parser.add_argument("--backlog", type=int, default=100_000, help="emails in the backlog cells")
    args = parser.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "MAILROUTE_ADMIN_TOKEN": TOKEN})

    from experiments.config import ExperimentConfig
    from serving.config import Home, ServingConfig, load_queues
    from serving.mail.text import model_text
    from serving.ops import launch
    from serving.store.eventlog import open_event_log

    home = Home(Path(tempfile.mkdtemp(prefix="mr-bench-")))
    build_registry(home)
    bodies = make_bodies(2000)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds_per_cell": args.seconds,
    }

    # Baselines: the bare app (one uvicorn process), then the raw transformer rate; nothing else runs meanwhile.
    port = free_port()
    env = {**os.environ, "MAILROUTE_HOME": str(home.root), "PYTHONPATH": str(REPO)}
    bare = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_app.py"), str(port)], env=env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        results["bare_linear"] = [
            asyncio.run(load(f"http://127.0.0.1:{port}/v1/route", bodies, c, args.seconds, {})) for c in (1, 8, 32)
        ]
    finally:
        bare.terminate()
        bare.wait()
    print("bare linear:", results["bare_linear"], flush=True)
    texts = [model_text(b["subject"], b["body"]) for b in bodies]
    results["raw_transformer_batch16_per_s"] = round(raw_transformer_rate(home, texts, args.seconds), 1)
    print("raw transformer rate:", results["raw_transformer_batch16_per_s"], flush=True)
    results["raw_batched_linear_per_s"] = round(raw_batched_rate(home, bodies, min(args.backlog, 20_000), 1000), 1)
    print("raw batched linear rate (parse, clean, model, policy):", results["raw_batched_linear_per_s"], flush=True)

    serving = ServingConfig.model_validate(
        {"linear": {"num_cpus": 0.5}, "transformer": {"num_cpus": 1.0, "threads": 1}, "model_timeout_s": 10.0,
         "in_router_arms": ["inrouter"]}
    )  # fmt: skip
    experiment = ExperimentConfig.model_validate(
        {"name": "bench", "salt": "bench", "holdout_arm": "linear",
         "arms": {"linear": {"model": "linear", "weight": 0.4}, "inrouter": {"model": "linear", "weight": 0.3},
                  "transformer": {"model": "transformer", "weight": 0.3}}}
    )  # fmt: skip
    running = launch.start(home, load_queues(REPO / "configs" / "queues.yaml"), serving, experiment, port=free_port())
    results["proxy"] = running.proxy
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for arm in ARMS:
            arm_bodies = [{**b, "force_arm": arm} for b in bodies]
            url = f"{running.url}/v1/route"
            results[f"stack_{arm}"] = [asyncio.run(load(url, arm_bodies, c, args.seconds, auth)) for c in (1, 8, 32)]
            print(f"stack {arm}:", results[f"stack_{arm}"], flush=True)
        for arm in ("inrouter", "linear"):
            arm_bodies = [{**b, "force_arm": arm} for b in bodies]
            rate = asyncio.run(backlog(f"{running.url}/v1/route/batch", arm_bodies, args.backlog, 1000, auth))
            results[f"backlog_{arm}_per_s"] = round(rate, 1)
            print(f"backlog of {args.backlog} emails, {arm} arm: {rate:.0f} emails/s", flush=True)
    finally:
        launch.stop(running.started_ray)  # replicas flush their event-log buffers on shutdown
    ok = sum(cell["requests"] + cell["concurrency"] for arm in ARMS for cell in results[f"stack_{arm}"])
    ok += 2 * args.backlog
    logged = open_event_log(f"sqlite:///{home.event_log}").stats().predictions
    results["records_vs_successes"] = {"logged": logged, "successful_responses_incl_warmup": ok}

    lin8 = next(c for c in results["stack_linear"] if c["concurrency"] == 8)["rps"]
    in8 = next(c for c in results["stack_inrouter"] if c["concurrency"] == 8)["rps"]
    bare8 = next(c for c in results["bare_linear"] if c["concurrency"] == 8)["rps"]
    tr32 = next(c for c in results["stack_transformer"] if c["concurrency"] == 32)["rps"]
    raw = results["raw_batched_linear_per_s"]
    results["ratios"] = {
        "linear_c8_vs_bare_app": round(lin8 / bare8, 3),
        "inrouter_c8_vs_bare_app": round(in8 / bare8, 3),
        "backlog_inrouter_vs_raw_batched": round(results["backlog_inrouter_per_s"] / raw, 3),
        "backlog_linear_vs_raw_batched": round(results["backlog_linear_per_s"] / raw, 3),
        "transformer_c32_vs_raw_batched": round(tr32 / results["raw_transformer_batch16_per_s"], 3),
        "records_equal_successes": logged == ok,
    }
    print("ratios:", json.dumps(results["ratios"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS / 'serving.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
