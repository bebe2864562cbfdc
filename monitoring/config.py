"""`configs/monitoring.yaml`: windows, each drift check's method and threshold, the family-wise alpha, retention,
alerts and schedules, as one strict pydantic model.

Every check names its method. A p-value method (`ks`, `chisquare_2sample`, `text_content_drift_p`) takes no threshold
of its own: the run splits `family_alpha` over all the p-value tests it runs (Bonferroni), so the chance that a
run with no drift raises any alarm stays at or under `family_alpha` however many arms there are. A score method
(`wasserstein`, `jensenshannon`, `abs_text_content_drift`, ...) compares an effect size with a pinned threshold and
must name it; such a test has no false-alarm probability the run could control, so it takes no share of alpha and
the docs (docs/monitoring.md) say so.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from serving.clock import parse_duration
from serving.config import StrictModel, config_dir, load_config

# The stat tests a check may use, by what their score is. p-value tests alarm when p < threshold, score tests when
# the distance or AUC is above it. Only p-value tests whose false-alarm rate is what their threshold says are
# accepted, since the family-wise guarantee rests on it. `text_content_drift_p` and `chisquare_2sample` are ours
# (monitoring.drift, monitoring.stats): Evidently's domain classifier with its ROC AUC turned into a p-value, and a
# two-sample chi-square of the category mix.
P_VALUE_METHODS = {
    "text": ("text_content_drift_p",),
    "numerical": ("ks",),
    "categorical": ("chisquare_2sample",),
}
SCORE_METHODS = {
    "text": ("abs_text_content_drift",),
    "numerical": ("wasserstein", "psi", "kl_div", "hellinger", "jensenshannon", "ed"),
    "categorical": ("jensenshannon", "psi", "kl_div", "hellinger"),
}
# Evidently methods refused, and why (the config error says so).
REFUSED_METHODS = {
    "chisquare": "a goodness-of-fit test that takes the reference's shares as exact: clean windows alarm",
    "perc_text_content_drift": "its score is an AUC, not a p-value",
    "anderson": "scipy floors its p-value at 0.001, so it can never alarm below a Bonferroni threshold",
    "TVD": "its p-value comes from 100 permutations, too coarse for a Bonferroni threshold",
    "fisher_exact": "it only handles two categories",
    "z": "it tests the first category only",
    "g_test": "a goodness-of-fit test like chisquare",
    "mannw": "not validated here; use ks",
    "cramer_von_mises": "not validated here; use ks",
    "t_test": "it tests the mean only; use ks",
    "es": "not validated here; use ks",
}
DESCRIPTORS = ("length", "word_count", "oov_share", "non_letter_share")
TEXT_COLUMNS = ("subject", "body")


class CheckSpec(StrictModel):
    """One drift check: the Evidently stat test it runs and, for a score test, the threshold it alarms above."""

    method: str = Field(description="Evidently stat test name (see P_VALUE_METHODS / SCORE_METHODS).")
    threshold: float | None = Field(
        None, gt=0, description="Score tests only: alarm above this score. p-value tests take theirs from family_alpha."
    )


def _check_method(spec: CheckSpec, kind: str, where: str) -> CheckSpec:
    if spec.method in P_VALUE_METHODS[kind]:
        if spec.threshold is not None:
            raise ValueError(
                f"{where}: '{spec.method}' is a p-value test; its threshold comes from family_alpha (Bonferroni), "
                "remove 'threshold'"
            )
    elif spec.method in SCORE_METHODS[kind]:
        if spec.threshold is None:
            raise ValueError(f"{where}: '{spec.method}' is a score test and needs a pinned 'threshold'")
    else:
        known = ", ".join((*P_VALUE_METHODS[kind], *SCORE_METHODS[kind]))
        why = REFUSED_METHODS.get(spec.method)
        if why is not None:
            raise ValueError(f"{where}: method '{spec.method}' is not allowed ({why}); use one of {known}")
        raise ValueError(f"{where}: unknown method '{spec.method}' for a {kind} check; use one of {known}")
    return spec


def _pvalue(method: str) -> CheckSpec:
    return CheckSpec(method=method)


class TextChecks(StrictModel):
    """Text-content drift per stored text column (Evidently's domain classifier between reference and window)."""

    subject: CheckSpec = Field(default_factory=lambda: _pvalue("text_content_drift_p"), description="Subject line.")
    body: CheckSpec = Field(default_factory=lambda: _pvalue("text_content_drift_p"), description="Body text.")


class DescriptorChecks(StrictModel):
    """Drift of the model-free descriptors of subject + body (monitoring.descriptors)."""

    length: CheckSpec = Field(default_factory=lambda: _pvalue("ks"), description="Characters.")
    word_count: CheckSpec = Field(default_factory=lambda: _pvalue("ks"), description="Words.")
    oov_share: CheckSpec = Field(
        default_factory=lambda: _pvalue("ks"), description="Share of words outside the training vocabulary."
    )
    non_letter_share: CheckSpec = Field(
        default_factory=lambda: _pvalue("ks"), description="Share of non-space characters that are not letters."
    )


class QualityCheck(StrictModel):
    """Routing accuracy from feedback against the version's accuracy on its held-out reference sample."""

    tolerance: float = Field(
        0.05, ge=0, lt=1, description="Alarm only when accuracy is significantly below reference accuracy minus this."
    )
    min_feedback: int = Field(30, ge=1, description="Fewer feedback records than this in a scope: check skipped.")
    sources: tuple[Literal["agent", "audit", "labelling"], ...] = Field(
        ("audit",),
        min_length=1,
        description="Feedback sources counted. Agents mostly send corrections, which biases accuracy low, and the "
        "labelling view picks the emails the model was least sure of, so both are left out by default; add agent "
        "only where agents confirm right answers too.",
    )


class Checks(StrictModel):
    text: TextChecks = Field(default_factory=TextChecks, description="Text-content drift per column.")
    descriptors: DescriptorChecks = Field(default_factory=DescriptorChecks, description="Descriptor drift.")
    prediction: CheckSpec = Field(
        default_factory=lambda: _pvalue("chisquare_2sample"),
        description="Predicted queue mix vs the version's predictions on its reference sample (two-sample test).",
    )
    confidence: CheckSpec = Field(
        default_factory=lambda: _pvalue("ks"),
        description="Top-class probability vs the version's on its held-out reference sample (stored at training).",
    )
    quality: QualityCheck = Field(default_factory=QualityCheck, description="Accuracy from feedback.")

    @model_validator(mode="after")
    def _methods(self) -> Checks:
        for column in TEXT_COLUMNS:
            _check_method(getattr(self.text, column), "text", f"checks.text.{column}")
        for name in DESCRIPTORS:
            _check_method(getattr(self.descriptors, name), "numerical", f"checks.descriptors.{name}")
        _check_method(self.prediction, "categorical", "checks.prediction")
        _check_method(self.confidence, "numerical", "checks.confidence")
        return self


class ReferenceSpec(StrictModel):
    sample_size: int = Field(
        2000, ge=50, description="Held-out rows of the training data stored with each version as its reference."
    )
    seed: int = Field(0, description="Seed of the reference sample.")


class RetentionSpec(StrictModel):
    """How many reports of each kind are kept under <home>/reports/monitoring (older ones are deleted)."""

    drift: int = Field(48, ge=1, description="Drift reports (one per scope per run).")
    quality: int = Field(48, ge=1, description="Classification-quality reports (one per scope per run).")
    runs: int = Field(200, ge=1, description="Run summaries (runs/*.json).")
    kpi: int = Field(48, ge=1, description="Scheduled KPI reports (reports/experiments/, JSON + HTML).")
    workspace: int = Field(500, ge=1, description="Snapshots per project in the Evidently workspace.")
    logs_days: float = Field(
        30.0, gt=0, description="Component log records in the store older than this are deleted at each monitoring run."
    )


class AlertSpec(StrictModel):
    """Where alarms are posted: a JSON POST per alarming run. No URL: no alerts."""

    webhook_url: str | None = Field(None, description="URL to POST alarms to.")
    webhook_url_env: str | None = Field(
        "MAILROUTE_ALERT_WEBHOOK", description="Env var holding the URL (wins over webhook_url when set)."
    )
    timeout_s: float = Field(5.0, gt=0, description="Per-attempt timeout.")
    attempts: int = Field(3, ge=1, le=10, description="Attempts before giving up (exponential back-off).")

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url '{value}' must start with http:// or https://")
        return value


class ScheduleSpec(StrictModel):
    """Jobs that run by themselves while `mailroute serve` runs (and under `mailroute monitor schedule`)."""

    enabled: bool = Field(True, description="Start the scheduler actor with the Serve app.")
    monitor_every: str = Field("1h", description="Interval between monitoring runs, e.g. 15m, 1h.")
    kpi_report_every: str = Field("1h", description="Interval between scheduled KPI reports of the experiment.")
    first_run_after: str = Field("5m", description="Delay before the first runs after start.")
    job_timeout: str = Field(
        "15m",
        description="A job run longer than this (wall-clock time, even on a simulation's fast clock) is logged as "
        "failed and the loop goes on (its thread may go on).",
    )

    @field_validator("monitor_every", "kpi_report_every", "first_run_after", "job_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class MonitoringConfig(StrictModel):
    """`configs/monitoring.yaml`."""

    window: str = Field("24h", description="Default window of the event log a run reads, ending now.")
    min_rows: int = Field(50, ge=5, description="A scope with fewer emails in the window gets its checks skipped.")
    max_rows: int = Field(
        50_000, ge=100, description="A scope with more emails is checked on a random sample of this many."
    )
    family_alpha: float = Field(
        0.01, gt=0, lt=1, description="Chance that a run with no drift raises any p-value alarm (Bonferroni)."
    )
    checks: Checks = Field(default_factory=Checks, description="Each check's method and threshold.")
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec, description="Reference sample stored at training.")
    retention: RetentionSpec = Field(default_factory=RetentionSpec, description="Reports kept per kind.")
    alerts: AlertSpec = Field(default_factory=AlertSpec, description="Webhook for alarms.")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="Scheduled jobs.")
    html: bool = Field(True, description="Write an HTML report beside each JSON one (about 4 MB each, no CDN).")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)


def load_monitoring(path: str | Path | None = None) -> MonitoringConfig:
    return load_config(path or config_dir() / "monitoring.yaml", MonitoringConfig)
