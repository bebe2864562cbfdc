"""Set-up shared by the Ray tests that need the real Serve app: tiny registered models and one running app."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from registered import register_models  # noqa: F401  (the Serve tests' models, re-exported)

from experiments.config import ExperimentConfig
from serving.config import Home, ServingConfig, load_queues
from serving.mail.text import PREPROCESSING_VERSION, model_text
from serving.models.registry import ModelRegistry
from serving.ops import launch
from training.config import LinearConfig
from training.linear import fit_linear
from training.synth import generate

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
QUEUES = load_queues(REPO / "configs" / "queues.yaml")
TOKEN = "test-admin-token-0123456789"  # set by the session's Ray fixture (tests/ray/conftest.py): holder "admin"
CLIENT_TOKEN = "test-gateway-token-0123456789"  # holder "gateway", role client (the home's secrets file)
AGENT_TOKEN = "test-agent-ana-token-0123456789"  # holder "ana", role agent
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
AS_CLIENT = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
AS_AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def write_secrets(home: Home, **extra: str) -> None:
    """The home's secrets file: a mail gateway (client) and an agent; the admin token comes from the environment;
    `extra`: other fields (user_salt, event_log_url)."""
    import hashlib

    import yaml

    def spec(role: str, token: str) -> dict[str, str]:
        return {"role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}

    home.root.mkdir(parents=True, exist_ok=True)
    tokens = {"gateway": spec("client", CLIENT_TOKEN), "ana": spec("agent", AGENT_TOKEN)}
    (home.root / "secrets.yaml").write_text(yaml.safe_dump({"tokens": tokens, **extra}))


def audit_records(home: Home) -> list[dict[str, Any]]:
    """The audit log of the app's event store (the home's SQLite file), oldest first."""
    from serving.store.eventlog import open_event_log

    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        return store.audit_records()
    finally:
        store.close()


def saved_rollout(home: Home) -> Any:
    """The rollout saved in the app's event store, or None."""
    from experiments.rollout import state as rollout_state
    from serving.store.eventlog import open_event_log

    store = open_event_log(f"sqlite:///{home.event_log}")
    try:
        return rollout_state.load(store)
    finally:
        store.close()


def register_linear(
    home: Home, seed: int, *, rows: int = 1200, rename: tuple[str, str] | None = None, drop: str | None = None
) -> str:
    """Another linear version trained on synthetic mail, child of linear:v1; `rename` relabels one queue (a label
    set that is not the taxonomy's), `drop` leaves one out (a model that can never route there). Returns its version
    id ("v2"...)."""
    frame = generate(rows, seed=seed)
    if rename is not None:
        frame["queue"] = frame["queue"].replace(*rename)
    if drop is not None:
        frame = frame[frame["queue"] != drop]
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    model = fit_linear(texts, frame["queue"].tolist(), LinearConfig(n_jobs=1))
    meta = ModelRegistry(home.registry).register(
        "linear", model.save, kind="linear", labels=model.labels, preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint="test", metrics={}, params={}, parent="linear:v1",
    )  # fmt: skip
    return meta.version


def corrupt_version(home: Home, version: str) -> None:
    """Garbage over the model file of a registered linear version: its checksum in meta.json no longer matches."""
    import json

    folder = home.registry / "linear" / version
    files = json.loads((folder / "meta.json").read_text())["files"]
    biggest = max(files, key=lambda rel: (folder / rel).stat().st_size)
    (folder / biggest).write_bytes(b"not a model" * 100)


def small_serving_config(**overrides: Any) -> ServingConfig:
    """Small replicas and a short flush interval, so tests see their records quickly."""
    data: dict[str, Any] = {
        "ingress": {"num_replicas": 2, "num_cpus": 0.1},
        "linear": {"num_cpus": 0.1},
        "transformer": {"num_cpus": 0.1, "max_batch_size": 8},
        "model_timeout_s": 1.0,
        "event_log": {"flush_interval_ms": 20},
    }
    data.update(overrides)
    return ServingConfig.model_validate(data)


def two_arm_experiment(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "name": "t-exp",
        "salt": "t-salt",
        "arms": {
            "linear": {"model": "linear", "weight": 0.5},
            "transformer": {"model": "transformer", "weight": 0.5},
        },
        "holdout_arm": "linear",
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@contextmanager
def running_app(
    home: Home, port: int, serving: ServingConfig, experiment: ExperimentConfig, secrets: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Deploy the app on the session's Ray, yield its URL, home and an HTTP client (with the admin token, which may
    do everything); shut Serve down after. `secrets`: more fields of the home's secrets file."""
    assert os.environ["MAILROUTE_ADMIN_TOKEN"] == TOKEN
    write_secrets(home, **(secrets or {}))
    running = launch.start(home, QUEUES, serving, experiment, port=port)
    client = httpx.Client(base_url=running.url, timeout=30, headers=ADMIN)
    try:
        yield {"url": running.url, "home": home, "client": client, "proxy": running.proxy, "serving": serving,
               "experiment": experiment}  # fmt: skip
    finally:
        client.close()
        from ray import serve

        serve.shutdown()


def wait_for(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 30.0, every_s: float = 0.2) -> T:
    """Poll `read` until `ok` holds or `timeout_s` passes; the last value either way (the caller asserts on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


_LOOP: Any = None


def on_driver_loop(coro: Any) -> Any:
    """Run a coroutine that uses Serve handles on one event loop kept for the whole test session: in Serve's
    throughput mode a handle (and the router it shares) stays bound to the loop it first ran on."""
    import asyncio
    import threading

    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="serve-handles", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _LOOP).result(timeout=120)


def set_fault(arm: str, fault: str | None) -> None:
    """Inject a fault into every replica of an arm ('error', 'hang', 'nan'; None clears it)."""
    from ray import serve

    from serving.ops.apps import arm_app, arm_deployment

    async def call() -> None:
        handle = serve.get_deployment_handle(arm_deployment(arm), arm_app(arm))
        await handle.broadcast("set_fault", fault).results_async()

    on_driver_loop(call())
