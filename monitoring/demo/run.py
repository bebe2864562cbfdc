"""`mailroute demo`: the whole loop on one machine, on a fast clock, with progress at every stage.

1. a synthetic corpus (`mailroute data synth`'s generator): training mail, fresh traffic, drifted traffic;
2. the linear model and a short transformer run, each registered and promoted champion (the demo trains the
   transformer briefly, and says so);
3. the Serve app with the shipped 50/50 experiment, started as `mailroute serve`, on a clock that runs many times
   faster than the wall clock (`serving.clock`), so that simulated days take minutes;
4. simulated customers send mail over HTTP and simulated agents report the right queue and the handling time
   (`monitoring.demo.traffic`); part way through, the mail drifts;
5. the scheduled monitoring job (nobody calls it) finds the drift;
6. `mailroute retrain --model linear` learns from the agents' feedback with Ray Tune;
7. `mailroute rollout start` canaries the candidate, and the rollout job widens and promotes it by the demo's rule
   (faster than the shipped one, and printed on screen);
8. a summary from the same code as `mailroute experiment report`; the server and dashboard stay up until Ctrl-C.

Every command is run as a user would run it (and printed); the numbers of a run are in `monitoring.demo.plan`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from monitoring.demo.plan import DEMO, DemoPlan, merge
from serving import clock
from serving.config import Home, config_dir

MARKER = ".mailroute-demo"


class DemoError(RuntimeError):
    """A stage of the demo failed; one line."""


DEMO_CLIENT_ENV = "MAILROUTE_TOKEN_DEMO_GATEWAY"  # holder demo-gateway, the client role
DEMO_AGENT_ENV = "MAILROUTE_TOKEN_DEMO_AGENT"  # holder demo-agent, the agent role


def _say(text: str) -> None:
    print(text, flush=True)


def _stage(k: int, title: str, began: float) -> None:
    _say(f"\n== [{k}/8] {title}   ({time.monotonic() - began:.0f} s into the demo)")


def _cli(home: Home, configs: Path, *args: str) -> str:
    """Run a mailroute command as a user would, its output shown; returns its stdout."""
    command = [str(Path(sys.executable).with_name("mailroute")), "--home", str(home.root), "--config-dir",
               str(configs), *args]  # fmt: skip
    _say("$ mailroute " + " ".join(args))
    done = subprocess.run(command, env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode not in (0, 3):
        raise DemoError(f"mailroute {args[0]} exited with {done.returncode}")
    return done.stdout


def demo_configs(home: Home, source: Path, plan: DemoPlan) -> Path:
    """The shipped configs with the plan's fast schedules and rules, in `<home>/demo-configs`."""
    out = home.root / "demo-configs"
    shutil.copytree(source, out, dirs_exist_ok=True)
    changes = {
        "monitoring.yaml": plan.monitoring,
        "experiments.yaml": {"analysis": plan.analysis, "rollout": plan.rollout},
        "training.yaml": {"transformer": plan.transformer, "retrain": plan.retrain},
    }
    for name, change in changes.items():
        path = out / name
        path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()) or {}, change), sort_keys=False))
    return out


def _prepare(home: Home, reset: bool) -> None:
    if home.root.exists() and any(home.root.iterdir()):
        if not (home.root / MARKER).exists():
            raise DemoError(f"{home.root} holds something other than a demo: use --home on a new folder, or delete it")
        if not reset:
            raise DemoError(f"{home.root} holds an earlier demo: pass --reset to start over (it is deleted)")
        shutil.rmtree(home.root)
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / MARKER).write_text("made by mailroute demo; mailroute demo --reset deletes this folder\n")


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError(f"the server exited with {server.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise DemoError(f"the server did not become ready in {timeout_s:.0f} s; see {log}")


def run_demo(
    home: Home, *, port: int, wait: bool, plan: DemoPlan = DEMO, reset: bool = False, configs_from: Path | None = None
) -> int:
    """The demo (module docstring). Returns the exit code: 0 when the loop ended with a promotion."""
    from experiments.config import load_experiments
    from monitoring.demo.summary import summary
    from serving.config import load_queues
    from training.synth import generate, write_corpus

    _prepare(home, reset)
    began = time.monotonic()
    configs = demo_configs(home, configs_from or config_dir(), plan)
    data = home.root / "data"
    data.mkdir()
    _stage(1, f"a synthetic corpus: {plan.train:,} training emails, fresh traffic, and traffic after a drift", began)
    pools = (("train", plan.train, 1, 0.0), ("transformer-train", plan.transformer_train, 4, 0.0),
             ("fresh", plan.fresh, 2, 0.0), ("drifted", plan.drifted, 3, plan.drift))  # fmt: skip
    for name, n, seed, drift in pools:
        write_corpus(generate(n, seed=seed, drift=drift), data / f"{name}.jsonl")
        _say(f"   {name}: {n:,} emails" + (f" (drift {drift})" if drift else ""))

    short = ", ".join(f"{k} {v}" for k, v in plan.transformer.items())
    _stage(2, f"both models: the linear model, then MiniLM with Ray Train (a short run for the demo: {short}, on "
              f"{plan.transformer_train:,} emails)", began)  # fmt: skip
    for kind, file in (("linear", "train"), ("transformer", "transformer-train")):
        out = _cli(home, configs, "train", kind, "--data", str(data / f"{file}.jsonl"), "--label-col", "queue")
        _cli(home, configs, "models", "promote", out.strip().splitlines()[-1])

    fast = clock.scaled(clock.now() - timedelta(hours=plan.planned_h), plan.speed)
    token = secrets.token_urlsafe(24)
    # This process, the server and every command below share the clock and the tokens (until the demo ends): the
    # admin's, the mail gateway's (holder demo-gateway, client role) and the agents' (demo-agent, agent role).
    tokens = {
        "MAILROUTE_ADMIN_TOKEN": token,
        DEMO_CLIENT_ENV: f"client:{secrets.token_urlsafe(24)}",
        DEMO_AGENT_ENV: f"agent:{secrets.token_urlsafe(24)}",
    }
    with _environment({clock.ENV: fast.to_env(), "MAILROUTE_CONFIG_DIR": str(configs), **tokens}):
        url = f"http://127.0.0.1:{port}"
        _stage(3, f"the Serve app (50/50 linear/transformer) on port {port}, on a clock {plan.speed:g} times faster "
                  "than the wall clock", began)  # fmt: skip
        log = home.root / "serve.log"
        command = [str(Path(sys.executable).with_name("mailroute")), "--home", str(home.root), "--config-dir",
                   str(configs), "serve", "--port", str(port)]  # fmt: skip
        with log.open("w") as out_file:
            server = subprocess.Popen(command, stdout=out_file, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            _wait_ready(url, server, log)
            start = clock.now()  # the simulated time the customers start writing: every phase counts from here
            code = _loop(home, configs, url, start, plan, began)
            _stage(8, "summary", began)
            files, queues = load_experiments(configs / "experiments.yaml"), load_queues(configs / "queues.yaml")
            for line in summary(home, files, queues, _phases(home, start, plan), url):
                _say(line)
            _say(f"-- the admin token of this run (the dashboard's sign-in, the admin API): {token}")
            _say(f"-- the app's clock (commands that read this home agree with the server when it is set): "
                 f"export {clock.ENV}={fast.to_env()}")  # fmt: skip
            _say(f"== the demo took {(time.monotonic() - began) / 60:.1f} minutes")
            if wait:
                _say(f"the server and the dashboard stay up at {url}/dashboard until Ctrl-C (on the demo's fast "
                     "clock: restart with mailroute serve for real time)")  # fmt: skip
                with contextlib.suppress(KeyboardInterrupt):
                    server.wait()
            return code
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables while the block runs, the old ones after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _phases(home: Home, start: datetime, plan: DemoPlan) -> list[Any]:
    """Before the drift, the drift until the rollout ended, after it (from the rollout file's history)."""
    from experiments.rollout import state as rollout_state
    from monitoring.demo.summary import Phase

    drift = start + timedelta(hours=plan.drift_after_h)
    end = clock.now()
    rs = _rollout(home, rollout_state)
    done = next((s for s in (rs.history if rs else ()) if s.action in ("promote", "roll back")), None)
    phases = [Phase("before the drift", start, drift)]
    if done is None:
        return [*phases, Phase("drifted mail", drift, end)]
    at = datetime.fromisoformat(done.ts)
    return [*phases, Phase("drifted mail: the old champion, then the canary beside it", drift, at),
            Phase(f"after the rollout's {done.action}", at, end)]  # fmt: skip


def _sim_wait(until: datetime, report: Any, every_s: float = 10.0) -> None:
    """Sleep until simulated time `until`, calling `report()` every `every_s` wall seconds."""
    last = 0.0
    while clock.now() < until:
        if time.monotonic() - last >= every_s:
            report()
            last = time.monotonic()
        time.sleep(0.5)


def _loop(home: Home, configs: Path, url: str, start: datetime, plan: DemoPlan, began: float) -> int:
    """Stages 4 to 7: traffic, the drift and its detection, the retrain, the rollout. 0 when it ended promoted."""
    import pandas as pd

    from experiments.rollout import state as rollout_state
    from monitoring.demo.traffic import Traffic
    from serving.store.eventlog import open_event_log

    data = home.root / "data"
    fresh, drifted = (pd.read_json(data / f"{n}.jsonl", lines=True) for n in ("fresh", "drifted"))
    drift_at = start + timedelta(hours=plan.drift_after_h)
    traffic = Traffic(
        url, fresh, drifted, drift_at=drift_at, users=plan.users, senders=plan.senders,
        client_token=os.environ[DEMO_CLIENT_ENV].partition(":")[2],
        agent_token=os.environ[DEMO_AGENT_ENV].partition(":")[2],
    )  # fmt: skip

    def progress() -> None:
        s = traffic.stats
        hours = (clock.now() - start).total_seconds() / 3600
        arms = ", ".join(f"{a} {n}" for a, n in sorted(s.by_arm.items()))
        _say(f"   simulated {clock.now():%a %H:%M} (+{hours:.0f} h): {s.sent:,} emails sent ({s.drifted:,} drifted, "
             f"{s.failed} failed), {s.feedback:,} agent reports; by arm: {arms}")  # fmt: skip

    _stage(4, f"{plan.users} simulated customers write; simulated agents report the right queue and the handling "
              f"time of every email (a correction where the route was wrong); the mail drifts after "
              f"{plan.drift_after_h:g} simulated hours", began)  # fmt: skip
    traffic.start()
    try:
        _sim_wait(drift_at, progress)
        _stage(5, "the mail drifts (new products and phrasings, more cancellations); waiting for the scheduled "
                  "monitoring job, which nobody calls, to notice", began)  # fmt: skip
        store = open_event_log(f"sqlite:///{home.event_log}")
        alarms: list[Any] = []
        last = time.monotonic()
        while clock.now() < drift_at + timedelta(hours=plan.detect_within_h) and not alarms:
            alarms = [v for v in store.verdicts(job="drift", since=drift_at.isoformat(), limit=500) if v.alarm]
            if not alarms:
                time.sleep(1)
                if time.monotonic() - last > 10:
                    progress()
                    last = time.monotonic()
        store.close()
        if not alarms:
            _say(f"   no monitoring run alarmed within {plan.detect_within_h:g} simulated hours: the loop stops here")
            return 1
        first = min(alarms, key=lambda v: v.ts)  # the store lists the newest first
        run = [v for v in alarms if v.run_id == first.run_id]
        more = f" and {len(run) - 6} more" if len(run) > 6 else ""
        shown = ", ".join(f"{v.scope}/{v.check}" for v in run[:6]) + more
        _say(f"   the monitoring run of {first.ts[:16]} alarmed: {shown}")
        _stage(6, "retraining the linear model from the agents' feedback: a Ray Tune search and a Ray task (on a "
                  "cluster, RAY_ADDRESS sends the same program there)", began)  # fmt: skip
        candidate = _cli(home, configs, "retrain", "--model", "linear").strip().splitlines()[-1]
        if not candidate.startswith("linear:"):
            _say("   the gate registered no candidate: nothing to roll out")
            return 1
        _stage(7, f"canary rollout of {candidate}; the rollout job decides by the demo's rule {plan.rollout} (the "
                  "shipped rule waits a day per step and promotes only a canary shown better)", began)  # fmt: skip
        _cli(home, configs, "rollout", "start", candidate, "--canary", str(plan.rollout["steps"][0]), "--url", url)
        return _follow_rollout(home, start, plan, progress, rollout_state)
    finally:
        traffic.stop()
        progress()


def _rollout(home: Home, rollout_state: Any) -> Any:
    """The saved rollout (the event store's), or None."""
    from serving.config import load_serving
    from serving.store.location import existing_store

    with existing_store(load_serving(), home) as store:
        return None if store is None else rollout_state.load(store)


def _follow_rollout(home: Home, start: datetime, plan: DemoPlan, progress: Any, rollout_state: Any) -> int:
    seen = 1
    deadline = clock.now() + timedelta(hours=plan.rollout_within_h)
    rs = _rollout(home, rollout_state)
    last, shown_check = time.monotonic(), ""
    while rs is not None and rs.running and clock.now() < deadline:
        time.sleep(1)
        rs = _rollout(home, rollout_state)
        for step in rs.history[seen:] if rs else ():
            _say(f"   {step.ts[:16]} {step.action} -> {step.percent:g}% of {rs.arm}'s users: {step.reason}")
        seen = len(rs.history) if rs else seen
        check = rs.last_check if rs is not None else None
        if check is not None and time.monotonic() - last > 15 and check.ts > shown_check and check.ts > rs.step_started:
            _say(f"   {check.ts[:16]} {check.reason}")
            shown_check, last = check.ts, time.monotonic()
    if rs is None or rs.status != "promoted":
        _say(f"   the rollout ended {rs.status if rs else 'nowhere'} within {plan.rollout_within_h:g} simulated hours")
        return 1
    _say(f"   the champion serves all of {rs.arm}'s users; running for another {plan.after_promotion_h:g} "
         "simulated hours")  # fmt: skip
    _sim_wait(clock.now() + timedelta(hours=plan.after_promotion_h), progress)
    return 0


def demo(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port of the demo server")] = 8000,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="keep the server up until Ctrl-C at the end")] = True,
    reset: Annotated[bool, typer.Option("--reset", help="delete an earlier demo in the home folder first")] = False,
) -> None:
    """The whole loop on this machine: train, serve, traffic, drift, monitoring, retrain, canary, promotion."""
    from serving.cli import options

    code = run_demo(options(ctx).resolve_home(), port=port, wait=wait, reset=reset)
    if code:
        raise typer.Exit(code)
