"""Where the event log is: the URL each process resolves for itself, and the checks that keep a wrong `--home`
from reading as an empty log.

The URL comes from `$MAILROUTE_EVENT_LOG_URL`, else the secrets file's `event_log_url`, else serving.yaml's
`event_log.url` (which may not carry a password), else the embedded SQLite file `<home>/events.db`. Every process
that opens the log (a router or arm replica, a scheduled job, a command) resolves it here, so a URL with a password
never travels in the Serve config or a config file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.auth import read_secrets, secrets_path
from serving.config import EVENT_LOG_URL_ENV, ConfigError, Home, ServingConfig
from serving.store.eventlog import EventLog, EventLogError, open_event_log, url_label


def event_log_url(serving: ServingConfig, home: Home) -> str:
    """The event log's URL for these settings (see the module's docstring for the order)."""
    from_env = os.environ.get(EVENT_LOG_URL_ENV)
    if from_env:
        return from_env
    secrets = secrets_path(serving, home)
    from_file = read_secrets(secrets).event_log_url if secrets.is_file() else None
    return from_file or serving.event_log.url or f"sqlite:///{home.event_log}"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (`sqlite:///path` or a bare path); None for any other store."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Path(url)
    return Path(rest.removeprefix("/")) if scheme == "sqlite" else None


def is_missing(url: str) -> bool:
    """Whether the URL names a SQLite file that does not exist yet (nothing routed yet, or a wrong --home)."""
    path = sqlite_path(url)
    return path is not None and not path.exists()


def existing_event_log_url(serving: ServingConfig, home: Home) -> str:
    """The URL of a log there is something to read in: a missing SQLite file is a FileNotFoundError (opening it
    would create an empty log, which a report or an export would read as "nothing happened"), an in-memory store an
    EventLogError."""
    url = event_log_url(serving, home)
    if url == "memory://":
        raise EventLogError("the event log is in memory (memory://): there is no log to read")
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"no event log at {path}: nothing was routed yet (check --home)")
    return url


def open_existing_event_log(serving: ServingConfig, home: Home) -> EventLog:
    """`open_event_log` of `existing_event_log_url`."""
    return open_event_log(existing_event_log_url(serving, home))


@contextmanager
def existing_store(serving: ServingConfig, home: Home) -> Iterator[EventLog | None]:
    """The event store, opened for a `with` block, to read the shared state (the saved layout, policy, rollout);
    None when its SQLite file does not exist yet (nothing ran: nothing saved), so a read creates no file."""
    url = event_log_url(serving, home)
    if is_missing(url):
        yield None
        return
    store = open_event_log(url)
    try:
        yield store
    finally:
        store.close()


def is_shared(store: EventLog, nodes: int) -> bool:
    """Whether replicas may run on several machines: a Ray cluster of more than one node, or an event store every
    node can reach (a database server, not a SQLite file or memory)."""
    url = store.sql_url
    return nodes > 1 or (url is not None and not url.startswith("sqlite"))


def require_shared_storage(url: str | None, nodes: int) -> None:
    """On a Ray cluster of several nodes, the event log must be a database and the registry a URI that every node
    reaches: a node's own SQLite file or home registry would split the log, the shared state and the models
    between nodes. A ConfigError naming what to set; nothing on one node. `url` None: the registry only."""
    from serving.models.registry import REGISTRY_URI_ENV

    if nodes <= 1:
        return
    if url is not None and (url == "memory://" or sqlite_path(url) is not None):
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes but the event log is {url_label(url)}, one node's own: set "
            f"{EVENT_LOG_URL_ENV}=postgresql://... (README, Running on a cluster)"
        )
    if not os.environ.get(REGISTRY_URI_ENV):
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes but the model registry is each node's <home>/registry: set "
            f"{REGISTRY_URI_ENV} to storage every node reaches (s3://..., or file:// on a shared filesystem)"
        )


def ray_nodes() -> int:
    """How many live nodes the Ray this process is connected to has (1 when it is not connected)."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1
