"""Linear model benchmark: training time on 100k generated emails, in-process single-email latency, batch throughput.

    .venv/bin/python benchmarks/bench_linear.py [--n 100000]

Goals (from the foundation issue): training under 60 s, single-email p50 under 1 ms. The baseline measured in the
same run is a word-only TF-IDF + logistic regression (the simplest model of the family): its ratios show what the
character n-grams cost. Writes benchmarks/results/linear.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.mail.text import model_text
from training.config import LinearConfig
from training.linear import fit_linear
from training.synth import generate

RESULTS = Path(__file__).resolve().parent / "results"


def _latency(model: Any, texts: list[str], repeats: int) -> dict[str, float]:
    samples = []
    for i in range(repeats):
        text = texts[i % len(texts)]
        start = time.perf_counter()
        model.predict_proba([text])
        samples.append((time.perf_counter() - start) * 1000)
    arr = np.array(samples)
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 95, 99)}


def _throughput(model: Any, texts: list[str], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.predict_proba(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="training emails")
    args = parser.parse_args()

    t0 = time.perf_counter()
    frame = generate(args.n + 5_000, seed=11)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    clean_s = time.perf_counter() - t0
    labels = frame["queue"].tolist()
    train_x, train_y, test_x = texts[: args.n], labels[: args.n], texts[args.n :]

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "n_train": args.n,
        "generate_s": round(gen_s, 2),
        "clean_text_ms_per_email": round(clean_s / len(texts) * 1000, 4),
    }
    for name, cfg in {
        "baseline_word_only": LinearConfig(char_ngram_min=1, char_ngram_max=1, max_features_char=100),
        "linear": LinearConfig(),
    }.items():
        t0 = time.perf_counter()
        model = fit_linear(train_x, train_y, cfg)
        train_s = time.perf_counter() - t0
        pred = np.array(model.labels)[model.predict_proba(test_x).argmax(1)]
        results[name] = {
            "train_s": round(train_s, 2),
            "test_accuracy": round(float((pred == np.array(labels[args.n :])).mean()), 4),
            "single_email": _latency(model, test_x, 2_000),
            "batch_1000_emails_per_s": round(_throughput(model, test_x, 1_000), 1),
        }
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    lin, base = results["linear"], results["baseline_word_only"]
    results["ratios"] = {
        "train_s_vs_goal_60s": round(lin["train_s"] / 60.0, 3),
        "p50_ms_vs_goal_1ms": round(lin["single_email"]["p50_ms"] / 1.0, 3),
        "train_s_vs_baseline": round(lin["train_s"] / base["train_s"], 2),
        "p50_vs_baseline": round(lin["single_email"]["p50_ms"] / base["single_email"]["p50_ms"], 2),
        "throughput_vs_baseline": round(lin["batch_1000_emails_per_s"] / base["batch_1000_emails_per_s"], 2),
    }
    print("ratios:", json.dumps(results["ratios"]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "linear.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
