"""The running app's state kept in the home folder: the user salt, the experiment and decision policy in force, the
audit log of every change, and the lock that serialises changes.

- `<home>/user_salt`: the salt of user pseudonyms, made once (0600) so every replica and restart agrees.
- `<home>/experiment.json`: the running experiment with its pinned bucket layout and model versions, so a restart
  keeps every user's arm and every arm's version; and `based_on`, the experiments.yaml experiment the app was last
  started from, so a restart can tell a hand edit of the file (applied, moving as few users as possible) from
  runtime changes (kept): `reconcile`.
- `<home>/policy.json`: the decision policy set at runtime (`mailroute analyze apply-thresholds`), with the
  `serving.yaml` policy it replaced; a restart keeps it unless `serving.yaml`'s policy was edited since, in which case
  the edit (newer) wins and the start says so.
- `<home>/audit.jsonl`: one JSON line per change (who, when, what kind, old, new, share of users moved).
- `<home>/.control.lock`: held while a change is applied, so two changes (an admin's and the rollout job's, say)
  never interleave their read-modify-write of the Serve config.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from filelock import FileLock

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving import clock
from serving.config import ConfigError, Home, PolicyConfig, parse_config

log = logging.getLogger(__name__)
STATE_FILE = "experiment.json"
POLICY_FILE = "policy.json"
AUDIT_FILE = "audit.jsonl"
SALT_FILE = "user_salt"
LOCK_FILE = ".control.lock"


def user_salt(home: Home) -> str:
    """The salt of user pseudonyms: created once per home (0600), so every replica and restart agrees."""
    path = home.root / SALT_FILE
    home.root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    for _ in range(100):  # another replica may have created it a moment ago and still be writing
        salt = path.read_text().strip()
        if salt:
            return salt
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")


def _write_atomic(home: Home, name: str, data: Any) -> None:
    home.root.mkdir(parents=True, exist_ok=True)
    tmp = home.root / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, home.root / name)


def _read_saved(home: Home) -> tuple[ExperimentConfig | None, ExperimentConfig | None]:
    """(the saved running experiment, the file's experiment it started from); None where absent or unreadable. A
    file written before `based_on` existed holds the experiment alone."""
    path = home.root / STATE_FILE
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "experiment" in data:
            saved = parse_config(data["experiment"], ExperimentConfig, str(path))
            based = data.get("based_on")
            return saved, None if based is None else parse_config(based, ExperimentConfig, str(path))
        return parse_config(data, ExperimentConfig, str(path)), None
    except (json.JSONDecodeError, ConfigError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return None, None


def load_state(home: Home, configured: ExperimentConfig) -> ExperimentConfig:
    """The running experiment: the saved one if it is the configured one (same name and salt), else the configured
    one. (A start writes what it runs, `reconcile` deciding; readers of the running layout call this.)"""
    saved, _ = _read_saved(home)
    if saved is None or (saved.name, saved.salt) != (configured.name, configured.salt):
        return configured
    return saved


def save_state(home: Home, experiment: ExperimentConfig, based_on: ExperimentConfig | None = None) -> None:
    """Save the running experiment; `based_on` (the file's experiment a start ran from) is kept from the saved file
    unless given."""
    if based_on is None:
        based_on = _read_saved(home)[1]
    data = {"experiment": experiment.model_dump(mode="json"),
            "based_on": None if based_on is None else based_on.model_dump(mode="json")}  # fmt: skip
    _write_atomic(home, STATE_FILE, data)


@dataclass(frozen=True)
class Start:
    """What a start runs (`experiment`); when it applies a hand edit of experiments.yaml over a saved layout,
    `previous` is the layout it replaces and `moved` the share of users that changes arm."""

    experiment: ExperimentConfig
    note: str | None = None
    previous: ExperimentConfig | None = None
    moved: float | None = None


def reconcile(home: Home, configured: ExperimentConfig) -> Start:
    """The experiment a start runs: the saved one (with its runtime changes) when experiments.yaml is unchanged
    since the app last started from it; the file's when the file was edited since, laid out from the saved ranges
    so as few users as possible change arm. An edit while a canary a rollout added is running cannot be applied
    safely: a ConfigError says how to reconcile."""
    saved, based_on = _read_saved(home)
    path = home.root / STATE_FILE
    if saved is None or (saved.name, saved.salt) != (configured.name, configured.salt):
        return Start(configured)
    if based_on is None:
        return Start(saved, f"{path} predates hand-edit detection: its layout is kept (from now on edits apply)")
    if configured == based_on:
        return Start(saved)
    added = sorted(set(saved.arms) - set(configured.arms) - set(based_on.arms))
    if added:
        raise ConfigError(
            f"experiments.yaml was edited while arm(s) {', '.join(added)} added by a rollout are running: finish or "
            f"undo the rollout first (mailroute rollout status; mailroute rollback), then restart; or delete {path} "
            "to start from the file as it is (users are then laid out afresh)"
        )
    edited = configured.pinned(saved.ranges())
    moved = moved_share(saved.ranges(), edited.ranges())
    # The file's experiment replaces the running one whole: say which runtime changes that undoes.
    fields = ("arms", "coverage", "active", "fallback_order", "shadow", "holdout_arm", "control")
    undone = [
        f for f in fields if getattr(saved, f) != getattr(based_on, f) and getattr(saved, f) != getattr(configured, f)
    ]
    replaced = f"; it replaces the runtime changes to {', '.join(undone)}" if undone else ""
    note = (f"experiments.yaml was edited since the app last started: applied, {moved:.1%} of users change arm"
            f"{replaced}")  # fmt: skip
    return Start(edited, note, previous=saved, moved=moved)


def load_policy(home: Home, configured: PolicyConfig) -> tuple[PolicyConfig, str | None]:
    """The policy to serve with, and a sentence when it is not serving.yaml's: the runtime one saved by a change,
    unless serving.yaml's policy changed since that change (then the file's, a newer hand edit, wins)."""
    path = home.root / POLICY_FILE
    if not path.exists():
        return configured, None
    try:
        data = json.loads(path.read_text())
        saved = parse_config(data["policy"], PolicyConfig, str(path))
        based_on = parse_config(data["based_on"], PolicyConfig, str(path))
    except (json.JSONDecodeError, ConfigError, KeyError, TypeError) as err:
        return configured, f"ignoring unreadable {path} ({' '.join(str(err).split())[:200]}): serving.yaml's policy"
    if based_on != configured:
        return configured, f"serving.yaml's policy was edited after the runtime change saved in {path}: the edit wins"
    if saved == configured:
        return configured, None
    return saved, f"decision policy from {path} (set at runtime on {data.get('ts', '?')}), not serving.yaml's"


def save_policy(home: Home, policy: PolicyConfig, based_on: PolicyConfig) -> None:
    _write_atomic(
        home,
        POLICY_FILE,
        {"ts": clock.now().isoformat(), "policy": policy.model_dump(mode="json"),
         "based_on": based_on.model_dump(mode="json")},
    )  # fmt: skip


def audit(
    home: Home,
    actor: str,
    old: dict[str, Any],
    new: dict[str, Any],
    moved: float | None = None,
    *,
    kind: str = "experiment",
    detail: str | None = None,
) -> None:
    """Append one change to `<home>/audit.jsonl`. `kind`: experiment (old/new are experiments: the SRM check reads
    their weights), policy, rollout or rollback."""
    record: dict[str, Any] = {"ts": clock.now().isoformat(), "actor": actor, "kind": kind, "old": old, "new": new}
    if moved is not None:
        record["moved_share"] = moved
    if detail:
        record["detail"] = detail
    home.root.mkdir(parents=True, exist_ok=True)
    with (home.root / AUDIT_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def change_lock(home: Home) -> FileLock:
    """The lock every runtime change holds from reading the live config to recording the change. Not tied to a
    thread: an asyncio caller takes and releases it from worker threads."""
    home.root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(home.root / LOCK_FILE), thread_local=False)
