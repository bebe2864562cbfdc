"""A rules arm in the real Serve app, beside a model arm: registered from configs/rules.yaml like a model (kind
`rules`), its answers name the rule that fired, no rule is triage, and a new rules version reaches the running
replicas through the admin API (reconfigure, no restart) while the old one serves until it is ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from serve_app import ADMIN, QUEUES, register_models, running_app, small_serving_config, two_arm_experiment, wait_for

from serving.config import Home, load_serving
from training.pipeline import DataSpec
from training.rules import register_rules
from training.synth import generate, write_corpus

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RULES = Path(__file__).resolve().parents[2] / "configs" / "rules.yaml"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None, serve_port: int) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("rules-arm")
    home = Home(folder / "home")
    register_models(home)
    corpus = folder / "mail.jsonl"
    write_corpus(generate(1200, seed=51), corpus)
    spec = DataSpec(corpus, label_col="queue")
    threshold = load_serving().policy.confidence_threshold
    register_rules(RULES, spec, QUEUES, home, threshold)  # rules:v1, the shipped file
    edited = yaml.safe_load(RULES.read_text())
    edited["rules"].insert(0, {"name": "walrus", "queue": "general", "keywords": ["walrus"]})
    second = folder / "rules-v2.yaml"
    second.write_text(yaml.safe_dump(edited))
    experiment = two_arm_experiment(arms={"linear": {"model": "linear", "weight": 0.5},
                                          "rules": {"model": "rules", "version": "v1", "weight": 0.5}})  # fmt: skip
    with running_app(home, serve_port, small_serving_config(), experiment) as running:
        running.update(second=second, spec=spec, threshold=threshold)
        yield running


def _route(app: dict[str, Any], subject: str, body: str) -> dict[str, Any]:
    response = app["client"].post("/v1/route", headers=ADMIN, json={"user_id": "u1", "subject": subject,
                                                                     "body": body, "force_arm": "rules"})  # fmt: skip
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_rules_arm_names_the_rule_and_sends_what_no_rule_matches_to_triage(app: dict[str, Any]) -> None:
    charged = _route(app, "Charged twice", "My card was charged twice for the same invoice this month.")
    assert (charged["model_version"], charged["queue"], charged["reason"]) == ("rules:v1", "billing", "rule:charge")
    nothing = _route(app, "Hello", "A walrus sat on the pier all afternoon.")
    assert nothing["queue"] == QUEUES.triage_queue and nothing["reason"] == "no_rule"


def test_a_new_rules_version_reaches_the_running_replicas(app: dict[str, Any]) -> None:
    meta, _ = register_rules(app["second"], app["spec"], QUEUES, app["home"], app["threshold"])
    assert meta.version == "v2"
    response = app["client"].put("/v1/experiments/t-exp", json={"arms": {"rules": {"version": "v2"}}}, timeout=120)
    assert response.status_code == 200, response.text
    answer = wait_for(lambda: _route(app, "Hello", "A walrus sat on the pier all afternoon."),
                      lambda a: a["model_version"] == "rules:v2")  # fmt: skip
    assert answer["model_version"] == "rules:v2"
    assert answer["reason"].endswith("rule:walrus")  # confident, or low confidence with its rule named
