"""`mailroute tokens add|revoke|list`: a token printed once and stored as its digest (0600), rotation, revocation,
the environment's tokens listed beside the file's, and every refusal one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from serving.auth import TokenStore, digest
from serving.cli import main
from serving.config import Home, ServingConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MAILROUTE_TOKEN_") or n == "MAILROUTE_ADMIN_TOKEN"]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("MAILROUTE_SECRETS_FILE", raising=False)


def _run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), "--config-dir", str(REPO / "configs"), "tokens", *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_add_prints_the_token_once_and_stores_its_digest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, token, err = _run(capsys, tmp_path, "add", "--holder", "gateway-eu", "--role", "client")
    secrets = tmp_path / "secrets.yaml"
    assert code == 0 and len(token) >= 32 and "shown only now" in err
    assert token not in secrets.read_text() and digest(token) in secrets.read_text()
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    found = TokenStore(ServingConfig(), Home(tmp_path), {}).authenticate(f"Bearer {token}")
    assert found is not None and (found.holder, found.role) == ("gateway-eu", "client")
    code, rotated, _ = _run(capsys, tmp_path, "add", "--holder", "gateway-eu", "--role", "client")
    assert code == 0 and rotated != token and digest(token) not in secrets.read_text()  # a rotation


def test_list_shows_holders_and_roles_from_the_file_and_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(capsys, tmp_path, "add", "--holder", "ana", "--role", "agent")
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "admin-token-0123456789")
    code, out, _ = _run(capsys, tmp_path, "list", "--json")
    assert code == 0 and json.loads(out) == {"admin": {"role": "admin", "from": "environment"},
                                              "ana": {"role": "agent", "from": "file"}}  # fmt: skip
    assert "admin-token-0123456789" not in out


def test_revoke_removes_a_token_and_warns_when_the_environment_has_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(capsys, tmp_path, "add", "--holder", "admin", "--role", "admin")
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "admin-token-0123456789")
    code, out, err = _run(capsys, tmp_path, "revoke", "--holder", "admin")
    assert code == 0 and out == "revoked the token of admin" and "valid again" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("revoke", "--holder", "nobody"), "has no token for 'nobody'"),
        (("add", "--holder", "gw", "--role", "root"), "root"),
        (("add", "--holder", "bad holder!", "--role", "client"), "holder 'bad holder!'"),
    ],
)
def test_refusals_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    code, _, err = _run(capsys, tmp_path, *args)
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
