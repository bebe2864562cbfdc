"""The rollout commands' refusals without a server or a token: one line on stderr and an exit code, nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    from serving.store.sqlite import SQLiteEventLog

    now = "2026-03-02T12:00:00+00:00"
    store = SQLiteEventLog(tmp_path / "events.db")
    save(store, RolloutState(model="linear", candidate="v2", previous="v1", arm="linear", canary_arm="linear-canary",
                             arm_weight=0.5, steps=(10, 100), step=0, status="running", started=now,
                             step_started=now))  # fmt: skip
    store.close()
    code, err = _run(capsys, "--home", str(tmp_path), "models", "promote", "linear:v2")
    assert code == 1 and "a rollout of linear:v2 is running" in err and len(err.splitlines()) == 1


def _answering(status: int, body: bytes, content_type: str) -> Any:
    """A real HTTP server on loopback that answers every request with `status` and `body`."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_401_says_which_variable_holds_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a refused token said only the server's detail; the command line's variable went unnamed."""
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "a-revoked-token-0123456789")
    server = _answering(401, b'{"detail": "listing the experiment needs a valid token"}', "application/json")
    try:
        code, err = _run(capsys, "rollout", "status", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert code == 1 and len(err.splitlines()) == 1 and "HTTP 401" in err and "$MAILROUTE_TOKEN" in err


def test_a_proxys_html_error_page_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "t")
    page = b"<html>\n<body>\n<h1>502 Bad Gateway</h1>\nThe server returned an invalid response.\n</body>\n</html>\n"
    server = _answering(502, page, "text/html")
    try:
        code, err = _run(capsys, "rollback", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert code == 1 and len(err.splitlines()) == 1 and "HTTP 502" in err and "Bad Gateway" in err


def test_an_unreachable_server_is_not_called_an_http_status(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILROUTE_ADMIN_TOKEN", "t")
    code, err = _run(capsys, "rollback", "--url", "http://127.0.0.1:9")
    assert code == 1 and "HTTP 503" not in err and "cannot reach" in err


def test_the_token_is_found_away_from_the_projects_configs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found in review: run outside the project, the token lookup itself failed on the missing serving.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILROUTE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("MAILROUTE_TOKEN", "t")
    code = main(["rollback", "--url", "http://127.0.0.1:9"])
    _, err = capsys.readouterr()
    assert code == 1 and "config" not in err and "cannot reach" in err, err
