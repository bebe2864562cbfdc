"""The cascade arm's model and its threshold (serving/models/cascade.py, training/cascade.py): the first stage answers
what it is sure of, the rest go to the second in one call; the threshold is the cheapest that matches the better
stage's accuracy on validation data; stages that disagree on the queues are refused at registration and at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import one_line_error, run_cli
from registered import QUEUES, register_models, register_tiny_transformer

from serving.config import Home
from serving.mail.text import PREPROCESSING_VERSION, model_text
from serving.models.cascade import CASCADE_FILE, CascadePredictor, CascadeSpec, write_cascade_version
from serving.models.predictor import load_version
from serving.models.registry import ModelRegistry, RegistryError
from training.cascade import CurvePoint, cascade_curve, choose_point, plan_cascade
from training.synth import generate, write_corpus

pytestmark = pytest.mark.unit


class Fixed:
    """A stage that answers each text with a given row, counting the texts it was asked about."""

    def __init__(self, labels: list[str], rows: dict[str, list[float]]) -> None:
        self.labels, self.rows, self.asked = labels, rows, []  # type: ignore[var-annotated]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        self.asked.append(list(texts))
        return np.array([self.rows[t] for t in texts])


def test_only_the_unsure_emails_reach_the_second_stage_in_one_call() -> None:
    first = Fixed(["a", "b"], {"sure": [0.9, 0.1], "unsure": [0.55, 0.45], "also": [0.4, 0.6]})
    second = Fixed(["b", "a"], {"unsure": [0.8, 0.2], "also": [0.3, 0.7]})  # other column order: aligned by name
    cascade = CascadePredictor(first, second, 0.7, "linear:v3", "transformer:v2")
    proba, notes = cascade.predict_with_notes(["sure", "unsure", "also"])
    assert second.asked == [["unsure", "also"]]
    assert notes == ["cascade:linear:v3", "cascade:transformer:v2", "cascade:transformer:v2"]
    assert proba.tolist() == [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]


def test_the_chosen_threshold_is_the_most_accurate_within_the_cost_budget() -> None:
    truth = np.array([0, 0, 1, 1])
    first = np.array([[0.95, 0.05], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])  # wrong on row 2 only, unsure there
    second = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]])  # wrong on row 1
    points = cascade_curve(first, second, truth, first_ms=1.0, second_ms=10.0, thresholds=(0.5, 0.58, 0.7, 0.99))
    assert [p.accuracy for p in points] == [0.75, 1.0, 0.75, 0.75]
    assert [p.cpu_ms for p in points] == [1.0, 3.5, 6.0, 11.0]
    assert choose_point(points, budget_ms=10 / 3).threshold == 0.5  # 0.58 is better but over the budget
    assert choose_point(points, budget_ms=4.0).threshold == 0.58  # the most accurate within it
    assert choose_point(points, budget_ms=0.5).threshold == 0.5  # none within: the cheapest
    ties = [CurvePoint(0.5, 0.1, 0.8, 2.0), CurvePoint(0.9, 0.5, 0.8, 6.0)]
    assert choose_point(ties, budget_ms=10.0) == ties[0]  # equals: the cheaper


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("cascade-home"))
    register_models(home)  # linear:v1 (trained), transformer:v1 (tiny, random)
    return home


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cascade-data") / "validation.jsonl"
    write_corpus(generate(160, seed=77), path)
    return path


def test_a_cascade_registers_and_loads_with_its_pinned_stages(
    home: Home, validation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--home", str(home.root), "train", "cascade", "--data", str(validation),
                             "--label-col", "queue", "--json")  # fmt: skip
    assert code == 0, err
    plan: dict[str, Any] = json.loads(out)
    assert (plan["first"], plan["second"]) == ("linear:v1", "transformer:v1")
    assert len(plan["curve"]) > 10 and plan["first_ms"] > 0 and plan["second_ms"] > 0  # (the tiny one is cheap)
    cheapest = min(p["cpu_ms"] for p in plan["curve"])  # the tiny transformer costs little: maybe none is within it
    assert plan["chosen"]["cpu_ms"] <= max(plan["second_ms"] / 3, cheapest)  # within the default budget
    assert plan["reached"] == (plan["chosen"]["accuracy"] >= max(plan["first_accuracy"], plan["second_accuracy"]))
    predictor, meta = load_version(ModelRegistry(home.registry), plan["model"])
    assert meta.kind == "cascade" and list(meta.labels) == list(predictor.labels)
    text = model_text("Charged twice", "My card was charged twice for one invoice.")
    _, notes = predictor.predict_with_notes([text])  # type: ignore[attr-defined]
    assert notes[0] in ("cascade:linear:v1", "cascade:transformer:v1")


def test_stages_that_know_different_queues_are_refused_at_registration_and_at_load(
    home: Home, validation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(home.registry)
    fewer = register_tiny_transformer(registry, [q for q in QUEUES.names if q != "sales"], name="narrow")
    code, _, err = run_cli(capsys, "--home", str(home.root), "train", "cascade", "--data", str(validation),
                           "--label-col", "queue", "--second", "narrow", "--name", "refused")  # fmt: skip
    assert code != 0 and "stages must know the same queues: only linear:v1 knows sales" in one_line_error(err)
    assert "refused" not in registry.names()  # nothing registered

    def written(folder: Path) -> None:  # a hand-made cascade.json naming the same mismatched pair
        write_cascade_version(folder, CascadeSpec(first="linear:v1", second=f"narrow:{fewer.version}", threshold=0.6))

    meta = registry.register("cascade-bad", written, kind="cascade", labels=QUEUES.names,
                             preprocessing_version=PREPROCESSING_VERSION, data_fingerprint="t", metrics={},
                             params={})  # fmt: skip
    with pytest.raises(RegistryError, match="stages must know the same queues"):
        load_version(registry, f"cascade-bad:{meta.version}")
    assert json.loads((registry.get(f"cascade-bad:{meta.version}").path / CASCADE_FILE).read_text())["threshold"] == 0.6


def test_a_cascade_of_cascades_is_refused(home: Home) -> None:
    registry = ModelRegistry(home.registry)

    def written(folder: Path) -> None:
        write_cascade_version(folder, CascadeSpec(first="linear:v1", second="transformer:v1", threshold=0.6))

    labels = list(registry.read_meta("linear", "v1").labels)
    inner = registry.register("inner", written, kind="cascade", labels=labels,
                              preprocessing_version=PREPROCESSING_VERSION, data_fingerprint="t", metrics={},
                              params={})  # fmt: skip
    with pytest.raises(RegistryError, match="a cascade's stages are linear or transformer models"):
        plan_cascade(registry, "linear:v1", f"inner:{inner.version}", ["x"] * 3, [QUEUES.names[0]] * 3)
