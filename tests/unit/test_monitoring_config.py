"""monitoring.yaml: the shipped file loads; each kind of bad file is one line naming the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitoring.config import MonitoringConfig, load_monitoring
from serving.clock import parse_duration
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
        (
            "checks: {prediction: {method: chisquare_2sample, thershold: 0.1}}\n",
            "unknown key 'checks.prediction.thershold'",
        ),
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
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("0.0000001s")  # under a microsecond: a zero timedelta, not a 24 h window
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration("1000000w")  # reaches before year 1: was an OverflowError at the run


@pytest.mark.parametrize(
    "kind, method",
    [
        ("prediction", "chisquare"),
        ("prediction", "fisher_exact"),
        ("prediction", "z"),
        ("prediction", "TVD"),
        ("prediction", "g_test"),
        ("confidence", "anderson"),
        ("text.body", "perc_text_content_drift"),
    ],
)
def test_invalid_p_value_methods_are_refused(tmp_path: Path, kind: str, method: str) -> None:
    """Methods whose p-value is not one (an AUC), can never reach a Bonferroni threshold, or test something else."""
    path = tmp_path / "monitoring.yaml"
    if "." in kind:
        outer, inner = kind.split(".")
        path.write_text(f"checks: {{{outer}: {{{inner}: {{method: {method}}}}}}}\n")
    else:
        path.write_text(f"checks: {{{kind}: {{method: {method}}}}}\n")
    with pytest.raises(ConfigError) as err:
        load_monitoring(path)
    message = str(err.value)
    assert f"method '{method}' is not allowed" in message and "use one of" in message and "\n" not in message
    allowed = {"prediction": "chisquare_2sample", "confidence": "ks", "text.body": "text_content_drift_p"}[kind]
    assert allowed in message


def test_defaults_count_unbiased_feedback_and_time_out_jobs() -> None:
    cfg = MonitoringConfig()
    assert cfg.checks.prediction.method == "chisquare_2sample"
    # Agents mostly send corrections; labelling picks the least certain emails: both bias accuracy low.
    assert cfg.checks.quality.sources == ("audit",)
    assert parse_duration(cfg.schedule.job_timeout) == timedelta(minutes=15)
    shipped = load_monitoring(CONFIGS / "monitoring.yaml")
    assert shipped.checks.quality.sources == cfg.checks.quality.sources
    assert shipped.checks.prediction.method == cfg.checks.prediction.method


def test_monitor_run_refuses_bad_windows_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from serving.cli import main

    for window in ("1000000w", "0.0000001s"):
        assert main(["monitor", "run", "--window", window]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and window in err


def test_monitor_run_on_a_home_with_no_event_log_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import main

    home = tmp_path / "empty-home"
    assert main(["--home", str(home), "monitor", "run"]) == 1  # a wrong --home must not read as "no alarm"
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no event log at" in err and "nothing was routed yet" in err
    assert not (home / "events.db").exists()


def test_a_broken_monitoring_yaml_fails_transformer_training_before_the_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.transformer
    from serving.config import Home
    from training.config import load_training
    from training.pipeline import DataSpec, train_transformer_job

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(training.transformer, "train_transformer", no_fit)
    monkeypatch.setattr("training.pipeline.load_labelled", no_fit)
    (tmp_path / "monitoring.yaml").write_text("reference: {sample_size: 3}\n")
    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"reference\.sample_size"):
        train_transformer_job(DataSpec(tmp_path / "none.jsonl"), load_training(CONFIGS / "training.yaml"),
                              Home(tmp_path / "home"))  # fmt: skip
