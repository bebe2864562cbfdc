"""Config files: the shipped ones load; each kind of bad file gives one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ConfigError, QueuesConfig, ServingConfig, load_config, load_queues, load_serving
from training.config import TrainingConfig, load_training

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load() -> None:
    queues = load_queues(CONFIGS / "queues.yaml")
    assert {"billing", "technical", "account", "shipping", "cancellation", "sales", "general"} <= set(queues.names)
    assert queues.triage_queue == "triage"
    assert load_training(CONFIGS / "training.yaml").linear.char_ngram_max == 5
    assert 0 < load_serving(CONFIGS / "serving.yaml").policy.confidence_threshold < 1


GOOD_QUEUES = """
queues:
  billing: {manual_triage_minutes: 2, misroute_cost: 4}
  technical: {manual_triage_minutes: 3, misroute_cost: 6}
"""


@pytest.mark.parametrize(
    "text, model, expected",
    [
        (GOOD_QUEUES + "colour: blue\n", QueuesConfig, "unknown key 'colour'"),
        (
            GOOD_QUEUES.replace("misroute_cost: 4", "misroute_cost: lots"),
            QueuesConfig,
            "key 'queues.billing.misroute_cost': Input should be a valid number",
        ),
        (
            "queues:\n  billing: {misroute_cost: 4}\n  technical: {manual_triage_minutes: 3, misroute_cost: 6}\n",
            QueuesConfig,
            "missing key 'queues.billing.manual_triage_minutes'",
        ),
        ("currency: EUR\n", QueuesConfig, "missing key 'queues'"),
        (
            "queues:\n  billing: {manual_triage_minutes: 2, misroute_cost: 4}\n",
            QueuesConfig,
            "at least two specialist queues",
        ),
        (GOOD_QUEUES + "triage_queue: billing\n", QueuesConfig, "must not also be a specialist queue"),
        ("queues: [unclosed\n", QueuesConfig, "YAML syntax error at line 2"),
        ("- just\n- a list\n", QueuesConfig, "expected a mapping at the top level"),
        ("linear:\n  alpha: -1\n", TrainingConfig, "key 'linear.alpha': Input should be greater than 0"),
        (
            "linear:\n  char_ngram_min: 6\n  char_ngram_max: 3\n",
            TrainingConfig,
            "char_ngram_min: must not exceed",
        ),
        ("policy:\n  confidence_threshold: 2\n", ServingConfig, "key 'policy.confidence_threshold'"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path: Path, text: str, model: type, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, model)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", QueuesConfig)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(binary, QueuesConfig)


def test_configs_are_frozen() -> None:
    cfg = load_serving(CONFIGS / "serving.yaml")
    with pytest.raises(ValueError):
        cfg.policy.confidence_threshold = 0.1  # type: ignore[misc]
