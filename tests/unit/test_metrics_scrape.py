"""`/metrics` never shows one replica's counts as the deployment's: a failed broadcast is a 503 (a gap in the
scrape), not a counter that seems to reset (issue 9: the old fallback served this replica's counts)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from serving.api import ApiError
from serving.metrics import RouterMetrics

pytestmark = pytest.mark.unit


def test_metrics_answer_503_when_a_replica_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import app as app_module

    class Away:
        def broadcast(self, method: str) -> Any:
            raise RuntimeError("a replica is being replaced")

    monkeypatch.setattr(app_module.serve, "get_deployment_handle", lambda *args, **kwargs: Away())
    metrics = RouterMetrics()
    metrics.record("linear", "billing", 3.0, None, "linear:v1")
    router = SimpleNamespace(core=SimpleNamespace(metrics=metrics, experiment=SimpleNamespace(name="e")))
    with pytest.raises(ApiError) as err:
        asyncio.run(app_module.Router.metrics(router))
    assert err.value.status == 503 and err.value.retry_after_s
