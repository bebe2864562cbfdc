"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) on the real Serve app: whatever a caller sends,
the answer is a status the schema documents, with a body the schema describes, and never a 5xx. Run with each role's
token and with none, so the refusals are checked as well as the answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from serve_app import ADMIN, AS_AGENT, AS_CLIENT, register_models, running_app, small_serving_config, two_arm_experiment

from serving.config import Home

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    home = Home(tmp_path_factory.mktemp("fuzz-home"))
    register_models(home)
    with running_app(home, serve_port, small_serving_config(), two_arm_experiment()) as running:
        yield running


ROLES = {"nobody": {}, "client": AS_CLIENT, "agent": AS_AGENT, "admin": ADMIN}
# What JSON Schema cannot say is refused with a 422 although the schema allows it: an email with no text left
# after cleaning, a raw message that is not one, a queue that is not in the configured taxonomy, a change the running
# experiment does not allow (a version not in the registry, weights that do not sum to 1). Those refusals are tested
# by name (tests/ray/test_serving.py, tests/ray/test_changes.py, tests/unit/test_mail_hostile.py); for these
# operations every other check runs.
SEMANTIC = ("/v1/route", "/v1/feedback", "/v1/experiments/", "/v1/policy", "/v1/rollout", "/v1/rollback")


def _fuzz(operation: Any, headers: dict[str, str]) -> None:
    excluded = [schemathesis.checks.positive_data_acceptance] if operation.path.startswith(SEMANTIC) else []

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, timeout=60, excluded_checks=excluded)

    check()


@pytest.mark.parametrize("who", list(ROLES))
def test_every_operation_answers_as_its_schema_says(app: dict[str, Any], who: str) -> None:
    schema = schemathesis.openapi.from_url(f"{app['url']}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9  # route, batch, feedback, experiments (get, put), policy (get, put), rollout, ...
    failures: list[str] = []
    for operation in operations:
        try:
            _fuzz(operation, ROLES[who])
        except Exception as err:  # every failing operation is reported, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {' '.join(str(err).split())[:600]}")
    assert not failures, "\n".join(failures)
