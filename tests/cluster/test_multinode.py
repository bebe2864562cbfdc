"""mailroute on a real two-node Ray cluster (tests/cluster/multinode.py, run in a process of its own, apart from the
suite's shared Ray): router replicas on both nodes, the arms on the worker node, Serve's one proxy on the head;
routing, feedback, a weight change and a retrain through `RAY_ADDRESS`, unchanged; Ray Train's workers on both nodes;
one PostgreSQL store and one registry shared by all; both nodes' logs and metrics in what ops read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1600)]  # the fixture runs it all
SCRIPT = Path(__file__).with_name("multinode.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("multinode")
    done = subprocess.run([sys.executable, str(SCRIPT), str(work)], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def test_replicas_are_placed_on_both_nodes_and_the_proxy_on_the_head(run: dict) -> None:
    assert run["nodes"] == 2
    assert len(run["router_nodes"]) == 2  # one router replica on each node (router_node: 1 on each)
    workers = set(run["router_nodes"]) - {run["head"]}
    assert run["arm_nodes"] == sorted(workers)  # the arms only where arm_node is offered: the worker
    assert run["proxy_nodes"] == [run["head"]]  # HeadOnly


def test_one_nodes_sqlite_file_is_refused_on_two_nodes(run: dict) -> None:
    refused = run["sqlite_refused"]
    assert refused["rc"] != 0
    last = refused["err"].strip().splitlines()[-1]
    assert "2 nodes" in last and "MAILROUTE_EVENT_LOG_URL" in last and "Traceback" not in refused["err"]


def test_routing_feedback_and_a_weight_change_work_across_nodes(run: dict) -> None:
    assert run["replay"]["rc"] == 0, run["replay"]["err"]
    assert run["set_weights"]["rc"] == 0, run["set_weights"]["err"]
    assert run["weights"] == {"linear": 0.7, "transformer": 0.3}
    assert run["predictions"] >= 300 + 20 + run["fed"]  # the replay, the fault drill, the training feedback
    assert "experiment" in run["audit_kinds"]  # the change, audited in the shared store


def test_both_nodes_logs_and_metrics_reach_what_ops_read(run: dict) -> None:
    # The worker's arm and the routers' warnings about it, in the shared store the dashboard reads.
    assert {"arm-linear", "router"} <= set(run["log_components"])
    assert run["metrics"]["status"] == 200  # every router replica (both nodes) answered the broadcast
    routed = [line for line in run["metrics"]["text"].splitlines() if line.startswith("mailroute_requests_total")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in routed) >= 320


def test_a_retrain_runs_ray_train_workers_on_both_nodes(run: dict) -> None:
    assert run["retrain"]["rc"] in (0, 3), run["retrain"]["err"]  # the gate decides; either way it trained
    assert "Ray Train, 2 epochs from the champion's weights (transformer:v1)" in run["retrain"]["err"]
    assert "transformer: candidate vs champion transformer:v1" in run["retrain"]["out"]  # compared on held-out mail
    assert len(run["train_nodes"]) == 2, run["train_nodes"]


def test_the_experiment_report_reads_the_shared_store(run: dict) -> None:
    assert run["report"]["rc"] == 0, run["report"]["err"]
    report = json.loads(run["report"]["out"])
    assert {"linear", "transformer"} <= {arm["arm"] for arm in report["arms"]}
