"""Monitoring benchmark: one `mailroute monitor run` over a 20,000-email window of a SQLite event log.

    .venv/bin/python benchmarks/bench_monitoring.py [--n 20000] [--baseline-n 2000] [--scratch /tmp/mr-bench-monitoring]

Goal (issue 7): under 30 s on 2 cores. Set-up, not timed: a linear version trained through the real pipeline on
generated mail (its 2,000-row reference sample stored with it), then the window routed in process by that version
over two arms, 30% with feedback, written into a SQLite event log. Timed: the whole run (read the window, three
scopes of drift and quality reports, HTML + JSON, workspace snapshots, verdict rows, retention), once in a fresh
process state (Evidently imported by the run itself, as `mailroute monitor run` pays it) and once warm (as the
scheduler actor runs it). The baseline measured in the same run is the same warm run on a 2,000-email window.
Writes benchmarks/results/monitoring.json. Scratch data goes under --scratch, never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _setup(scratch: Path, n: int, baseline_n: int) -> dict[str, Any]:
    from monitoring.simulate import Arm, fill, route_frame
    from serving.config import Home, load_serving
    from serving.models.predictor import load_version
    from serving.models.registry import open_registry
    from serving.store.sqlite import SQLiteEventLog
    from training.config import load_training
    from training.pipeline import DataSpec, train_linear
    from training.synth import generate

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    home = Home(scratch / "home")
    data = scratch / "train.jsonl"
    generate(10_000, seed=1).to_json(data, orient="records", lines=True)
    cfg = load_training(REPO / "configs" / "training.yaml")
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"holdout_fraction": 0.4})})
    started = time.perf_counter()
    meta = train_linear(DataSpec(data, label_col="queue"), cfg, home).meta
    train_s = time.perf_counter() - started
    predictor, meta = load_version(open_registry(home), f"linear:{meta.version}")
    arms = [Arm(name, predictor, "linear", meta.version) for name in ("linear", "challenger")]
    policy = load_serving(REPO / "configs" / "serving.yaml").policy
    end = datetime(2026, 1, 10, tzinfo=UTC)
    started = time.perf_counter()
    # The big window: the day before `end`; the baseline's: the day before that (same log, same store size).
    for size, day_end, seed in ((n, end, 7), (baseline_n, end - timedelta(days=1), 8)):
        predictions, feedback = route_frame(
            generate(size, seed=seed, drift=0.3), arms, start=day_end - timedelta(hours=24),
            span=timedelta(hours=23), policy=policy, seed=seed,
        )  # fmt: skip
        store = SQLiteEventLog(str(home.event_log))
        fill(store, predictions, feedback)
        store.close()
    return {"home": home, "end": end, "train_s": train_s, "fill_s": time.perf_counter() - started}


def _run(home: Any, end: datetime) -> dict[str, Any]:
    from monitoring.config import load_monitoring
    from monitoring.job import run_monitoring
    from serving.config import load_serving

    started = time.perf_counter()
    result = run_monitoring(
        home, load_monitoring(REPO / "configs" / "monitoring.yaml"), load_serving(REPO / "configs" / "serving.yaml"),
        window=timedelta(hours=24), end=end, arms=("linear", "challenger"),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    window = next(v for v in result.verdicts if v.check == "window")
    return {
        "seconds": round(seconds, 2),
        "emails": int(window.score or 0),
        "checks": len(result.verdicts),
        "alarms": [f"{v.scope}/{v.check}" for v in result.alarms],
        "reports": len(result.reports),
        "stages_s": {k: round(v, 2) for k, v in result.timings.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--baseline-n", type=int, default=2_000)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/mr-bench-monitoring"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    setup = _setup(args.scratch, args.n, args.baseline_n)
    print(f"set-up: trained in {setup['train_s']:.1f} s, routed and logged {args.n + args.baseline_n} emails in "
          f"{setup['fill_s']:.1f} s", flush=True)  # fmt: skip
    cold = _run(setup["home"], setup["end"])
    print(f"{args.n}-email window, cold (imports Evidently): {json.dumps(cold)}", flush=True)
    warm = _run(setup["home"], setup["end"])
    print(f"{args.n}-email window, warm: {json.dumps(warm)}", flush=True)
    baseline = _run(setup["home"], setup["end"] - timedelta(days=1))
    print(f"baseline, {args.baseline_n}-email window, warm: {json.dumps(baseline)}", flush=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "goal": "monitoring run on a 20,000-email window under 30 s on 2 cores",
        "window_cold": cold,
        "window_warm": warm,
        "baseline_warm": baseline,
        "ratio_warm_to_baseline": round(warm["seconds"] / max(baseline["seconds"], 1e-9), 2),
        "met": cold["seconds"] < 30,
    }
    print("ratio (20k warm / 2k warm):", results["ratio_warm_to_baseline"], "; goal met:", results["met"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
