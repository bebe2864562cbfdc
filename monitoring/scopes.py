"""What a monitoring run compares: the window's rows per scope (each arm, and "all" traffic) and the versions behind
them, and the checks planned for each scope. Pure pandas, no Evidently, no registry.

Per arm, the rows compared are those the arm's own model answered, by the version that answered most of them
(a rollout inside the window shows up in the scope's note); rows answered by a fallback arm or by nobody (triage
after every arm failed) are left out, since they say nothing about this arm's model. "all" takes every row some
model answered, against the traffic-weighted mix of the serving versions' references.

The prediction compared is the model's top queue: the routed queue, or for an email a model answered but the router
sent to the triage queue (low confidence, on its own arm or as a fallback arm) the model's guess, which the log
keeps as `secondary_queue`; such a row without a guess is left out. So the triage policy does not read as
prediction drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from monitoring.config import DESCRIPTORS, TEXT_COLUMNS, CheckSpec, MonitoringConfig
from monitoring.stats import bonferroni

ALL = "all"
TRIAGE_QUEUE = "triage"  # queues.yaml's default triage_queue
NO_MODEL = "none"
CURRENT_COLUMNS = ["subject", "body", "predicted", "confidence", "true_queue", "feedback_source"]


@dataclass(frozen=True)
class VersionShare:
    model: str  # "name:version"
    rows: int


@dataclass(frozen=True, eq=False)
class ScopeRows:
    """The window's rows for one scope, with the versions that answered them."""

    scope: str
    current: pd.DataFrame  # CURRENT_COLUMNS
    versions: tuple[VersionShare, ...]  # most rows first
    excluded: int = 0  # rows of the arm not answered by its main version
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Planned:
    """One check of one scope: run it (`skip` None) with this method and threshold, or skip it for a reason."""

    scope: str
    check: str  # verdict check name: text_drift.subject, descriptor.oov_share, prediction_drift, ...
    column: str  # dataset column the drift test reads ("" for the accuracy check)
    method: str
    p_value: bool
    threshold: float | None  # score tests: pinned; p-value tests: filled in by `bonferroni_plan`
    skip: str | None = None


def model_prediction(frame: pd.DataFrame, triage_queue: str = TRIAGE_QUEUE) -> pd.Series:
    """The model's top queue per row: the routed queue, or its guess (`secondary_queue`) for an email sent to the
    triage queue, whatever the reason (low confidence, or a fallback arm's unsure answer); NA where there is none."""
    return frame["secondary_queue"].where(frame["queue"].astype(str) == triage_queue, frame["queue"])


def _current(rows: pd.DataFrame, triage_queue: str = TRIAGE_QUEUE) -> pd.DataFrame:
    predicted = model_prediction(rows, triage_queue)
    rows, predicted = rows[predicted.notna()], predicted[predicted.notna()].astype(str)
    return pd.DataFrame(
        {
            "subject": rows["subject"].to_numpy(),
            "body": rows["body"].to_numpy(),
            "predicted": predicted.to_numpy(),
            "confidence": rows["confidence"].astype(float).to_numpy(),
            "true_queue": rows["true_queue"].to_numpy(),
            "feedback_source": rows["feedback_source"].to_numpy(),
        },
        columns=CURRENT_COLUMNS,
    )


def _versions(rows: pd.DataFrame) -> tuple[VersionShare, ...]:
    keys = rows["model_name"].astype(str) + ":" + rows["model_version"].astype(str)
    counts = keys.value_counts()
    return tuple(VersionShare(str(k), int(v)) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def split_scopes(
    joined: pd.DataFrame, expected_arms: Sequence[str] = (), triage_queue: str = TRIAGE_QUEUE
) -> list[ScopeRows]:
    """Each arm seen in the window or expected (the configured ones), by name, then "all". `joined` is
    EventLog.joined_frame's output. An expected arm without a row is a scope with no rows and no versions.
    A model-answered row sent to `triage_queue` without the model's guess is left out (see model_prediction)."""
    answered = joined[joined["model_name"].astype(str) != NO_MODEL]
    scopes: list[ScopeRows] = []
    for arm in sorted(set(joined["arm"].astype(str).unique()) | set(expected_arms)):
        arm_rows = answered[answered["arm"] == arm]
        versions = _versions(arm_rows)
        if not versions:
            scopes.append(ScopeRows(arm, _current(arm_rows, triage_queue), (), int((joined["arm"] == arm).sum())))
            continue
        main = versions[0].model
        keys = arm_rows["model_name"].astype(str) + ":" + arm_rows["model_version"].astype(str)
        mine = arm_rows[keys == main]
        excluded = int((joined["arm"] == arm).sum()) - len(mine)
        notes = [f"answered by {main}"]
        if len(versions) > 1:
            notes.append("also " + ", ".join(f"{v.model} ({v.rows} rows)" for v in versions[1:]) + ", left out")
        if excluded:
            notes.append(f"{excluded} of the arm's rows not answered by {main} (fallback, triage) left out")
        current = _current(mine, triage_queue)
        if len(current) < len(mine):
            notes.append(f"{len(mine) - len(current)} rows sent to {triage_queue} without the model's guess left out")
        scopes.append(ScopeRows(arm, current, (VersionShare(main, len(mine)),), excluded, tuple(notes)))
    versions = _versions(answered)
    notes = ["versions " + ", ".join(f"{v.model} ({v.rows} rows)" for v in versions)] if versions else []
    current = _current(answered, triage_queue)
    if len(current) < len(answered):
        notes.append(f"{len(answered) - len(current)} rows sent to {triage_queue} without the model's guess left out")
    scopes.append(ScopeRows(ALL, current, versions, len(joined) - len(answered), tuple(notes)))
    return scopes


def _spec_rows(cfg: MonitoringConfig) -> list[tuple[str, str, str, CheckSpec]]:
    """(check, column, kind, spec) for every drift check of the config, in report order."""
    checks = cfg.checks
    rows = [(f"text_drift.{c}", c, "text", getattr(checks.text, c)) for c in TEXT_COLUMNS]
    rows += [(f"descriptor.{d}", d, "descriptor", getattr(checks.descriptors, d)) for d in DESCRIPTORS]
    rows += [("prediction_drift", "predicted", "prediction", checks.prediction)]
    rows += [("confidence_drift", "confidence", "confidence", checks.confidence)]
    return rows


def plan_scope(
    scope: str,
    cfg: MonitoringConfig,
    *,
    rows: int,
    reference_rows: int,
    skip_all: str | None,
    skip_text: str | None,
    feedback_rows: int,
    empty_text_columns: Sequence[str] = (),
    skip_confidence: str | None = None,
) -> list[Planned]:
    """The checks of one scope, each either to run or skipped with a reason in words. `skip_confidence`: why the
    confidence check does not apply to this scope's arm (a rules arm's), if it does not."""
    from monitoring.config import P_VALUE_METHODS

    p_methods = {m for methods in P_VALUE_METHODS.values() for m in methods}
    small_reference = f"the reference sample has only {reference_rows} rows (min_rows: {cfg.min_rows})"
    quality_skip = skip_all or (small_reference if reference_rows < cfg.min_rows else None)
    if skip_all is None and rows < cfg.min_rows:
        skip_all = f"only {rows} emails in the window (min_rows: {cfg.min_rows})"
    if skip_all is None and reference_rows < cfg.min_rows:
        skip_all = small_reference
    plan = []
    for check, column, kind, spec in _spec_rows(cfg):
        skip = skip_all
        if skip is None and kind in ("text", "descriptor"):
            skip = skip_text
        if skip is None and kind == "confidence":
            skip = skip_confidence
        if skip is None and kind == "text" and column in empty_text_columns:
            skip = f"too few non-empty {column} texts on one side to train a domain classifier"
        is_p = spec.method in p_methods
        plan.append(Planned(scope, check, column, spec.method, is_p, None if is_p else spec.threshold, skip))
    quality = cfg.checks.quality
    skip = quality_skip
    if skip is None and feedback_rows < quality.min_feedback:
        sources = ", ".join(quality.sources)
        skip = f"only {feedback_rows} feedback records from {sources} (min_feedback: {quality.min_feedback})"
    plan.append(Planned(scope, "accuracy", "", "binomial", True, None, skip))
    return plan


def bonferroni_plan(plan: Sequence[Planned], alpha: float) -> tuple[list[Planned], int]:
    """Give every p-value check that will run the threshold alpha / m (m: how many of them run in the whole run)."""
    m = sum(1 for p in plan if p.p_value and p.skip is None)
    threshold = bonferroni(alpha, m)
    out = [
        Planned(p.scope, p.check, p.column, p.method, p.p_value, threshold if p.p_value else p.threshold, p.skip)
        for p in plan
    ]
    return out, m
