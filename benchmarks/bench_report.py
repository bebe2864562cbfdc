"""Time the experiment report on a large event log, against the naive pandas path on the same file.

Generates N logged predictions (default 1,000,000) with about 30% feedback straight into a SQLite event log
(executemany on the store's own schema: three arms, 30 days across a daylight-saving change, 50,000 users), then
times `build_report` (SQL aggregation) and the naive path (`joined_frame()` + pandas groupby of a few KPIs, with no
intervals), prints both and their ratio, and writes `benchmarks/results/report.json`.

    .venv/bin/python benchmarks/bench_report.py [--n 1000000] [--db /tmp/bench_report.db] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.report import build_report
from experiments.config import ExperimentConfig
from serving.config import load_queues
from serving.store.sqlite import SQLiteEventLog

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 15, tzinfo=UTC)  # 30 days across Europe/Berlin's change to summer time (29 March)
DAYS = 30
ARMS = {"linear": (0.4, 0.88, 12.0), "transformer": (0.4, 0.91, 60.0), "rules": (0.2, 0.80, 2.0)}  # weight, acc, ms
EXPERIMENT = ExperimentConfig.model_validate(
    {
        "name": "bench",
        "salt": "bench",
        "arms": {a: {"model": a, "weight": w} for a, (w, _, _) in ARMS.items()},
        "holdout_arm": "linear",
        "control": "linear",
    }
)


def generate(path: Path, n: int, users: int = 50_000, seed: int = 7) -> float:
    """Write `n` predictions (and ~30% feedback) into a fresh SQLite event log at `path`; returns seconds taken."""
    started = time.perf_counter()
    path.unlink(missing_ok=True)
    SQLiteEventLog(path).close()  # the store's own schema
    queues = load_queues(ROOT / "configs" / "queues.yaml")
    names = np.array(queues.names)
    rng = np.random.default_rng(seed)
    arm_names = np.array(list(ARMS))
    user_arm = rng.choice(len(ARMS), size=users, p=[w for w, _, _ in ARMS.values()])
    user_skill = rng.normal(0, 0.5, size=users)  # per-user effect: some customers write clearer mail
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    chunk = 200_000
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        idx = np.arange(lo, lo + m)
        user = rng.integers(0, users, size=m)
        arm = user_arm[user]
        secs = np.sort(rng.uniform(0, DAYS * 86400, size=m))
        true_q = rng.integers(0, len(names), size=m)
        acc = np.array([a for _, a, _ in ARMS.values()])[arm]
        logit = np.log(acc / (1 - acc)) + user_skill[user]
        correct = rng.random(m) < 1 / (1 + np.exp(-logit))
        routed = np.where(correct, true_q, (true_q + rng.integers(1, len(names), size=m)) % len(names))
        confidence = np.clip(rng.beta(8, 2, size=m), 0, 1)
        triage = confidence < 0.6
        fallback = rng.random(m) < 0.004
        all_failed = fallback & (rng.random(m) < 0.1)
        queue = np.where(triage | all_failed, "triage", names[routed])
        other = np.where(rng.random(m) < 0.1, names[true_q].astype(object), np.full(m, None, dtype=object))
        secondary = np.where(triage, names[routed].astype(object), other)
        reason = np.where(
            all_failed,
            "all_arms_failed:x_error",
            np.where(fallback, "fallback_to_linear:x_timeout", np.where(triage, "low_confidence", "confident")),
        )
        latency = rng.lognormal(np.log(np.array([ms for _, _, ms in ARMS.values()])[arm]), 0.4)
        stamps = [(START + timedelta(seconds=float(s))).isoformat(timespec="microseconds") for s in secs]
        rows = [
            (f"r{i:08d}", stamps[j], f"u{user[j]:06d}", arm_names[arm[j]], arm_names[arm[j]], "v1", queue[j],
             float(confidence[j]), int(fallback[j]), reason[j], float(latency[j]), "bench", 1, secondary[j])
            for j, i in enumerate(idx)
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO predictions (request_id, ts, user_key, arm, model_name, model_version, queue, confidence, "
            "fallback, reason, latency_ms, experiment, in_experiment, secondary_queue) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # Feedback: corrections far more often than confirmations; a few percent come from a random audit.
        wrong = (queue != "triage") & ~correct
        p_fb = np.where(queue == "triage", 0.5, np.where(wrong, 0.9, 0.22))
        audit = rng.random(m) < 0.03
        has_fb = (rng.random(m) < p_fb) | audit
        fb_rows = [
            (f"r{idx[j]:08d}", (START + timedelta(seconds=float(secs[j]) + 3600)).isoformat(timespec="microseconds"),
             str(names[true_q[j]]), "audit" if audit[j] else "agent")
            for j in np.flatnonzero(has_fb)
        ]  # fmt: skip
        conn.executemany("INSERT INTO feedback (request_id, ts, true_queue, source) VALUES (?, ?, ?, ?)", fb_rows)
        conn.commit()
    conn.close()
    return time.perf_counter() - started


def naive(path: Path, queues_path: Path) -> float:
    """The pandas path: the whole joined log into a frame, then groupby arm (point estimates only, no intervals)."""
    queues = load_queues(queues_path)
    started = time.perf_counter()
    log = SQLiteEventLog(path)
    df = log.joined_frame()
    log.close()
    df["auto"] = df["queue"] != queues.triage_queue
    df["judged"] = df["auto"] & df["true_queue"].notna()
    df["correct"] = df["judged"] & (df["true_queue"] == df["queue"])
    df["day"] = df["ts"].dt.tz_convert("Europe/Berlin").dt.date
    minutes = df["queue"].map({q: s.manual_triage_minutes for q, s in queues.queues.items()}).fillna(0.0)
    df["saved"] = np.where(df["correct"], minutes, 0.0)
    for keys in (["arm"], ["arm", "day"], ["arm", "model_version"]):
        g = df.groupby(keys)
        g.agg(emails=("request_id", "size"), users=("user_key", "nunique"), auto=("auto", "mean"),
              judged=("judged", "sum"), correct=("correct", "sum"), saved=("saved", "sum"))  # fmt: skip
        for q in (0.5, 0.95, 0.99):
            g["latency_ms"].quantile(q)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/bench_report.db"))
    parser.add_argument("--reuse", action="store_true", help="use an existing --db instead of generating one")
    parser.add_argument("--no-naive", action="store_true", help="skip the pandas baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report.json")
    args = parser.parse_args()
    gen_s = None if args.reuse else generate(args.db, args.n)
    if gen_s is not None:
        print(f"generated {args.n:,} predictions in {gen_s:.1f} s")
    queues_path = ROOT / "configs" / "queues.yaml"
    analysis = AnalysisConfig.model_validate({"time_zone": "Europe/Berlin"})
    started, cpu0 = time.perf_counter(), time.process_time()
    report = build_report(
        f"sqlite:///{args.db}",
        experiment=EXPERIMENT,
        analysis=analysis,
        queues=load_queues(queues_path),
        since=START,
        until=START + timedelta(days=DAYS),
        as_of=START + timedelta(days=DAYS + 3),
    )
    report_s, report_cpu_s = time.perf_counter() - started, time.process_time() - cpu0
    load = os.getloadavg()[0]
    print(
        f"report (SQL aggregation, intervals, SRM, differences): {report_s:.1f} s wall, {report_cpu_s:.1f} s CPU "
        f"(load average {load:.1f} on {os.cpu_count()} cores)"
    )
    print(f"  {report.recommendation.sentence}")
    naive_s = None if args.no_naive else naive(args.db, queues_path)
    if naive_s is not None:
        print(f"naive pandas path (joined_frame + groupby, no intervals): {naive_s:.1f} s; "
              f"ratio naive / report = {naive_s / report_s:.2f}")  # fmt: skip
    result = {
        "predictions": args.n,
        "feedback_share": _feedback_share(args.db),
        "generate_s": None if gen_s is None else round(gen_s, 2),
        "report_s": round(report_s, 2),
        "report_cpu_s": round(report_cpu_s, 2),
        "load_average_1min": round(load, 2),
        "naive_pandas_s": None if naive_s is None else round(naive_s, 2),
        "ratio_naive_over_report": None if naive_s is None else round(naive_s / report_s, 2),
        "days": len(report.days),
        "arms": [g.arm for g in report.arms],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _feedback_share(path: Path) -> float:
    conn = sqlite3.connect(path)
    fb, n = conn.execute("SELECT (SELECT COUNT(*) FROM feedback), (SELECT COUNT(*) FROM predictions)").fetchone()
    conn.close()
    return round(fb / n, 3) if n else 0.0


if __name__ == "__main__":
    main()
