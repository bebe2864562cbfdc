"""Event-log benchmark: write throughput and the KPI report on SQLite and on PostgreSQL, side by side in one run, and
(with --router) the router's throughput on each store.

    .venv/bin/python benchmarks/bench_store.py [--n 1000000] [--write-n 200000] [--router] [--keep]
    .venv/bin/python benchmarks/bench_store.py --only-router [--seconds 20] [--concurrency 16]

1. PostgreSQL: a real server, started the way the tests start theirs (`tests/pg_server.py`, a general helper with no
   pytest in it: Debian's `postgresql`, installed by `install()` when run as root with apt-get; a throwaway cluster
   in a temporary folder on 127.0.0.1, trust authentication, `fsync=off`). With fsync off a commit writes the WAL
   to the OS and does not wait for the disk, which is what the SQLite store's WAL mode with `synchronous=NORMAL`
   does too (neither survives a power cut whole); a production server with `fsync=on` and
   `synchronous_commit=on` waits for the disk at every commit and writes slower than this.
2. Write throughput, through each store's public write path, the calls the app makes: `record_predictions` in
   batches of 500 (what `BufferedWriter` hands the store: at most `max_batch` = 500 events per transaction, from one
   thread per replica) and `record_feedback` once per feedback (what POST /v1/feedback does: one transaction each).
   The predictions are router-like events (32-hex request ids and user pseudonyms, the redacted subject and body
   of a synthetic email, the model's probability vector, the client), three arms over 30 days across a daylight
   saving change, 50,000 users, about 30% with feedback (as in bench_report.py). They are made in chunks of
   50,000 and each chunk is written into the SQLite file, then into the PostgreSQL database, so both backends see
   the same rows, the same growth of their indexes and the same background load; only the store calls are timed
   (the router builds its events anyway). Reported: predictions/s, feedback/s, records/s (both together), the
   per-batch and per-feedback latencies (p50, p99: how long the writer thread or a feedback call waits), and the
   ratios PostgreSQL / SQLite.
   Only the first `--write-n` predictions (default 200,000, and their feedback) go through the public path; the
   other N - write-n are bulk-loaded (SQLite executemany in one transaction per chunk, PostgreSQL COPY), not counted in
   any write figure, so that the report still reads N. Why: on 2 busy cores (load average 4-5) a smoke run wrote
   about 5,300 predictions/s and 570 feedback/s into PostgreSQL, so all 1,000,000 (with ~345,000 feedback calls)
   would take PostgreSQL alone about 13 minutes; `--write-n 1000000` does it anyway (about 15-20 minutes in all
   there). The output and store.json say how many went which way, and give the rates chunk by chunk.
3. The KPI report (`build_report`, as bench_report.py calls it) over the same N predictions on each store, wall and
   CPU time of this process (on PostgreSQL most of the work runs in the server, outside that CPU figure), and the
   ratio. Before it PostgreSQL gets `VACUUM ANALYZE` (what autovacuum does to a table after many inserts: planner
   statistics and the visibility map), timed apart; the SQLite file gets nothing (the store never runs ANALYZE).
4. `--router`: the Serve app (as bench_serving.py starts it: `serving.ops.launch`, the fast proxy when found) with a
   linear arm only, on the SQLite file and then on a fresh PostgreSQL database (`event_log.url` in the serving
   config, which reaches the replicas with the app's config; `$MAILROUTE_EVENT_LOG_URL` selects it too, but Ray's
   workers take the environment Ray started with, so with one Ray for both runs it is cleared here instead), one Ray
   instance for both; a closed loop at
   `--concurrency` for `--seconds` each; reports requests/s, latency p50/p95/p99, errors, and the store's
   prediction count against the acknowledged count once Serve has shut down (its buffers flushed). It starts Ray:
   run it on a machine where no other Ray instance competes for the cores. `--only-router` runs this part alone
   and updates only the "router" section of store.json.

Writes benchmarks/results/store.json (every figure, the machine, the load average) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # pg_server.py and system_packages.py
from bench_report import ARMS, DAYS, EXPERIMENT, START
from pg_server import PostgresServer, install

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.report import build_report
from serving.config import QueuesConfig, load_queues
from serving.mail.emails import from_fields
from serving.store.eventlog import PREDICTION_COLUMNS, FeedbackEvent, PredictionEvent, margin_of
from serving.store.postgres import PostgresEventLog
from serving.store.redact import apply_policy
from serving.store.sqlite import SQLiteEventLog

ROOT = Path(__file__).resolve().parents[1]
QUEUES_PATH = ROOT / "configs" / "queues.yaml"
RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 50_000
USERS = 50_000
TOKEN = "bench-store-admin-token-0123456789"
SALT = "bench-store-user-salt-0123456789abcdef"
_COLUMNS = [*PREDICTION_COLUMNS, "margin"]
_FEEDBACK_COLUMNS = ("request_id", "ts", "true_queue", "handling_seconds", "agent_id", "source")


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """What every chunk draws from: the taxonomy, each user's arm, pseudonym and skill, and a pool of email texts."""

    queues: QueuesConfig
    names: np.ndarray
    user_arm: np.ndarray
    user_skill: np.ndarray
    user_keys: list[str]
    texts: list[tuple[str | None, str | None]]
    n: int
    seed: int


def corpus(n: int, seed: int = 7) -> Corpus:
    from training.synth import generate as synth

    queues = load_queues(QUEUES_PATH)
    rng = np.random.default_rng(seed)
    user_arm = rng.choice(len(ARMS), size=USERS, p=[w for w, _, _ in ARMS.values()])
    user_skill = rng.normal(0, 0.5, size=USERS)  # per-user effect: some customers write clearer mail
    raw = rng.bytes(16 * USERS).hex()
    user_keys = [raw[32 * u : 32 * (u + 1)] for u in range(USERS)]  # 32 hex characters, like user_key()
    mail = synth(1000, seed=seed)
    parsed = [from_fields(s, b) for s, b in zip(mail["subject"], mail["body"], strict=True)]  # as the router reads them
    texts = [(apply_policy(e.subject, "redacted"), apply_policy(e.body, "redacted")) for e in parsed]
    return Corpus(queues, np.array(queues.names), user_arm, user_skill, user_keys, texts, n, seed)


def chunk_events(c: Corpus, lo: int, m: int) -> tuple[list[PredictionEvent], list[FeedbackEvent]]:
    """Predictions lo..lo+m-1 (in time order across the whole log, as a router appends them) and their feedback."""
    rng = np.random.default_rng([c.seed, lo])
    names, arm_names = c.names, list(ARMS)
    span = DAYS * 86400
    secs = np.sort(rng.uniform(lo / c.n * span, (lo + m) / c.n * span, size=m))
    user = rng.integers(0, USERS, size=m)
    arm = c.user_arm[user]
    true_q = rng.integers(0, len(names), size=m)
    acc = np.array([a for _, a, _ in ARMS.values()])[arm]
    logit = np.log(acc / (1 - acc)) + c.user_skill[user]
    correct = rng.random(m) < 1 / (1 + np.exp(-logit))
    routed = np.where(correct, true_q, (true_q + rng.integers(1, len(names), size=m)) % len(names))
    confidence = np.round(np.clip(rng.beta(8, 2, size=m), 0, 1), 6)
    rest = rng.dirichlet(np.ones(len(names) - 1), size=m) * (1 - confidence)[:, None]  # the others' probabilities
    triage = confidence < 0.6
    fallback = rng.random(m) < 0.004
    all_failed = fallback & (rng.random(m) < 0.1)
    queue = np.where(triage | all_failed, c.queues.triage_queue, names[routed])
    other = np.where(rng.random(m) < 0.1, names[true_q].astype(object), np.full(m, None, dtype=object))
    secondary = np.where(triage, names[routed].astype(object), other)
    reason = np.where(
        all_failed,
        "all_arms_failed:x_error",
        np.where(fallback, "fallback_to_linear:x_timeout", np.where(triage, "low_confidence", "confident")),
    )
    latency = np.round(rng.lognormal(np.log(np.array([ms for _, _, ms in ARMS.values()])[arm]), 0.4), 3)
    nonce = rng.integers(0, 2**62, size=m)
    text = rng.integers(0, len(c.texts), size=m)
    events, feedback = [], []
    wrong = (queue != c.queues.triage_queue) & ~correct
    p_fb = np.where(queue == c.queues.triage_queue, 0.5, np.where(wrong, 0.9, 0.22))
    audit = rng.random(m) < 0.03
    has_fb = (rng.random(m) < p_fb) | audit
    handling = rng.gamma(2.0, 60.0, size=m)
    for j in range(m):
        at = START + timedelta(seconds=float(secs[j]))
        request_id = f"{int(at.timestamp()) & 0xFFFFFFFF:08x}{int(nonce[j]):016x}"[:24] + f"{lo + j:08x}"
        others = iter(rest[j])
        proba = {str(q): (float(confidence[j]) if k == routed[j] else round(float(next(others)), 6))
                 for k, q in enumerate(names)}  # fmt: skip
        subject, body = c.texts[text[j]]
        a = arm_names[arm[j]]
        events.append(
            PredictionEvent(
                request_id=request_id, ts=at.isoformat(timespec="microseconds"), user_key=c.user_keys[user[j]],
                arm=a, model_name=a, model_version="v1", queue=str(queue[j]), confidence=float(confidence[j]),
                fallback=bool(fallback[j]), reason=str(reason[j]), latency_ms=float(latency[j]),
                experiment=EXPERIMENT.name, in_experiment=True, secondary_queue=secondary[j], subject=subject,
                body=body, proba=proba, client="gateway",
            )
        )  # fmt: skip
        if has_fb[j]:
            feedback.append(
                FeedbackEvent(
                    request_id=request_id, ts=(at + timedelta(hours=1)).isoformat(timespec="microseconds"),
                    true_queue=str(names[true_q[j]]), handling_seconds=round(float(handling[j]), 1),
                    agent_id=f"agent-{int(user[j]) % 40}", source="audit" if audit[j] else "agent",
                )
            )  # fmt: skip
    return events, feedback


def ranges(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    for start in range(lo, hi, CHUNK):
        yield start, min(CHUNK, hi - start)


def _row(e: PredictionEvent) -> tuple[Any, ...]:
    """A prediction as the stores lay it out (the columns of PREDICTION_COLUMNS, then margin), for the bulk load."""
    row = {c: getattr(e, c) for c in PREDICTION_COLUMNS}
    row["shadow"] = None if e.shadow is None else json.dumps(e.shadow)
    row["proba"] = None if e.proba is None else json.dumps(e.proba)
    row["margin"] = margin_of(e.proba)
    return tuple(row[c] for c in _COLUMNS)


def _feedback_row(f: FeedbackEvent) -> tuple[Any, ...]:
    return tuple(getattr(f, c) for c in _FEEDBACK_COLUMNS)


# ---- writing ---------------------------------------------------------------------------------------------------
@dataclass
class Timings:
    predictions: int = 0
    feedback: int = 0
    predictions_s: float = 0.0
    feedback_s: float = 0.0
    bulk_s: float = 0.0
    bulk_predictions: int = 0

    def __post_init__(self) -> None:
        self.batch_ms: list[float] = []
        self.feedback_ms: list[float] = []


def write_public(
    store: SQLiteEventLog | PostgresEventLog,
    events: list[PredictionEvent],
    feedback: list[FeedbackEvent],
    batch: int,
    t: Timings,
) -> float:
    """Write a chunk through the store's public calls, timing each; returns the seconds taken by the store."""
    took = 0.0
    for k in range(0, len(events), batch):
        began = time.perf_counter()
        store.record_predictions(events[k : k + batch])
        spent = time.perf_counter() - began
        t.batch_ms.append(spent * 1000)
        t.predictions_s += spent
        took += spent
    for f in feedback:
        began = time.perf_counter()
        result = store.record_feedback(f)
        spent = time.perf_counter() - began
        if not result.created:
            raise RuntimeError(f"feedback for {f.request_id} was already stored: the benchmark's data is wrong")
        t.feedback_ms.append(spent * 1000)
        t.feedback_s += spent
        took += spent
    t.predictions += len(events)
    t.feedback += len(feedback)
    return took


Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]  # predictions and feedback, laid out as the tables


def bulk_sqlite(path: Path, rows: Rows) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.executemany(
            f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows[0]
        )
        conn.executemany(
            f"INSERT INTO feedback ({', '.join(_FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' * len(_FEEDBACK_COLUMNS))})",
            rows[1],
        )
        conn.commit()
    finally:
        conn.close()


def bulk_postgres(url: str, rows: Rows) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY predictions ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in rows[0]:
                copy.write_row(row)
        with cur.copy(f"COPY feedback ({', '.join(_FEEDBACK_COLUMNS)}) FROM STDIN") as copy:
            for row in rows[1]:
                copy.write_row(row)


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summary(t: Timings) -> dict[str, Any]:
    return {
        "predictions": t.predictions,
        "feedback": t.feedback,
        "predictions_s": round(t.predictions_s, 2),
        "feedback_s": round(t.feedback_s, 2),
        "predictions_per_s": rate(t.predictions, t.predictions_s),
        "feedback_per_s": rate(t.feedback, t.feedback_s),
        "records_per_s": rate(t.predictions + t.feedback, t.predictions_s + t.feedback_s),
        "batch_ms_p50": pct(t.batch_ms, 50),
        "batch_ms_p99": pct(t.batch_ms, 99),
        "batch_ms_max": round(max(t.batch_ms), 3) if t.batch_ms else None,
        "feedback_ms_p50": pct(t.feedback_ms, 50),
        "feedback_ms_p99": pct(t.feedback_ms, 99),
        "bulk_loaded_predictions": t.bulk_predictions,
        "bulk_load_s": round(t.bulk_s, 2),
    }


def write_both(
    c: Corpus, sqlite_path: Path, pg_url: str, write_n: int, batch: int
) -> tuple[dict[str, Timings], list[dict[str, Any]]]:
    """Fill both stores with the same N predictions: the first `write_n` through the public path (timed), the rest
    bulk-loaded. Returns each backend's timings and the rates chunk by chunk (how they move as the log grows)."""
    sqlite_store, pg_store = SQLiteEventLog(sqlite_path), PostgresEventLog(pg_url)
    t = {"sqlite": Timings(), "postgresql": Timings()}
    by_chunk: list[dict[str, Any]] = []
    try:
        for lo, m in ranges(0, write_n):
            events, feedback = chunk_events(c, lo, m)
            took = {
                "sqlite": write_public(sqlite_store, events, feedback, batch, t["sqlite"]),
                "postgresql": write_public(pg_store, events, feedback, batch, t["postgresql"]),
            }
            records = len(events) + len(feedback)
            by_chunk.append({"upto": lo + m, **{k: rate(records, s) for k, s in took.items()}})
            done = f"{lo + m:,} of {write_n:,}"
            print(f"  written {done} through the public path: records/s " + ", ".join(f"{k} {by_chunk[-1][k]:,.0f}"
                  for k in took), flush=True)  # fmt: skip
    finally:
        sqlite_store.close()
        pg_store.close()
    for lo, m in ranges(write_n, c.n):
        events, feedback = chunk_events(c, lo, m)
        rows = [_row(e) for e in events], [_feedback_row(f) for f in feedback]
        began = time.perf_counter()
        bulk_sqlite(sqlite_path, rows)
        middle = time.perf_counter()
        bulk_postgres(pg_url, rows)
        t["sqlite"].bulk_s += middle - began
        t["postgresql"].bulk_s += time.perf_counter() - middle
        for name in t:
            t[name].bulk_predictions += m
        print(f"  bulk-loaded {lo + m - write_n:,} of {c.n - write_n:,}", flush=True)
    return t, by_chunk


# ---- the report ------------------------------------------------------------------------------------------------
def time_report(url: str, queues: QueuesConfig) -> dict[str, Any]:
    analysis = AnalysisConfig.model_validate({"time_zone": "Europe/Berlin"})
    started, cpu0 = time.perf_counter(), time.process_time()
    report = build_report(
        url,
        experiment=EXPERIMENT,
        analysis=analysis,
        queues=queues,
        since=START,
        until=START + timedelta(days=DAYS),
        as_of=START + timedelta(days=DAYS + 3),
    )
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s_this_process": round(time.process_time() - cpu0, 2),
        "days": len(report.days),
        "emails_by_arm": {g.arm: g.emails for g in report.arms},
        "recommendation": report.recommendation.sentence,
    }


def vacuum_analyze(url: str) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE predictions, feedback")
    return time.perf_counter() - started


def pg_facts(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = {s: conn.execute(f"SHOW {s}").fetchone() for s in ("fsync", "synchronous_commit", "shared_buffers")}
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "version": version[0] if version else None,
        "settings": {k: v[0] if v else None for k, v in settings.items()},
        "database_mb": round(size[0] / 2**20, 1) if size else None,
    }


# ---- the router ------------------------------------------------------------------------------------------------
def other_rays() -> int:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=False).stdout
    return sum("raylet" in line.split(" ", 1)[0] for line in out.splitlines())


def register_linear(home: Any) -> None:
    from serving.mail.text import PREPROCESSING_VERSION, model_text
    from serving.models.registry import open_registry
    from training.config import LinearConfig
    from training.linear import fit_linear
    from training.synth import generate as synth

    frame = synth(10_000, seed=5)
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    linear = fit_linear(texts, frame["queue"].tolist(), LinearConfig(n_jobs=1))
    open_registry(home).register(
        "linear", linear.save, kind="linear", labels=linear.labels, preprocessing_version=PREPROCESSING_VERSION,
        data_fingerprint="bench", metrics={}, params={},
    )  # fmt: skip


def router_bench(server: Any, seconds: float, concurrency: int) -> dict[str, Any]:
    """The app with a linear arm only, on the SQLite file then on PostgreSQL (one Ray for both)."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "MAILROUTE_ADMIN_TOKEN": TOKEN,
                       "MAILROUTE_USER_SALT": SALT, "MAILROUTE_CONFIG_DIR": str(ROOT / "configs")})  # fmt: skip
    os.environ.pop("MAILROUTE_EVENT_LOG_URL", None)  # the serving config below says which store each run uses
    from bench_serving import load, make_bodies

    from experiments.config import ExperimentConfig
    from serving.config import Home, ServingConfig
    from serving.ops import launch
    from serving.ops.ports import free_port
    from serving.store.eventlog import open_event_log

    if others := other_rays():
        print(f"warning: {others} other Ray instance(s) run on this machine: they share the cores", flush=True)
    home = Home(Path(tempfile.mkdtemp(prefix="mr-bench-store-")))
    register_linear(home)
    bodies = make_bodies(2000)
    experiment = ExperimentConfig.model_validate(
        {"name": "bench", "salt": "bench", "holdout_arm": "linear", "arms": {"linear": {"model": "linear",
                                                                                        "weight": 1.0}}}
    )  # fmt: skip
    queues = load_queues(QUEUES_PATH)
    port = free_port()  # the same port for both runs: the fast proxy's settings are fixed when Ray starts
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, Any] = {"concurrency": concurrency, "seconds": seconds, "arm": "linear only",
                           "other_ray_instances": others}  # fmt: skip
    started_ray = False
    try:
        for name, url in (("sqlite", f"sqlite:///{home.event_log}"), ("postgresql", server.fresh_url())):
            spec: dict[str, Any] = {"linear": {"num_cpus": 0.5}}
            if name == "postgresql":
                spec["event_log"] = {"url": url}
            serving = ServingConfig.model_validate(spec)
            running = launch.start(home, queues, serving, experiment, port=port)
            started_ray = started_ray or running.started_ray
            try:
                cell = asyncio.run(load(f"{running.url}/v1/route", bodies, concurrency, seconds, auth))
            finally:
                launch.stop(False)  # Serve only (the replicas flush their buffers); Ray stays for the next run
            store = open_event_log(url)
            try:
                logged = store.stats().predictions
            finally:
                store.close()
            cell.update(proxy=running.proxy, logged=logged, acknowledged_incl_warmup=cell["requests"] + concurrency)
            out[name] = cell
            acked = cell["acknowledged_incl_warmup"]
            print(f"  router on {name}: {cell['rps']} req/s, p50 {cell['p50_ms']} ms, p99 {cell['p99_ms']} ms, "
                  f"{cell['errors']} errors; logged {logged:,} of {acked:,} acknowledged", flush=True)  # fmt: skip
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    out["ratio_pg_over_sqlite_rps"] = ratio(out["postgresql"]["rps"], out["sqlite"]["rps"])
    return out


# ---- main ------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


def section_stamp() -> dict[str, Any]:
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "load_average_1min": round(os.getloadavg()[0], 2)}


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, Any, Any, Any]] = []
    if "write" in result:
        w = result["write"]
        print(f"write figures: the first {w['public_path_predictions']:,} predictions and their feedback, through "
              f"the stores' public calls ({w['bulk_loaded_predictions']:,} more bulk-loaded, untimed)")  # fmt: skip
        for key, label in (("predictions_per_s", "write: predictions/s (batches of 500)"),
                           ("feedback_per_s", "write: feedback/s (one per call)"),
                           ("records_per_s", "write: records/s (both)"),
                           ("batch_ms_p99", "write: batch of 500, p99 ms"),
                           ("feedback_ms_p99", "write: one feedback, p99 ms")):  # fmt: skip
            s, p = w["sqlite"][key], w["postgresql"][key]
            rows.append((label, s, p, ratio(p, s)))
    if "report" in result:
        r = result["report"]
        rows.append((f"KPI report over {result['predictions']:,}, s", r["sqlite"]["wall_s"], r["postgresql"]["wall_s"],
                     r["ratio_pg_over_sqlite"]))  # fmt: skip
    if "router" in result:
        r = result["router"]
        rows.append((f"router req/s (linear, concurrency {r['concurrency']})", r["sqlite"]["rps"],
                     r["postgresql"]["rps"], r["ratio_pg_over_sqlite_rps"]))  # fmt: skip
        rows.append(("router p99 ms", r["sqlite"]["p99_ms"], r["postgresql"]["p99_ms"],
                     ratio(r["postgresql"]["p99_ms"], r["sqlite"]["p99_ms"])))  # fmt: skip

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) and v < 100 else f"{v:,.0f}"

    print(f"{'':48} {'SQLite':>12} {'PostgreSQL':>12} {'PG/SQLite':>10}")
    for label, s, p, q in rows:
        print(f"{label:48} {cell(s):>12} {cell(p):>12} {cell(q):>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="predictions in each store")
    parser.add_argument("--write-n", type=int, default=200_000, help="of which through the public path")
    parser.add_argument("--batch", type=int, default=500, help="predictions per record_predictions call")
    parser.add_argument("--db", type=Path, default=Path("/tmp/bench_store.db"), help="the SQLite file")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file (the PostgreSQL server goes)")
    parser.add_argument("--router", action="store_true", help="also the router's throughput on each store")
    parser.add_argument("--only-router", action="store_true", help="only the router's throughput")
    parser.add_argument("--seconds", type=float, default=20.0, help="router: load per store")
    parser.add_argument("--concurrency", type=int, default=16, help="router: requests in flight")
    parser.add_argument("--out", type=Path, default=RESULTS / "store.json")
    args = parser.parse_args()
    write_n = min(args.write_n, args.n)

    reason = install()
    if reason is not None:
        print(f"PostgreSQL is not usable here: {reason}", file=sys.stderr)
        return 1
    began = time.perf_counter()
    result: dict[str, Any] = {}
    if args.only_router and args.out.is_file():  # keep the write and report figures of an earlier run
        result = json.loads(args.out.read_text())
    result.update(machine=machine(), when=datetime.now(UTC).isoformat(timespec="seconds"))
    server = PostgresServer().start()
    try:
        if not args.only_router:
            result.update(store_bench(args.db, server.fresh_url(), args.n, write_n, args.batch))
        if args.router or args.only_router:
            print(f"router: the app with a linear arm, concurrency {args.concurrency}, {args.seconds:g} s per store")
            result["router"] = {**router_bench(server, args.seconds, args.concurrency), **section_stamp()}
    finally:
        server.stop()
        if not args.keep:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    result["total_s"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"took {result['total_s']:.0f} s; wrote {args.out}")
    return 0


def store_bench(db: Path, pg_url: str, n: int, write_n: int, batch: int) -> dict[str, Any]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    queues = load_queues(QUEUES_PATH)
    c = corpus(n)
    bulk = f", the other {n - write_n:,} bulk-loaded" if write_n < n else ""
    print(f"write: {n:,} predictions into SQLite ({db}) and PostgreSQL: {write_n:,} through the public path "
          f"(record_predictions in batches of {batch}, record_feedback one by one){bulk}", flush=True)  # fmt: skip
    stamp = section_stamp()
    t, by_chunk = write_both(c, db, pg_url, write_n, batch)
    write: dict[str, Any] = {
        "public_path_predictions": write_n,
        "bulk_loaded_predictions": n - write_n,
        "batch": batch,
        "sqlite": summary(t["sqlite"]),
        "postgresql": summary(t["postgresql"]),
        "by_chunk_records_per_s": by_chunk,
        **stamp,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }
    write["ratio_pg_over_sqlite"] = {
        k: ratio(write["postgresql"][k], write["sqlite"][k])
        for k in ("predictions_per_s", "feedback_per_s", "records_per_s")
    }
    pg = pg_facts(pg_url)
    held = stored_counts(db, pg_url)
    if held["sqlite"] != held["postgresql"]:
        raise RuntimeError(f"the two stores hold different counts: {held}")
    feedback = held["sqlite"][1]
    print("report: VACUUM ANALYZE on PostgreSQL first", flush=True)
    report: dict[str, Any] = {"pg_vacuum_analyze_s": round(vacuum_analyze(pg_url), 2), **section_stamp()}
    report["sqlite"] = time_report(f"sqlite:///{db}", queues)
    print(f"  SQLite: {report['sqlite']['wall_s']} s", flush=True)
    report["postgresql"] = time_report(pg_url, queues)
    print(f"  PostgreSQL: {report['postgresql']['wall_s']} s", flush=True)
    report["ratio_pg_over_sqlite"] = ratio(report["postgresql"]["wall_s"], report["sqlite"]["wall_s"])
    report["same_answer"] = all(report["sqlite"][k] == report["postgresql"][k] for k in ("emails_by_arm",
                                                                                        "recommendation"))  # fmt: skip
    files = [Path(f"{db}{suffix}") for suffix in ("", "-wal")]
    return {
        "predictions": n,
        "feedback": feedback,
        "feedback_share": round(feedback / n, 3) if n else 0.0,
        "sqlite_file_mb": round(sum(p.stat().st_size for p in files if p.exists()) / 2**20, 1),
        "postgresql": pg,
        "write": write,
        "report": report,
    }


def stored_counts(db: Path, pg_url: str) -> dict[str, tuple[int, int]]:
    """(predictions, feedback) each store holds."""
    import psycopg

    sql = "SELECT (SELECT COUNT(*) FROM predictions), (SELECT COUNT(*) FROM feedback)"
    conn = sqlite3.connect(db)
    try:
        lite = conn.execute(sql).fetchone()
    finally:
        conn.close()
    with psycopg.connect(pg_url) as pg:
        row = pg.execute(sql).fetchone()
    assert row is not None
    return {"sqlite": (int(lite[0]), int(lite[1])), "postgresql": (int(row[0]), int(row[1]))}


if __name__ == "__main__":
    raise SystemExit(main())
