"""The running app's shared state, kept in the event store so every replica on every node reads the same: the
experiment and decision policy in force, the audit log of every change, and the lock that serialises changes
(`serving.store.eventlog.EventLog.read_state`/`write_state`, `record_audit`, `change_lock`).

- state document `experiment`: the running experiment with its pinned bucket layout and model versions, so a restart
  keeps every user's arm and every arm's version; and `based_on`, the experiments.yaml experiment the app was last
  started from, so a restart can tell a hand edit of the file (applied, moving as few users as possible) from
  runtime changes (kept): `reconcile`.
- state document `policy`: the decision policy set at runtime (`mailroute analyze apply-thresholds`), with the
  `serving.yaml` policy it replaced; a restart keeps it unless `serving.yaml`'s policy was edited since, in which case
  the edit (newer) wins and the start says so.
- the audit log: one record per change (who, when, what kind, old, new, share of users moved).
- the change lock: held while a change is applied, so two changes (an admin's and the rollout job's, say) never
  interleave their read-modify-write of the Serve config, on one machine or many.

Before the store held them, these lived in files of the home folder (experiment.json, policy.json, audit.jsonl,
rollout.json); `import_home_files` moves them into the store once, at the first start that finds them.

The user salt is not here: it is a secret (`serving.auth.resolve_user_salt`), never stored beside the pseudonyms it
protects. `user_salt(home)` makes the single-machine default, `<home>/user_salt` (0600).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from experiments.assign import moved_share
from experiments.config import ExperimentConfig
from serving import clock
from serving.config import ConfigError, Home, PolicyConfig, parse_config
from serving.store.eventlog import EventLog, EventLogError, audit_fields

log = logging.getLogger(__name__)
EXPERIMENT_KEY = "experiment"
POLICY_KEY = "policy"
SALT_FILE = "user_salt"
# The home-folder files of earlier versions, imported into the store once (`import_home_files`).
LEGACY_FILES = {"experiment.json": EXPERIMENT_KEY, "policy.json": POLICY_KEY, "rollout.json": "rollout"}
LEGACY_AUDIT = "audit.jsonl"
IMPORT_LOCK_WAIT_S = 120.0


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


def _read_saved(store: EventLog) -> tuple[ExperimentConfig | None, ExperimentConfig | None, bool]:
    """(the saved running experiment, the file's experiment it started from, whether the saved document predates
    `based_on`); None where absent or unreadable."""
    data = store.read_state(EXPERIMENT_KEY)
    if data is None:
        return None, None, False
    where = "the saved experiment (event store)"
    try:
        if "experiment" in data:
            saved = parse_config(data["experiment"], ExperimentConfig, where)
            based = data.get("based_on")
            return saved, None if based is None else parse_config(based, ExperimentConfig, where), False
        return parse_config(data, ExperimentConfig, where), None, True  # an experiment.json from before based_on
    except ConfigError as err:
        log.warning("ignoring %s: %s", where, err)
        return None, None, False


def load_state(store: EventLog, configured: ExperimentConfig) -> ExperimentConfig:
    """The running experiment: the saved one if it is the configured one (same name and salt), else the configured
    one. (A start writes what it runs, `reconcile` deciding; readers of the running layout call this.)"""
    saved, _, _ = _read_saved(store)
    if saved is None or (saved.name, saved.salt) != (configured.name, configured.salt):
        return configured
    return saved


def load_state_at(url: str, configured: ExperimentConfig) -> ExperimentConfig:
    """`load_state` from the store at `url` (opened for the call)."""
    from serving.store.eventlog import open_event_log

    store = open_event_log(url)
    try:
        return load_state(store, configured)
    finally:
        store.close()


def experiment_doc(
    store: EventLog, experiment: ExperimentConfig, based_on: ExperimentConfig | None = None
) -> dict[str, Any]:
    """The `experiment` state document for the running `experiment`; `based_on` (the file's experiment a start ran
    from) is kept from the saved document unless given."""
    if based_on is None:
        based_on = _read_saved(store)[1]
    return {
        "experiment": experiment.model_dump(mode="json"),
        "based_on": None if based_on is None else based_on.model_dump(mode="json"),
    }


def save_state(store: EventLog, experiment: ExperimentConfig, based_on: ExperimentConfig | None = None) -> None:
    """Save the running experiment (`experiment_doc`)."""
    store.write_state(EXPERIMENT_KEY, experiment_doc(store, experiment, based_on))


@dataclass(frozen=True)
class Start:
    """What a start runs (`experiment`); when it applies a hand edit of experiments.yaml over a saved layout,
    `previous` is the layout it replaces and `moved` the share of users that changes arm."""

    experiment: ExperimentConfig
    note: str | None = None
    previous: ExperimentConfig | None = None
    moved: float | None = None


def reconcile(store: EventLog, configured: ExperimentConfig) -> Start:
    """The experiment a start runs: the saved one (with its runtime changes) when experiments.yaml is unchanged
    since the app last started from it; the file's when the file was edited since, laid out from the saved ranges
    so as few users as possible change arm. An edit while a canary a rollout added is running cannot be applied
    safely: a ConfigError says how to reconcile."""
    saved, based_on, legacy = _read_saved(store)
    if saved is None or (saved.name, saved.salt) != (configured.name, configured.salt):
        return Start(configured)
    if legacy:
        return Start(saved, "the saved layout predates hand-edit detection: it is kept (from now on edits apply)")
    if based_on is None or configured == based_on:
        return Start(saved)
    added = sorted(set(saved.arms) - set(configured.arms) - set(based_on.arms))
    if added:
        raise ConfigError(
            f"experiments.yaml was edited while arm(s) {', '.join(added)} added by a rollout are running: finish or "
            "undo the rollout first (mailroute rollout status; mailroute rollback), then restart; or give the "
            "experiment a new name or salt to lay users out afresh"
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


def load_policy(store: EventLog, configured: PolicyConfig) -> tuple[PolicyConfig, str | None]:
    """The policy to serve with, and a sentence when it is not serving.yaml's: the runtime one saved by a change,
    unless serving.yaml's policy changed since that change (then the file's, a newer hand edit, wins)."""
    data = store.read_state(POLICY_KEY)
    if data is None:
        return configured, None
    where = "the runtime policy (event store)"
    try:
        saved = parse_config(data["policy"], PolicyConfig, where)
        based_on = parse_config(data["based_on"], PolicyConfig, where)
    except (ConfigError, KeyError, TypeError) as err:
        return configured, f"ignoring {where} ({' '.join(str(err).split())[:200]}): serving.yaml's policy"
    if based_on != configured:
        return configured, "serving.yaml's policy was edited after the runtime change: the edit wins"
    if saved == configured:
        return configured, None
    return saved, f"decision policy set at runtime on {data.get('ts', '?')}, not serving.yaml's"


def policy_doc(policy: PolicyConfig, based_on: PolicyConfig) -> dict[str, Any]:
    """The `policy` state document: the runtime policy and serving.yaml's, which it replaces."""
    return {"ts": clock.now().isoformat(), "policy": policy.model_dump(mode="json"),
            "based_on": based_on.model_dump(mode="json")}  # fmt: skip


def save_policy(store: EventLog, policy: PolicyConfig, based_on: PolicyConfig) -> None:
    store.write_state(POLICY_KEY, policy_doc(policy, based_on))


def audit_record(
    actor: str,
    old: dict[str, Any],
    new: dict[str, Any],
    moved: float | None = None,
    *,
    kind: str = "experiment",
    detail: str | None = None,
) -> dict[str, Any]:
    """One change for the audit log. `kind`: experiment (old/new are experiments: the SRM check reads their
    weights), policy, rollout, rollback, or a privacy run's."""
    record: dict[str, Any] = {"ts": clock.now().isoformat(), "actor": actor, "kind": kind, "old": old, "new": new}
    if moved is not None:
        record["moved_share"] = moved
    if detail:
        record["detail"] = detail
    return record


def audit(store: EventLog, actor: str, old: dict[str, Any], new: dict[str, Any], moved: float | None = None,
          *, kind: str = "experiment", detail: str | None = None) -> None:  # fmt: skip
    """Append one change (`audit_record`) to the audit log."""
    store.record_audit(audit_record(actor, old, new, moved, kind=kind, detail=detail))


def _legacy_doc(path: Path, key: str) -> dict[str, Any]:
    """A state file of an earlier version, read and checked as what it must hold (ConfigError naming it if not)."""
    from experiments.rollout.state import RolloutState

    def refused(why: str) -> ConfigError:
        return ConfigError(f"{path}: cannot import it into the event store ({' '.join(why.split())[:160]})")

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise refused(str(err)) from None
    if not isinstance(doc, dict):
        raise refused("not a JSON object")
    try:
        if key == EXPERIMENT_KEY:  # {"experiment": ..., "based_on": ...}, or an experiment from before based_on
            for part in [doc["experiment"], doc.get("based_on")] if "experiment" in doc else [doc]:
                if part is not None:
                    ExperimentConfig.model_validate(part)
        elif key == POLICY_KEY:
            PolicyConfig.model_validate(doc["policy"])
            PolicyConfig.model_validate(doc["based_on"])
        else:
            RolloutState.model_validate(doc)
    except (ValidationError, KeyError, TypeError) as err:
        raise refused(f"not a saved {key}: {err}") from None
    return doc


def _legacy_audit(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
            if record is not None:
                audit_fields(record)
        except (json.JSONDecodeError, EventLogError) as err:
            why = "not JSON" if isinstance(err, json.JSONDecodeError) else str(err)
            raise ConfigError(f"{path}, line {number}: {why}; fix or remove the line, then restart") from None
        if record is not None:
            records.append(record)
    return records


def import_home_files(store: EventLog, home: Home) -> list[str]:
    """Move the state files of a home from before the store held them into the store, once: a document the store
    already has is kept (the file is then stale); each file is renamed `<name>.imported` after. Returns a sentence
    per file moved. Every file is read and checked first, and everything is written in one transaction under the
    store's change lock (two starts at once import each record once): a file that is not what it should be is a
    ConfigError naming it, and nothing is imported."""

    def present() -> dict[str, Path]:
        return {name: home.root / name for name in [*LEGACY_FILES, LEGACY_AUDIT] if (home.root / name).is_file()}

    if not present():
        return []
    lock = store.change_lock()
    lock.acquire(timeout=IMPORT_LOCK_WAIT_S)
    try:
        found = present()  # again, under the lock: another start may have imported them while we waited
        docs = {LEGACY_FILES[n]: _legacy_doc(p, LEGACY_FILES[n]) for n, p in found.items() if n in LEGACY_FILES}
        records = _legacy_audit(found[LEGACY_AUDIT]) if LEGACY_AUDIT in found else []
        kept = {key for key in docs if store.read_state(key) is not None}
        known = {json.dumps(r, sort_keys=True) for r in store.audit_records()} if records else set()
        new = [r for r in records if json.dumps(r, sort_keys=True) not in known]  # an import that died half way
        store.record_change({k: d for k, d in docs.items() if k not in kept}, new)
        done = []
        for name, path in found.items():
            path.rename(path.with_name(f"{name}.imported"))
            if name == LEGACY_AUDIT:
                done.append(f"{path}: {len(records)} audit records moved into the store")
            else:
                key = LEGACY_FILES[name]
                done.append(
                    f"{path}: {'the store already had its state; kept that' if key in kept else 'moved into the store'}"
                )
        return done
    finally:
        lock.release()
