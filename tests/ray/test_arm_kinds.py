"""A rules arm and a cascade arm in the real Serve app, beside a model arm, each a version in the registry like a
model. The rules arm (kind `rules`, from configs/rules.yaml) names the rule that fired and sends what no rule
matches to triage; the cascade arm (kind `cascade`) names the stage that answered. A new version of either reaches
the running replicas through the admin API (reconfigure, no restart); a cascade whose stages know different queues
is refused with one line while the running version keeps answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from registered import register_tiny_transformer
from serve_app import ADMIN, QUEUES, register_models, running_app, small_serving_config, two_arm_experiment, wait_for

from serving.config import Home, load_serving
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.cascade import CascadeSpec, write_cascade_version
from serving.models.registry import ModelRegistry
from training.cascade import plan_cascade, register_cascade
from training.pipeline import DataSpec, load_labelled
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
    frame = load_labelled(spec).frame.head(160)
    plan, _, proba = plan_cascade(ModelRegistry(home.registry), "linear", "transformer",
                                  [str(t) for t in frame["text"]], [str(v) for v in frame["label"]])  # fmt: skip
    register_cascade(home, plan, frame.reset_index(drop=True), proba, threshold)  # cascade:v1, the chosen threshold
    experiment = two_arm_experiment(arms={"linear": {"model": "linear", "weight": 0.4},
                                          "rules": {"model": "rules", "version": "v1", "weight": 0.3},
                                          "cascade": {"model": "cascade", "version": "v1", "weight": 0.3}})  # fmt: skip
    with running_app(home, serve_port, small_serving_config(), experiment) as running:
        running.update(second=second, spec=spec, threshold=threshold)
        yield running


def _route(app: dict[str, Any], subject: str, body: str, arm: str = "rules") -> dict[str, Any]:
    response = app["client"].post("/v1/route", headers=ADMIN, json={"user_id": "u1", "subject": subject,
                                                                     "body": body, "force_arm": arm})  # fmt: skip
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


def _register_cascade(registry: ModelRegistry, second: str, threshold: float) -> str:
    labels = list(registry.read_meta("linear", "v1").labels)

    def written(folder: Path) -> None:
        write_cascade_version(folder, CascadeSpec(first="linear:v1", second=second, threshold=threshold))

    return registry.register("cascade", written, kind="cascade", labels=labels, data_fingerprint="t", metrics={},
                             preprocessing_version=PREPROCESSING_VERSION, params={}).version  # fmt: skip


def test_a_cascade_arm_names_the_stage_and_a_bad_cascade_leaves_the_running_one(app: dict[str, Any]) -> None:
    charged = ("Charged twice", "My card was charged twice for the same invoice this month, please refund one.")
    first = _route(app, *charged, arm="cascade")
    assert first["model_version"] == "cascade:v1"
    assert first["reason"].removeprefix("low_confidence:") in ("cascade:linear:v1", "cascade:transformer:v1")
    registry = ModelRegistry(app["home"].registry)
    every = _register_cascade(registry, "transformer:v1", threshold=1.0)  # every email goes on to the transformer
    response = app["client"].put("/v1/experiments/t-exp", json={"arms": {"cascade": {"version": every}}}, timeout=120)
    assert response.status_code == 200, response.text
    answer = wait_for(lambda: _route(app, *charged, arm="cascade"), lambda a: a["model_version"] == f"cascade:{every}")
    assert answer["model_version"] == f"cascade:{every}"
    assert answer["reason"].removeprefix("low_confidence:") == "cascade:transformer:v1"
    narrow = register_tiny_transformer(registry, [q for q in QUEUES.names if q != "sales"], name="narrow")
    bad = _register_cascade(registry, f"narrow:{narrow.version}", threshold=0.6)
    response = app["client"].put("/v1/experiments/t-exp", json={"arms": {"cascade": {"version": bad}}}, timeout=120)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and "stages must know the same queues" in detail
    assert _route(app, *charged, arm="cascade")["model_version"] == f"cascade:{every}"  # still serving


def test_a_rules_version_rolls_out_as_a_canary_and_back(app: dict[str, Any]) -> None:
    meta, _ = register_rules(app["second"], app["spec"], QUEUES, app["home"], app["threshold"])
    started = app["client"].post("/v1/rollout", json={"version": f"rules:{meta.version}", "canary_percent": 20},
                                 timeout=120)  # fmt: skip
    assert started.status_code == 200, started.text
    arms = app["client"].get("/v1/experiments").json()["experiment"]["arms"]
    canary = next(arm for arm in arms if arm != "rules" and arms[arm]["model"] == "rules")
    walrus = _route(app, "Hello", "A walrus sat on the pier all afternoon.", arm=canary)
    assert walrus["model_version"] == f"rules:{meta.version}" and walrus["reason"].endswith("rule:walrus")
    back = app["client"].post("/v1/rollback", json={}, timeout=120)
    assert back.status_code == 200, back.text
    assert canary not in app["client"].get("/v1/experiments").json()["experiment"]["arms"]
