"""Where each process finds the event log: the environment, the secrets file, serving.yaml, the home's file — and
a URL with a password is never accepted from a config file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import EVENT_LOG_URL_ENV, ConfigError, Home, ServingConfig, parse_config
from serving.store.eventlog import EventLogError, url_label
from serving.store.location import (
    event_log_url,
    existing_event_log_url,
    is_missing,
    require_shared_storage,
    sqlite_path,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOG_URL_ENV, raising=False)
    monkeypatch.delenv("MAILROUTE_SECRETS_FILE", raising=False)


def test_the_environment_wins_then_the_secrets_file_then_serving_yaml_then_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path)
    assert event_log_url(ServingConfig(), home) == f"sqlite:///{tmp_path / 'events.db'}"
    configured = ServingConfig.model_validate({"event_log": {"url": "postgresql://mr@db:5432/mailroute"}})
    assert event_log_url(configured, home) == "postgresql://mr@db:5432/mailroute"
    (tmp_path / "secrets.yaml").write_text(yaml.safe_dump({"event_log_url": "postgresql://mr:pw-file@db/mr"}))
    assert event_log_url(configured, home) == "postgresql://mr:pw-file@db/mr"
    monkeypatch.setenv(EVENT_LOG_URL_ENV, "postgresql://mr:pw-env@db/mr")
    assert event_log_url(configured, home) == "postgresql://mr:pw-env@db/mr"


def test_a_password_in_serving_yaml_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"event_log": {"url": "postgresql://mr:hunter2-secret@db/mr"}}, ServingConfig, "serving.yaml")
    message = str(refused.value)
    assert "password" in message and EVENT_LOG_URL_ENV in message and "hunter2" not in message
    assert "\n" not in message
    # A user name alone, or an '@' after the host, is no password.
    parse_config({"event_log": {"url": "postgresql://mr@db/mr"}}, ServingConfig, "serving.yaml")
    parse_config({"event_log": {"url": "sqlite:///data/a@b.db"}}, ServingConfig, "serving.yaml")


def test_a_missing_file_is_said_and_memory_has_nothing_to_read(tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert sqlite_path("postgresql://mr@db/mr") is None and sqlite_path("events.db") == Path("events.db")
    assert is_missing(f"sqlite:///{tmp_path / 'events.db'}") and not is_missing("postgresql://mr@db/mr")
    with pytest.raises(FileNotFoundError, match=r"no event log at .*events\.db: nothing was routed yet"):
        existing_event_log_url(ServingConfig(), home)
    assert not (tmp_path / "events.db").exists()  # the check creates nothing
    with pytest.raises(EventLogError, match="in memory"):
        existing_event_log_url(ServingConfig.model_validate({"event_log": {"url": "memory://"}}), home)


@pytest.mark.parametrize(
    "url",
    ["postgresql://mr:hunter2@db/mr", "postgresql://mr@db/mr?password=hunter2",
     "postgresql://mr@db/mr?sslmode=require&sslpassword=hunter2"],
)  # fmt: skip
def test_a_config_url_with_a_password_anywhere_is_refused_without_showing_it(url: str) -> None:
    """Found in review: only user:password@ was checked, so ?password= passed into serving.yaml (and from there
    into the Serve config and the dashboard)."""
    with pytest.raises(ConfigError, match="carries a password") as err:
        parse_config({"event_log": {"url": url}}, ServingConfig, "serving.yaml")
    assert "hunter2" not in str(err.value)


def test_a_store_is_named_without_its_password_or_query() -> None:
    shown = url_label("postgresql+psycopg://mr:hunter2@db.internal:5432/mr?password=hunter2&sslmode=require")
    assert shown == "postgresql+psycopg://mr@db.internal:5432/mr"
    assert url_label("sqlite:////var/lib/mailroute/events.db") == "sqlite:////var/lib/mailroute/events.db"
    assert url_label("memory://") == "memory://"


@pytest.mark.parametrize(
    ("url", "registry", "names"),
    [
        ("sqlite:////srv/mailroute/events.db", "file:///shared/registry", EVENT_LOG_URL_ENV),
        ("memory://", "file:///shared/registry", EVENT_LOG_URL_ENV),
        ("postgresql://mr@db/mr", None, "MAILROUTE_REGISTRY_URI"),
    ],
)
def test_several_nodes_need_a_store_and_a_registry_every_node_reaches(
    url: str, registry: str | None, names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one node anything goes; on several, a node's own SQLite file or home registry would split the log and
    the models between the nodes: refused, naming the variable to set."""
    if registry:
        monkeypatch.setenv("MAILROUTE_REGISTRY_URI", registry)
    else:
        monkeypatch.delenv("MAILROUTE_REGISTRY_URI", raising=False)
    require_shared_storage(url, nodes=1)
    with pytest.raises(ConfigError, match=names) as refused:
        require_shared_storage(url, nodes=2)
    assert "2 nodes" in str(refused.value) and "\n" not in str(refused.value)


def test_a_database_and_a_shared_registry_pass_on_several_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", "s3://models/mailroute/registry")
    require_shared_storage("postgresql://mr@db/mr", nodes=3)
