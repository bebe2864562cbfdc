"""The PostgreSQL event log against a real server: what the shared contract (test_eventlog.py, which runs on it
too) cannot show with one process — racing writers on several connections and processes, the schema created by
several replicas at once, a forked child, a refused schema version, a server that goes away and comes back — and
that it answers exactly as the SQLite file does."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from pg_server import PostgresServer
from test_eventlog import event, feedback

from serving.store.eventlog import EventLog, EventLogError, StoreUnavailableError
from serving.store.memory import MemoryEventLog
from serving.store.postgres import PostgresEventLog
from serving.store.sqlite import SQLiteEventLog

pytestmark = pytest.mark.unit


def _write_from_process(url: str, worker: int, start: Any) -> None:
    start.wait(timeout=30)  # both processes create the schema and write at the same moment
    store = PostgresEventLog(url)
    events = [event(f"p{worker}-{i}", at=i, arm=f"arm{worker}") for i in range(2000)]
    for first in range(0, len(events), 20):  # 100 short transactions, interleaved with the other process
        store.record_predictions(events[first : first + 20])
        if first % 400 == 0:
            store.stats()
    # Both race on the same email_ids (another request_id each): exactly one record per email_id survives.
    store.record_predictions([event(f"race{worker}-{i}", email_id=f"mail-{i}", arm=f"arm{worker}") for i in range(200)])
    store.record_predictions(events[:50])  # a retry of early batches: must not double count
    store.close()


def test_two_processes_write_one_database_and_race_on_email_ids(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_from_process, args=(url, w, start)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = PostgresEventLog(url)
    frame = store.predictions_frame()
    assert store.stats().predictions == 4200 and frame["request_id"].is_unique
    raced = frame[frame["email_id"].notna()]
    assert len(raced) == 200 and raced["email_id"].is_unique
    for i in (0, 57, 199):
        first = store.find_by_email_id(f"mail-{i}", client=None)
        assert first is not None and first.request_id in (f"race0-{i}", f"race1-{i}")
    store.close()


def test_it_answers_exactly_as_the_sqlite_file_and_memory_do(postgres: PostgresServer, tmp_path: Any) -> None:
    stores: list[EventLog] = [
        MemoryEventLog(),
        SQLiteEventLog(tmp_path / "same.db"),
        PostgresEventLog(postgres.fresh_url()),
    ]
    for store in stores:
        store.record_predictions(
            [event(f"r{i}", at=i, shadow={"q": i} if i % 2 else None, email_id=f"m{i}", proba={"billing": 0.6,
             "sales": 0.4} if i % 3 else None) for i in range(7)]
        )  # fmt: skip
        store.record_feedback(feedback("r1", "sales", handling_seconds=3.5))
        store.record_feedback(feedback("r4", "billing"))
    for other in stores[1:]:
        pd.testing.assert_frame_equal(stores[0].joined_frame(), other.joined_frame())
        pd.testing.assert_frame_equal(stores[0].predictions_frame(), other.predictions_frame())
        pd.testing.assert_frame_equal(stores[0].feedback_frame(), other.feedback_frame())
        assert stores[0].stats() == other.stats()
    for store in stores:
        store.close()


def _write_in_child(store: PostgresEventLog) -> None:
    store.record_predictions([event("from-child")])  # on the child's own connections, not the parent's socket


def test_a_forked_child_opens_its_own_connections(postgres: PostgresServer) -> None:
    store = PostgresEventLog(postgres.fresh_url())
    store.record_predictions([event("from-parent")])  # the parent holds a pooled connection when it forks
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store.record_predictions([event("parent-again")])  # the parent's connection still works
    assert store.stats().predictions == 3
    store.close()


def test_another_schema_version_is_refused(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    PostgresEventLog(url).close()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 99")
    engine.dispose()
    with pytest.raises(EventLogError, match="schema version 99"):
        PostgresEventLog(url)


def test_a_version_4_database_gains_the_shared_state_tables(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    store = PostgresEventLog(url)
    store.record_predictions([event("kept")])
    store.close()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # the version-4 layout
        conn.exec_driver_sql("DROP TABLE shared_state; DROP TABLE audit; UPDATE schema_version SET version = 4")
    store = PostgresEventLog(url)
    store.write_state("experiment", {"name": "e"})
    assert store.read_state("experiment") == {"name": "e"} and store.get_prediction("kept") is not None
    store.close()
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").scalar() == 5
    engine.dispose()


def test_a_server_that_goes_away_is_unavailable_and_writes_resume_when_it_is_back(postgres: PostgresServer) -> None:
    store = PostgresEventLog(postgres.fresh_url())
    store.record_predictions([event("before")])
    postgres.pause()
    try:
        with pytest.raises(StoreUnavailableError) as gone:
            store.record_predictions([event("during")])
        assert "\n" not in str(gone.value)
    finally:
        postgres.resume()
    store.record_predictions([event("during"), event("after")])  # the pool replaces the dead connections
    assert store.stats().predictions == 3
    store.close()


def test_the_change_lock_holds_across_processes_and_a_killed_holder_frees_it(postgres: PostgresServer) -> None:
    import os
    import signal
    import subprocess
    import sys

    url = postgres.fresh_url()
    store = PostgresEventLog(url)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom serving.store.postgres import PostgresEventLog\n"
         f"PostgresEventLog({url!r}).change_lock().acquire(timeout=10)\nprint('held', flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            store.change_lock().acquire(timeout=0.5)  # another process holds it
        holder.send_signal(signal.SIGKILL)  # its session ends with it, and so does the lock
        holder.wait(timeout=30)
        lock = store.change_lock()
        lock.acquire(timeout=10)
        lock.release()
    finally:
        holder.kill()
        store.close()


def test_an_exhausted_pool_is_unavailable_not_a_crash(postgres: PostgresServer) -> None:
    """Every pooled connection taken (calls hung on a slow server): the next call waits `pool_timeout_s`, then is
    StoreUnavailableError (a 503 with Retry-After), not SQLAlchemy's own TimeoutError (a 500)."""
    store = PostgresEventLog(postgres.fresh_url(), pool_size=1, pool_timeout_s=0.5)
    engine = store._engine_here()
    held = [engine.connect(), engine.connect()]  # pool_size + max_overflow
    try:
        with pytest.raises(StoreUnavailableError, match="busy"):
            store.stats()
    finally:
        for conn in held:
            conn.close()
    assert store.stats().predictions == 0
    store.close()


def test_a_row_lock_held_by_a_stuck_transaction_fails_a_write_in_bounded_time(postgres: PostgresServer) -> None:
    """A transaction that holds a row and never ends (a hung client): a write that needs the row gives up after
    the lock timeout instead of waiting for ever."""
    url = postgres.fresh_url()
    store = PostgresEventLog(url, lock_timeout_s=1)
    store.write_state("layout", {"v": 1})
    stuck = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)).connect()
    stuck.execute(sa.text("SELECT * FROM shared_state WHERE key = 'layout' FOR UPDATE"))
    try:
        with pytest.raises(StoreUnavailableError):
            store.write_state("layout", {"v": 2})
    finally:
        stuck.rollback()
        stuck.close()
    store.write_state("layout", {"v": 3})
    assert store.read_state("layout") == {"v": 3}
    store.close()


def test_the_timeouts_do_not_replace_the_urls_own_options(postgres: PostgresServer) -> None:
    """Found in review: the timeouts went in as the `options` startup parameter, which replaced a URL's own
    (`?options=-csearch_path=...`) and which PgBouncer refuses. They are SET on each new connection instead."""
    url = postgres.fresh_url()
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA mr"))
    admin.dispose()
    store = PostgresEventLog(f"{url}?options=-csearch_path%3Dmr", lock_timeout_s=7)
    store.record_predictions([event("r1")])
    with store._engine_here().connect() as conn:
        assert conn.execute(sa.text("SHOW search_path")).scalar() == "mr"
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "7s"
        assert conn.execute(sa.text("SELECT count(*) FROM mr.predictions")).scalar() == 1
    store.close()
