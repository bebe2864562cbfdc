"""The rollout commands' refusals without a server or a token: one line on stderr and an exit code, nothing sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--config-dir", str(REPO / "configs"), *args])
    _, err = capsys.readouterr()
    return code, err.strip()


@pytest.mark.parametrize(
    "args",
    [("rollout", "start", "linear:v2"), ("rollout", "status"), ("rollback",), ("rollback", "linear")],
)
def test_without_the_admin_token_nothing_is_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.delenv("MAILROUTE_ADMIN_TOKEN", raising=False)
    code, err = _run(capsys, *args, "--url", "http://127.0.0.1:9")
    assert code == 1 and len(err.splitlines()) == 1
    assert "needs an admin token in $MAILROUTE_TOKEN or $MAILROUTE_ADMIN_TOKEN" in err


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "t")
    code, err = _run(capsys, "rollback", "--url", "http://127.0.0.1:9")
    assert code == 1 and len(err.splitlines()) == 1 and "cannot reach http://127.0.0.1:9" in err


@pytest.mark.parametrize("percent", ["0", "100", "-5"])
def test_a_canary_share_outside_0_and_100_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, percent: str
) -> None:
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "t")
    code, err = _run(capsys, "rollout", "start", "linear:v2", "--canary", percent, "--url", "http://127.0.0.1:9")
    assert code == 2 and len(err.splitlines()) == 1 and "--canary" in err


def test_models_promote_refuses_the_model_of_a_running_rollout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from experiments.rollout.state import RolloutState, save
    from serving.config import Home

    now = "2026-03-02T12:00:00+00:00"
    save(Home(tmp_path), RolloutState(model="linear", candidate="v2", previous="v1", arm="linear",
                                      canary_arm="linear-canary", arm_weight=0.5, steps=(10, 100), step=0,
                                      status="running", started=now, step_started=now))  # fmt: skip
    code, err = _run(capsys, "--home", str(tmp_path), "models", "promote", "linear:v2")
    assert code == 1 and "a rollout of linear:v2 is running" in err and len(err.splitlines()) == 1
