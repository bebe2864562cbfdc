"""monitoring.yaml: the shipped file loads; each kind of bad file is one line naming the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitoring.config import MonitoringConfig, load_monitoring, parse_duration
from serving.config import ConfigError

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_config_loads() -> None:
    cfg = load_monitoring(CONFIGS / "monitoring.yaml")
    assert cfg.window_delta == timedelta(hours=24)
    assert cfg.checks.text.body.method == "text_content_drift_p" and cfg.checks.text.body.threshold is None
    assert cfg.family_alpha == 0.01
    assert cfg == MonitoringConfig.model_validate(cfg.model_dump())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("colour: blue\n", "unknown key 'colour'"),
        ("checks: {prediction: {method: chisquare, thershold: 0.1}}\n", "unknown key 'checks.prediction.thershold'"),
        ("family_alpha: 1.5\n", "key 'family_alpha': Input should be less than 1"),
        ("family_alpha: -0.1\n", "key 'family_alpha': Input should be greater than 0"),
        ("window: soon\n", "'soon' is not a duration"),
        ("checks: {confidence: {method: ks, threshold: 0.05}}\n", "'ks' is a p-value test"),
        ("checks: {confidence: {method: wasserstein}}\n", "'wasserstein' is a score test and needs a pinned"),
        ("checks: {text: {body: {method: ks}}}\n", "unknown method 'ks' for a text check"),
        ("checks: {confidence: {method: wasserstein, threshold: -1}}\n", "Input should be greater than 0"),
        ("alerts: {webhook_url: 'ftp://x'}\n", "must start with http://"),
        ("schedule: {monitor_every: 0h}\n", "'0h' is not a duration"),
        ("retention: {drift: 0}\n", "key 'retention.drift': Input should be greater than or equal to 1"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_monitoring(path)
    message = str(err.value)
    assert expected in message and "\n" not in message and message.startswith(str(path))


def test_score_method_with_threshold_is_accepted() -> None:
    cfg = MonitoringConfig.model_validate(
        {"checks": {"text": {"subject": {"method": "abs_text_content_drift", "threshold": 0.6}}}}
    )
    assert cfg.checks.text.subject.threshold == 0.6


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("24")
