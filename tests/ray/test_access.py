"""Access by role on the real Serve app, over HTTP: each role reaches only its own calls, identities come from the
token (the audit's who, the feedback's agent), an email_id is one client's key, tokens change without a restart,
no secret travels in Serve's config, the experiment is read without its salt, and the OpenAPI schema declares the
bearer scheme that /docs uses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_app import (
    ADMIN,
    AGENT_TOKEN,
    AS_AGENT,
    AS_CLIENT,
    CLIENT_TOKEN,
    TOKEN,
    audit_records,
    register_models,
    running_app,
    small_serving_config,
    two_arm_experiment,
)

from serving.auth import add_token, revoke_token
from serving.config import Home
from serving.store.eventlog import open_event_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EMAIL = {"user_id": "u-1", "subject": "Invoice", "body": "please send me a copy of last month's invoice"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("access-home"))
    register_models(home)
    with running_app(home, serve_port, small_serving_config(), two_arm_experiment()) as running:
        running["bare"] = httpx.Client(base_url=running["url"], timeout=30)  # no token unless a call gives one
        yield running
        running["bare"].close()


def _call(app: dict[str, Any], method: str, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
    return app["bare"].request(method, path, json=body, headers=headers)


def test_no_token_or_a_wrong_one_is_401_and_says_nothing_of_the_tokens(app: dict[str, Any]) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token-not-a-token"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in (("POST", "/v1/route", EMAIL), ("POST", "/v1/feedback", {"request_id": "x" * 32,
                                   "true_queue": "billing"}), ("GET", "/v1/experiments", None)):  # fmt: skip
            answer = _call(app, method, path, headers, body)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            detail = answer.json()["detail"]
            assert "\n" not in detail and not any(word in detail for word in ("gateway", "ana", "admin"))


def test_a_stranger_learns_nothing_of_the_body_rules(app: dict[str, Any]) -> None:
    for path, body in (("/v1/route", {"nonsense": 1}), ("/v1/feedback", []), ("/v1/route/batch", {"x": 1})):
        assert _call(app, "POST", path, {}, body).status_code == 401, path  # not a 422 describing the body


def test_each_role_reaches_only_its_own_calls(app: dict[str, Any]) -> None:
    routed = _call(app, "POST", "/v1/route", AS_CLIENT, EMAIL)
    assert routed.status_code == 200
    request_id = routed.json()["request_id"]
    feedback = {"request_id": request_id, "true_queue": "billing", "handling_seconds": 30}
    change = {"coverage": 1.0}
    # the client: route only
    assert _call(app, "POST", "/v1/feedback", AS_CLIENT, feedback).status_code == 403
    assert _call(app, "GET", "/v1/experiments", AS_CLIENT).status_code == 403
    assert _call(app, "PUT", "/v1/experiments/t-exp", AS_CLIENT, change).status_code == 403
    assert _call(app, "POST", "/v1/rollback", AS_CLIENT, {}).status_code == 403
    assert _call(app, "GET", "/dashboard", AS_CLIENT).status_code == 403
    assert _call(app, "POST", "/v1/route", AS_CLIENT, {**EMAIL, "force_arm": "linear"}).status_code == 403
    # the agent: feedback, labelling, the dashboard; never routing or the experiment
    assert _call(app, "POST", "/v1/route", AS_AGENT, EMAIL).status_code == 403
    assert _call(app, "PUT", "/v1/experiments/t-exp", AS_AGENT, change).status_code == 403
    assert _call(app, "GET", "/v1/policy", AS_AGENT).status_code == 403
    assert _call(app, "POST", "/v1/feedback", AS_AGENT, {**feedback, "agent_id": "bob"}).status_code == 403
    assert _call(app, "POST", "/v1/feedback", AS_AGENT, feedback).status_code == 200
    assert _call(app, "GET", "/dashboard/label", AS_AGENT).status_code == 200
    stored = open_event_log(f"sqlite:///{app['home'].event_log}").get_feedback(request_id)
    assert stored is not None and stored.agent_id == "ana"  # from the token
    # the admin: everything
    assert _call(app, "POST", "/v1/route", ADMIN, {**EMAIL, "force_arm": "linear"}).status_code == 200
    assert _call(app, "GET", "/v1/experiments", ADMIN).status_code == 200
    assert _call(app, "GET", "/dashboard", ADMIN).status_code == 200


def test_the_audit_names_the_tokens_holder_never_a_header(app: dict[str, Any]) -> None:
    headers = {**ADMIN, "X-Actor": "mallory"}
    answer = _call(app, "PUT", "/v1/experiments/t-exp", headers, {"arms": {"linear": 0.6, "transformer": 0.4}})
    assert answer.status_code == 200, answer.text
    last = audit_records(app["home"])[-1]
    assert last["actor"] == "admin" and "mallory" not in json.dumps(last)


def test_the_experiment_is_read_without_its_salt(app: dict[str, Any]) -> None:
    shown = _call(app, "GET", "/v1/experiments", ADMIN)
    assert shown.status_code == 200 and "salt" not in shown.json()["experiment"] and "t-salt" not in shown.text
    changed = _call(app, "PUT", "/v1/experiments/t-exp", ADMIN, {"coverage": 1.0})
    assert changed.status_code == 200 and "t-salt" not in changed.text


def test_an_email_id_is_one_clients_key(app: dict[str, Any]) -> None:
    body = {**EMAIL, "email_id": "shared-7"}
    mine = _call(app, "POST", "/v1/route", AS_CLIENT, body).json()
    theirs = _call(app, "POST", "/v1/route", ADMIN, body).json()  # another client guessing or reusing the id
    assert theirs["request_id"] != mine["request_id"]
    assert _call(app, "POST", "/v1/route", AS_CLIENT, body).json()["request_id"] == mine["request_id"]


def test_tokens_added_and_revoked_take_effect_without_a_restart(app: dict[str, Any]) -> None:
    path = app["home"].root / "secrets.yaml"
    late = {"Authorization": f"Bearer {add_token(path, 'late-gateway', 'client')}"}

    def settles_on(wanted: int) -> list[int]:
        """Answers until 20 calls in a row (spread over several router replicas and more than RECHECK_S) give
        `wanted`; every replica re-reads the file on its own, so one replica's 200 is not yet everyone's."""
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while seen[-20:] != [wanted] * 20 and time.monotonic() < deadline:
            seen.append(_call(app, "POST", "/v1/route", late, EMAIL).status_code)
            time.sleep(0.1)
        return seen

    added = settles_on(200)
    assert added[-20:] == [200] * 20, added
    assert revoke_token(path, "late-gateway")
    revoked = settles_on(401)
    assert revoked[-20:] == [401] * 20, revoked
    assert _call(app, "POST", "/v1/route", AS_CLIENT, EMAIL).status_code == 200  # the others' tokens still work


def test_no_secret_travels_in_serves_config(app: dict[str, Any]) -> None:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    configs = ray.get(controller.get_app_configs.remote())
    text = json.dumps({name: cfg.model_dump(mode="json") for name, cfg in configs.items()})
    salt = (app["home"].root / "user_salt").read_text().strip()
    for secret in (TOKEN, CLIENT_TOKEN, AGENT_TOKEN, salt):
        assert secret not in text
    for name, cfg in configs.items():
        app_config = cfg.model_dump(mode="json")
        assert "secrets" not in (app_config.get("args") or {}), name
        assert set((app_config.get("runtime_env") or {}).get("env_vars") or {}) <= {"MAILROUTE_CLOCK"}, name


def test_the_openapi_schema_declares_the_bearer_scheme_and_docs_work(app: dict[str, Any]) -> None:
    schema = app["bare"].get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    for path, method in (("/v1/route", "post"), ("/v1/feedback", "post"), ("/v1/experiments", "get")):
        assert schema["paths"][path][method].get("security"), path
    docs = app["bare"].get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_process_without_rays_token_cannot_join_the_cluster(app: dict[str, Any]) -> None:
    """Ray's ports listen on every interface: its token authentication is what keeps a stranger from joining the
    cluster and running code in it (reading the secrets, applying a Serve config). The same script with the
    token joins, so the refusal is the token's."""
    import os
    import subprocess
    import sys

    import ray

    address = ray.get_runtime_context().gcs_address
    script = f"import ray\nray.init(address={address!r}, log_to_driver=False)\nprint('joined', flush=True)"

    def join(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})  # fmt: skip

    stranger = join(RAY_AUTH_TOKEN="not-the-clusters-token-0123456789abcdef")
    assert stranger.returncode != 0 and "joined" not in stranger.stdout, stranger.stdout[-500:]
    assert "joined" in join().stdout
