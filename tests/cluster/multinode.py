"""A two-node Ray cluster on this machine, in a process of its own: `mailroute serve`, the scheduled jobs, a weight
change and `mailroute retrain` run against it through `RAY_ADDRESS`, unchanged, sharing one PostgreSQL store and one
registry (a `file://` URI every node reads).

Ray's own `ray.cluster_utils.Cluster` starts a head node and a worker node (each a raylet with its own resources).
Custom resources place the replicas: `router_node` on both nodes (two router replicas, one on each), `arm_node` on
the worker only (the arms); Serve's proxy stays on the head (`proxy_location: HeadOnly`). Training spreads its two
Ray Train workers across the nodes (`placement_strategy: SPREAD`). What happened is printed as one JSON object on
the last line of stdout, for tests/cluster/test_multinode.py to check.

    .venv/bin/python tests/cluster/multinode.py WORKDIR
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.ops.ports import free_port

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(TESTS / "ray")]

ADMIN = "multinode-admin-token-0123456789"
MAILROUTE = [sys.executable, "-m", "serving.cli"]


def _configs(work: Path, port: int) -> Path:
    folder = work / "configs"
    shutil.copytree(REPO / "configs", folder)
    serving = yaml.safe_load((folder / "serving.yaml").read_text())
    serving.update(port=port, proxy_location="HeadOnly")
    serving["ingress"].update(num_replicas=2, resources={"router_node": 1})
    serving["linear"].update(resources={"arm_node": 1})
    serving["transformer"].update(resources={"arm_node": 1})
    (folder / "serving.yaml").write_text(yaml.safe_dump(serving))
    training = yaml.safe_load((folder / "training.yaml").read_text())
    training["transformer"].update(tiny=True, max_length=64, epochs=1, num_workers=2, placement_strategy="SPREAD")
    (folder / "training.yaml").write_text(yaml.safe_dump(training))
    return folder


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILROUTE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@contextmanager
def _serving(args: list[str], env: dict[str, str], url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([*MAILROUTE, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mailroute serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError(f"mailroute serve was not ready in 300 s: {log.read_text()[-3000:]}")
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _actor_nodes(prefix: str) -> dict[str, set[str]]:
    """Actor class name -> the nodes its actors ran on (dead ones too), for classes starting with `prefix`. Read
    from the GCS's actor table, which needs no dashboard."""
    import ray._private.state as ray_state

    found: dict[str, set[str]] = {}
    for actor in ray_state.state.actor_table(None).values():
        name = str(actor.get("ActorClassName") or "")
        node = (actor.get("Address") or {}).get("NodeID")
        if name.startswith(prefix) and node:
            found.setdefault(name, set()).add(node)
    return found


def _feedback_for_training(url: str, home: Path) -> int:
    """More judged transformer emails than a replay of a few hundred gives, written into the shared store the way
    the routers write them (the retrain reads feedback from there, whichever node routed it)."""
    from monitoring.simulate import Arm, fill, route_frame
    from serving.config import Home, PolicyConfig
    from serving.models.predictor import load_version
    from serving.models.registry import open_registry
    from serving.store.eventlog import open_event_log
    from training.synth import generate

    predictor, meta = load_version(open_registry(Home(home)), "transformer:champion")
    preds, fb = route_frame(generate(700, seed=91), [Arm("transformer", predictor, "transformer", meta.version)],
                            start=datetime.now(UTC) - timedelta(days=1), span=timedelta(hours=12),
                            policy=PolicyConfig(), feedback_share=1.0, feedback_source="audit",
                            experiment="linear-vs-minilm")  # fmt: skip
    store = open_event_log(url)
    try:
        fill(store, preds, fb)
    finally:
        store.close()
    return len(fb)


def main(work: Path) -> dict[str, Any]:
    import pg_server
    from serve_app import register_models

    from serving.config import Home

    result: dict[str, Any] = {}
    reason = pg_server.install()
    if reason:
        return {"skip": reason}
    pg = pg_server.PostgresServer().start()
    try:
        store_url = pg.fresh_url()
        env = {
            **os.environ,
            "MAILROUTE_EVENT_LOG_URL": store_url,
            "MAILROUTE_USER_SALT": "multinode-salt-0123456789abcdef",
            "MAILROUTE_REGISTRY_URI": f"file://{work / 'shared' / 'registry'}",
            "MAILROUTE_ADMIN_TOKEN": ADMIN,
            "MAILROUTE_TOKEN": ADMIN,
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        os.environ.update(env)  # the nodes Cluster starts inherit it: every node has the same secrets, as on a cluster
        home = work / "home"
        register_models(Home(home))  # into the shared registry (MAILROUTE_REGISTRY_URI)
        port = free_port()
        configs = _configs(work, port)
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 3, "resources": {"router_node": 1}, "object_store_memory": 200 * 2**20,
                            "include_dashboard": False},
        )  # fmt: skip
        try:
            cluster.add_node(num_cpus=5, resources={"router_node": 1, "arm_node": 2}, object_store_memory=200 * 2**20)
            cluster.wait_for_nodes()
            env["RAY_ADDRESS"] = cluster.address
            common = ["--home", str(home), "--config-dir", str(configs)]
            url = f"http://127.0.0.1:{port}"
            import ray

            ray.init(address=cluster.address, log_to_driver=False)
            head = ray.get_runtime_context().get_node_id()
            result["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
            # One node's SQLite file on a cluster of two would split the log: refused before Serve starts.
            local = {k: v for k, v in env.items() if k != "MAILROUTE_EVENT_LOG_URL"}
            refused = _run([*common, "serve", "--port", str(port), "--exit-after-start"], local, timeout=300)
            result["sqlite_refused"] = {"rc": refused.returncode, "err": refused.stderr[-2000:]}
            with _serving([*common, "serve", "--port", str(port)], env, url, work / "serve.log"):
                routers = _actor_nodes("ServeReplica:mailroute:Router")
                arms = _actor_nodes("ServeReplica:mailroute-arm-")
                proxies = _actor_nodes("ProxyActor")
                result["router_nodes"] = sorted({n for v in routers.values() for n in v})
                result["arm_nodes"] = sorted({n for v in arms.values() for n in v})
                result["proxy_nodes"] = sorted({n for v in proxies.values() for n in v})
                result["head"] = head
                result["actor_classes"] = sorted(_actor_nodes(""))
                data = work / "mail.jsonl"
                synth = _run(["data", "synth", "--n", "300", "--seed", "5", "--out", str(data)], env)
                assert synth.returncode == 0, synth.stderr
                replay = _run([*common, "replay", "--data", str(data), "--label-col", "queue", "--n", "300",
                               "--feedback", "--url", url], env)  # fmt: skip
                result["replay"] = {"rc": replay.returncode, "err": replay.stderr[-2000:]}
                weights = _run([*common, "experiment", "set-weights", "linear=0.7", "transformer=0.3", "--url", url],
                               env)  # fmt: skip
                result["set_weights"] = {"rc": weights.returncode, "err": weights.stderr[-2000:]}
                from ray import serve

                arm = serve.get_deployment_handle("arm-linear", app_name="mailroute-arm-linear")
                arm.set_fault.remote("error").result()  # the worker's arm logs a warning per email it fails
                headers = {"Authorization": f"Bearer {ADMIN}"}
                for i in range(20):
                    httpx.post(f"{url}/v1/route", headers=headers, timeout=30,
                               json={"subject": "Invoice", "body": f"please resend invoice {i}",
                                     "user_id": f"user{i}@example.com", "email_id": f"fault-{i}"})  # fmt: skip
                arm.set_fault.remote(None).result()
                metrics = httpx.get(f"{url}/metrics", timeout=30)
                result["metrics"] = {"status": metrics.status_code, "text": metrics.text}
                experiment = httpx.get(f"{url}/v1/experiments", headers=headers, timeout=30).json()
                result["weights"] = {a: s["weight"] for a, s in experiment["experiment"]["arms"].items()}
            result["fed"] = _feedback_for_training(store_url, home)
            retrain = _run([*common, "retrain", "--model", "transformer"], env, timeout=900)
            result["retrain"] = {"rc": retrain.returncode, "out": retrain.stdout[-4000:], "err": retrain.stderr[-3000:]}
            result["train_nodes"] = sorted({n for v in _actor_nodes("RayTrainWorker").values() for n in v})
            report = _run([*common, "experiment", "report", "--json"], env)
            result["report"] = {"rc": report.returncode, "out": report.stdout, "err": report.stderr[-2000:]}
            from serving.store.eventlog import open_event_log

            store = open_event_log(store_url)
            try:
                result["log_components"] = sorted({r.component for r in store.logs(min_level="WARNING", limit=5000)})
                result["predictions"] = store.stats().predictions
                result["audit_kinds"] = [r["kind"] for r in store.audit_records()]
            finally:
                store.close()
            ray.shutdown()
        finally:
            cluster.shutdown()
    finally:
        pg.stop()
    return result


if __name__ == "__main__":
    out = main(Path(sys.argv[1]).absolute())
    print(json.dumps(out, default=str))
