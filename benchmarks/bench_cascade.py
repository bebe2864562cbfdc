"""Cascade benchmark: accuracy and CPU cost per email of the linear model, the transformer and their cascade.

    .venv/bin/python benchmarks/bench_cascade.py [--n-train 1000] [--n-val 600] [--n-test 600] [--epochs 2]

On each corpus — the project's synthetic mail (short), its long multi-paragraph mail, and Banking77's 7 queues when
../shared/data is present — the product's own jobs train the linear model (`train_linear`) and the transformer
(`train_transformer_job`, Ray Train, the shipped configs/training.yaml except `--epochs`, capped for time), register
them in a scratch home, `plan_cascade` chooses the threshold on a validation split (the most accurate within a third
of the transformer's CPU per email) and registers the cascade, and all three are scored on a test split none of them
saw, each loaded from the registry as serving loads it (one torch thread) and timed in process CPU time in batches
of 16. Goal (issue 12): the cascade at least as accurate as the
better model alone, at no more than a third of the transformer's CPU per email. Ratios are against the transformer
and the better model measured in the same run. Writes benchmarks/results/cascade.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from serving.config import Home, load_serving
from serving.models.cascade import CascadePredictor
from serving.models.predictor import load_version
from serving.models.registry import open_registry
from training.cascade import plan_cascade, register_cascade, timed_proba
from training.config import load_training
from training.pipeline import DataSpec, load_labelled, train_linear, train_transformer_job
from training.synth import generate

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"


def _split(frame: pd.DataFrame, sizes: tuple[int, int, int], seed: int) -> tuple[pd.DataFrame, ...]:
    order = np.random.default_rng(seed).permutation(len(frame))
    out, start = [], 0
    for size in sizes:
        out.append(frame.iloc[order[start : start + size]].reset_index(drop=True))
        start += size
    return tuple(out)


def corpora(n_train: int, n_val: int, n_test: int) -> dict[str, tuple[pd.DataFrame, ...]]:
    """Train, validation and test frames (subject/body/queue or text/queue) of each corpus."""
    sizes = (n_train, n_val, n_test)
    total = sum(sizes)
    out = {
        "synthetic short": _split(generate(total, seed=41), sizes, 1),
        "synthetic long": _split(generate(total, seed=42, length="long"), sizes, 2),
    }
    banking = SHARED / "banking77"
    if (banking / "train.csv").is_file():
        train = pd.read_csv(banking / "train.csv")[["text", "queue"]]
        test = pd.read_csv(banking / "test.csv")[["text", "queue"]]
        fit, val, _ = _split(train, (n_train, n_val, 0), 3)
        out["banking77 (7 queues)"] = (fit, val, test.sample(n=min(n_test, len(test)), random_state=4))
    else:
        print(f"  banking77: {banking} not found, skipped", file=sys.stderr)
    return out


def _spec(frame: pd.DataFrame, path: Path) -> DataSpec:
    frame.to_json(path, orient="records", lines=True)
    return DataSpec(path, text_col="text" if "text" in frame.columns else None, label_col="queue")


def _scored(home: Home, ref: str, spec: DataSpec) -> dict[str, Any]:
    predictor, meta = load_version(open_registry(home), ref, threads=1)
    frame = load_labelled(spec).frame
    texts, truth = [str(t) for t in frame["text"]], [str(v) for v in frame["label"]]
    predictor.predict_proba(texts[:16])  # first-call costs out of the timing, as a replica warms up
    proba, ms = timed_proba(predictor, texts)
    predicted = np.array(predictor.labels)[proba.argmax(axis=1)]
    accuracy = round(float((predicted == np.array(truth)).mean()), 4)
    row: dict[str, Any] = {"model": f"{meta.name}:{meta.version}", "n": len(texts), "accuracy": accuracy,
                           "cpu_ms": round(ms, 3)}  # fmt: skip
    if isinstance(predictor, CascadePredictor):
        row["sent_on"] = round(float(predictor.escalated(predictor.first.predict_proba(texts)).mean()), 4)
        row["threshold"] = predictor.threshold
    return row


def run_corpus(name: str, parts: tuple[pd.DataFrame, ...], folder: Path, epochs: int) -> dict[str, Any]:
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    home = Home(folder / "home")
    train, val, test = (_spec(f, folder / f"{p}.jsonl") for f, p in zip(parts, ("train", "val", "test"), strict=True))
    cfg = load_training(REPO / "configs" / "training.yaml")
    cfg = cfg.model_copy(update={"transformer": cfg.transformer.model_copy(update={"epochs": epochs})})
    started = time.perf_counter()
    train_linear(train, cfg, home)
    train_transformer_job(train, cfg, home, show_ray_logs=False, on_progress=None)
    trained_s = time.perf_counter() - started
    frame = load_labelled(val).frame
    plan, _, proba = plan_cascade(open_registry(home), "linear", "transformer", [str(t) for t in frame["text"]],
                                  [str(v) for v in frame["label"]])  # fmt: skip
    register_cascade(
        home, plan, frame, proba, load_serving(REPO / "configs" / "serving.yaml").policy.confidence_threshold
    )
    rows = {kind: _scored(home, kind, test) for kind in ("linear", "transformer", "cascade")}
    best = max(rows["linear"]["accuracy"], rows["transformer"]["accuracy"])
    cascade = rows["cascade"]
    out = {
        "train_val_test": [len(p) for p in parts],
        "train_seconds": round(trained_s, 1),
        "omp_num_threads": torch_threads,
        "validation": {
            "threshold": plan.chosen.threshold,
            "sent_on": plan.chosen.escalated,
            "accuracy": plan.chosen.accuracy,
            "reached": plan.reached,
            "linear_accuracy": plan.first_accuracy,
            "transformer_accuracy": plan.second_accuracy,
        },
        "test": rows,
        "accuracy_minus_better_model": round(cascade["accuracy"] - best, 4),
        "cpu_ratio_to_transformer": round(cascade["cpu_ms"] / rows["transformer"]["cpu_ms"], 4),
    }
    out["goal_met"] = out["accuracy_minus_better_model"] >= 0 and out["cpu_ratio_to_transformer"] <= 1 / 3
    print(f"\n{name}: test {len(parts[2])} emails (train {len(parts[0])}, validation {len(parts[1])})")
    print(f"  {'model':<12} {'accuracy':>9} {'CPU ms/email':>13} {'vs transformer':>15}")
    for kind, row in rows.items():
        print(f"  {kind:<12} {row['accuracy']:9.4f} {row['cpu_ms']:13.2f} "
              f"{row['cpu_ms'] / rows['transformer']['cpu_ms']:15.3f}")  # fmt: skip
    print(f"  cascade: threshold {cascade['threshold']:.2f}, {cascade['sent_on']:.1%} of the test emails sent on; "
          f"accuracy {out['accuracy_minus_better_model']:+.4f} vs the better model, "
          f"{out['cpu_ratio_to_transformer']:.3f} of the transformer's CPU; "
          f"goal {'met' if out['goal_met'] else 'MISSED'}")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2, help="transformer epochs (the shipped config says 8)")
    parser.add_argument("--only", help="run one corpus (its name starts with this)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_1min_at_start": load,
        "settings": vars(args),
        "corpora": {},
    }
    with tempfile.TemporaryDirectory(prefix="mr-cascade-") as tmp:
        for name, parts in corpora(args.n_train, args.n_val, args.n_test).items():
            if args.only and not name.startswith(args.only):
                continue
            folder = Path(tmp) / name.split()[0].replace(" ", "-") / name.split()[-1].strip("()")
            folder.mkdir(parents=True)
            results["corpora"][name] = run_corpus(name, parts, folder, args.epochs)
    results["load_avg_1min_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "cascade.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
