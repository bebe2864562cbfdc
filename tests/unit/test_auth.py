"""Tokens by holder and role: the secrets file and the environment, rotation without a restart, the rights of each
role, and authentication switched off only by the config flag (loudly)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from serving.auth import (
    ANONYMOUS,
    RIGHTS,
    AuthError,
    TokenStore,
    add_token,
    digest,
    read_secrets,
    resolve_user_salt,
    revoke_token,
)
from serving.config import ConfigError, Home, ServingConfig
from serving.ops.launch import check_access

pytestmark = pytest.mark.unit
AGENT = "agent-ana-token-0123456789"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    for name in [n for n in os.environ if n.startswith("MAILROUTE_TOKEN_") or n == "MAILROUTE_ADMIN_TOKEN"]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("MAILROUTE_SECRETS_FILE", raising=False)
    monkeypatch.setattr("serving.auth.RECHECK_S", 0.0)  # look at the file on every call
    return Home(tmp_path / "home")


def store(home: Home, environ: dict[str, str] | None = None, **auth: object) -> TokenStore:
    return TokenStore(ServingConfig.model_validate({"auth": auth}), home, environ or {})


def test_file_and_environment_tokens_name_their_holder_and_role(home: Home) -> None:
    home.root.mkdir(parents=True)
    (home.root / "secrets.yaml").write_text(
        f"tokens:\n  ana: {{role: agent, token: {AGENT}}}\n"
        f"  gateway: {{role: client, sha256: {digest('gateway-token-0123456789')}}}\n"
    )
    env = {"MAILROUTE_TOKEN_OPS_TEAM": "admin:ops-token-0123456789", "MAILROUTE_ADMIN_TOKEN": "root-token-0123456789"}
    tokens = store(home, env)
    given = (AGENT, "gateway-token-0123456789", "ops-token-0123456789", "root-token-0123456789")
    found = {t: tokens.authenticate(f"Bearer {t}") for t in given}
    assert [(p.holder, p.role) for p in found.values() if p] == [
        ("ana", "agent"), ("gateway", "client"), ("ops-team", "admin"), ("admin", "admin")
    ]  # fmt: skip
    assert tokens.authenticate(None) is None and tokens.authenticate("Bearer wrong-wrong-wrong") is None
    assert tokens.authenticate(f"Basic {AGENT}") is None
    assert tokens.authenticate(f"bearer {AGENT}") is not None  # the scheme is case-insensitive (RFC 7235)


def test_each_role_has_exactly_its_rights(home: Home) -> None:
    assert RIGHTS["client"] == {"route"}
    assert RIGHTS["agent"] == {"feedback", "label", "dashboard"}
    assert RIGHTS["admin"] == {"route", "feedback", "label", "dashboard", "admin"}
    tokens = store(home, {"MAILROUTE_TOKEN_GW": "client:gateway-token-0123456789"})
    with pytest.raises(AuthError) as err:
        tokens.require(None, "route", "routing")
    assert err.value.status == 401 and "\n" not in err.value.detail
    with pytest.raises(AuthError) as err:
        tokens.require("Bearer not-a-token-at-all", "route", "routing")
    assert err.value.status == 401 and "gw" not in err.value.detail  # says nothing of which tokens exist
    with pytest.raises(AuthError) as err:
        tokens.require("Bearer gateway-token-0123456789", "feedback", "feedback")
    assert err.value.status == 403
    assert tokens.require("Bearer gateway-token-0123456789", "route", "routing").holder == "gw"


def test_tokens_added_rotated_and_revoked_in_the_file_apply_without_a_restart(home: Home) -> None:
    path = home.root / "secrets.yaml"
    tokens = store(home)
    first = add_token(path, "gateway", "client")
    assert tokens.authenticate(f"Bearer {first}") is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and first not in path.read_text()  # only its digest
    rotated = add_token(path, "gateway", "client")
    assert tokens.authenticate(f"Bearer {rotated}") is not None and tokens.authenticate(f"Bearer {first}") is None
    assert revoke_token(path, "gateway") and not revoke_token(path, "gateway")
    assert tokens.authenticate(f"Bearer {rotated}") is None


def test_an_edit_that_keeps_the_files_size_time_and_inode_still_applies(home: Home) -> None:
    """An editor rewriting the file in place within one timestamp tick (or restoring its time) changes none of
    size, mtime and inode: the store compares what the file says, not its metadata."""
    path = home.root / "secrets.yaml"
    old, new = "gateway-token-0123456789", "gateway-token-9876543210"
    path.parent.mkdir(parents=True)
    path.write_text(f"tokens:\n  gateway: {{role: client, token: {old}}}\n")
    before = path.stat()
    tokens = store(home)
    assert tokens.authenticate(f"Bearer {old}") is not None
    with path.open("r+") as fh:  # same inode, same size
        fh.write(f"tokens:\n  gateway: {{role: client, token: {new}}}\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert tokens.authenticate(f"Bearer {new}") is not None and tokens.authenticate(f"Bearer {old}") is None


def test_a_broken_file_is_an_error_at_start_and_keeps_the_last_good_tokens_later(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    path = home.root / "secrets.yaml"
    token = add_token(path, "gateway", "client")
    tokens = store(home)
    path.write_text("tokens: [oops")
    with caplog.at_level(logging.ERROR, "serving.auth"):
        assert tokens.authenticate(f"Bearer {token}") is not None
    assert "keeping the previous tokens" in caplog.text and "oops" not in caplog.text  # no excerpt of a secrets file
    with pytest.raises(ConfigError, match="YAML syntax error"):
        store(home)
    path.write_text("tokens:\n  gateway: {role: root, token: gateway-token-0123456789}\n")
    with pytest.raises(ConfigError, match="role"):
        read_secrets(path)
    path.write_text("tokens:\n  'bad holder!': {role: client, token: gateway-token-0123456789}\n")
    with pytest.raises(ConfigError, match="holder name"):
        read_secrets(path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILROUTE_TOKEN_GW": "gateway-token-0123456789"}, "expected <role>:<token>"),
        ({"MAILROUTE_TOKEN_GW": "root:gateway-token-0123456789"}, "expected <role>:<token>"),
        ({"MAILROUTE_ADMIN_TOKEN": "short"}, "at least 16 characters"),
        ({"MAILROUTE_TOKEN_GW": "client:sh0rt-s3cret"}, "at least 16 characters"),  # was pydantic's, with the value
    ],
)
def test_bad_token_variables_are_one_line_errors(home: Home, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        store(home, env)
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)  # never the secret itself


def test_no_token_at_all_refuses_to_start_and_auth_off_warns_at_every_start(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="no access token is configured"):
        check_access(ServingConfig(), home)
    off = ServingConfig.model_validate({"auth": {"enabled": False}})
    for _ in range(2):
        with caplog.at_level(logging.WARNING, "serving.ops.launch"):
            check_access(off, home)
    assert caplog.text.count("AUTHENTICATION IS OFF") == 2
    assert store(home, enabled=False).authenticate(None) is ANONYMOUS


def test_the_user_salt_comes_from_the_environment_then_the_secrets_file_then_the_home(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving = ServingConfig()
    made = resolve_user_salt(serving, home)
    assert made == (home.root / "user_salt").read_text().strip()
    (home.root / "secrets.yaml").write_text("user_salt: from-the-secrets-file-0123\n")
    assert resolve_user_salt(serving, home) == "from-the-secrets-file-0123"
    monkeypatch.setenv("MAILROUTE_USER_SALT", "from-the-environment")
    assert resolve_user_salt(serving, home) == "from-the-environment"


def test_on_a_cluster_the_user_salt_must_be_a_shared_secret(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """A salt made in one node's home would give another node's replicas other pseudonyms for the same user: with
    several nodes, or a store they all share, the start refuses without a salt from the environment or the secrets
    file, and says where to put one."""
    monkeypatch.delenv("MAILROUTE_USER_SALT", raising=False)
    serving = ServingConfig()
    with pytest.raises(ConfigError, match="MAILROUTE_USER_SALT") as err:
        resolve_user_salt(serving, home, shared=True)
    assert "\n" not in str(err.value) and not (home.root / "user_salt").exists()
    home.root.mkdir(parents=True)
    (home.root / "secrets.yaml").write_text("user_salt: from-the-secrets-file-0123\n")
    assert resolve_user_salt(serving, home, shared=True) == "from-the-secrets-file-0123"
    monkeypatch.setenv("MAILROUTE_USER_SALT", "from-the-environment")
    assert resolve_user_salt(serving, home, shared=True) == "from-the-environment"


def test_a_store_is_shared_on_several_nodes_or_on_a_database_server(tmp_path: Path, postgres: Any) -> None:
    from serving.store.location import is_shared
    from serving.store.memory import MemoryEventLog
    from serving.store.postgres import PostgresEventLog
    from serving.store.sqlite import SQLiteEventLog

    local = SQLiteEventLog(tmp_path / "events.db")
    server = PostgresEventLog(postgres.fresh_url())
    try:
        assert not is_shared(local, 1) and is_shared(local, 2) and not is_shared(MemoryEventLog(), 1)
        assert is_shared(server, 1)
    finally:
        local.close()
        server.close()
