"""One local Ray instance for every Ray test of the session: starting one costs seconds and a gigabyte.

Four logical CPUs on a two-core machine: the Train workers and Ray Data's tasks each hold one, and too few
logical CPUs make a trainer wait forever instead of failing. Ray starts with the environment `mailroute serve`
gives it (the HAProxy ingress among it), so the Serve tests exercise the shipped proxy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from serving.ops.ports import free_port


@pytest.fixture(scope="session")
def serve_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(serve_port: int) -> Iterator[None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import ray

    from serving.config import ServingConfig
    from serving.ops.launch import protect_ray_token, ray_env

    if ray.is_initialized():  # another fixture or test already holds one: share it, leave it alone
        yield
        return
    os.environ.update(ray_env(ServingConfig(), serve_port))
    # The Serve tests' admin token (tests/ray/serve_app.py), read by the router replicas: Ray's worker processes
    # inherit this environment.
    os.environ["MAILROUTE_ADMIN_TOKEN"] = "test-admin-token-0123456789"
    ray.init(
        num_cpus=4,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    protect_ray_token()
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
