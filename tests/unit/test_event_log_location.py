"""Where each process finds the event log: the environment, the secrets file, serving.yaml, the home's file — and
a URL with a password is never accepted from a config file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import EVENT_LOG_URL_ENV, ConfigError, Home, ServingConfig, parse_config
from serving.store.eventlog import EventLogError
from serving.store.location import event_log_url, existing_event_log_url, is_missing, sqlite_path

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
