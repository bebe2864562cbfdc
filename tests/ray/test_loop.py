"""The loop end to end on small data, through the demo's own driver (`monitoring.demo.run` on its QUICK plan): a real
`mailroute serve` with its local Ray on a fast clock, customers and agents over HTTP, drift injected, the scheduled
monitoring job alarms, `mailroute retrain` registers a candidate that scores higher than the old champion on the
drifted emails, `mailroute rollout start` canaries it and the rollout job promotes it by the rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_app import REPO, saved_rollout

from monitoring.demo.plan import QUICK
from monitoring.demo.run import DemoError, run_demo
from serving import clock
from serving.config import Home
from serving.models.registry import ModelRegistry
from serving.ops.ports import free_port
from serving.store.eventlog import open_event_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_drift_is_caught_the_model_retrained_canaried_and_promoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Home(tmp_path / "demo")
    code = run_demo(home, port=free_port(), wait=False, plan=QUICK, configs_from=REPO / "configs")
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert clock.ENV not in os.environ  # the demo's fast clock does not outlive it
    # The scheduled monitoring job (nobody called it) alarmed on the drifted mail.
    store = open_event_log(f"sqlite:///{home.event_log}")
    assert any(v.alarm for v in store.verdicts(job="drift", limit=2000))
    # The retrained candidate passed the gate it recorded (a metric on a held-out slice, by the margin), was no worse
    # on the recent (drifted) emails, and became champion. (Found in CI: on the recent emails alone the two can tie.)
    registry = ModelRegistry(home.registry)
    v2 = registry.get("linear:v2", verify=True)
    gate, evaluation = v2.meta.metrics["gate"], v2.meta.metrics["evaluation"]
    held = evaluation[gate["slice"]]
    assert held["candidate"][gate["metric"]] >= held["champion"][gate["metric"]] + gate["margin"] - 1e-9, gate
    assert evaluation["recent"]["candidate"]["accuracy"] >= evaluation["recent"]["champion"]["accuracy"], evaluation
    assert v2.stage == "champion" and v2.meta.parent == "linear:v1"
    rs = saved_rollout(home)
    assert rs is not None and rs.status == "promoted"
    assert rs.history[0].action == "start" and rs.history[-1].action == "promote"
    assert {s.actor for s in rs.history[1:]} == {"rollout-job"}  # widened and promoted by the rule, not by hand
    # After the promotion the arm serves the candidate: emails answered by linear:v2 on the linear arm.
    frame = store.predictions_frame()
    after = frame[frame["ts"] > rs.history[-1].ts]
    assert (after[after["arm"] == "linear"]["model_version"] == "v2").mean() > 0.9
    # The summary came out, with its phases and the lineage.
    assert "== [8/8] summary" in out and "after the rollout's promote" in out and "parent linear:v1" in out
    # A second run refuses to overwrite the first without --reset, and anything not a demo at all.
    with pytest.raises(DemoError, match="--reset"):
        run_demo(home, port=free_port(), wait=False, plan=QUICK, configs_from=REPO / "configs")
    other = tmp_path / "not-a-demo"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DemoError, match="something other than a demo"):
        run_demo(Home(other), port=free_port(), wait=False, plan=QUICK, reset=True, configs_from=REPO / "configs")
    assert (other / "keep.txt").read_text() == "mine"
