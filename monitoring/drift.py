"""The Evidently glue: the one module that imports Evidently.

It turns a reference sample and a window of the event log into Evidently datasets (the model-free descriptors added
as custom descriptors), runs one drift report and one classification-quality report per scope, reads the check
results back out of the snapshots, saves HTML and JSON, and adds the snapshots to a local Evidently workspace
(`evidently ui --workspace <home>/evidently` shows the history).

Each drift check is Evidently's `ValueDrift` with the method and threshold the job planned (monitoring.job); the
alarm is Evidently's own test verdict. `text_content_drift_p`, registered here, is Evidently's text-content drift
(its domain classifier, split and ROC AUC) with the AUC turned into a p-value (monitoring.stats.auc_p_value), so that
it joins the Bonferroni family like the other p-value tests. `chisquare_2sample`, registered here too, is the
predicted-queue mix's two-sample chi-square (monitoring.stats.contingency_p_value): Evidently's own `chisquare` is a
goodness-of-fit test against the reference's shares taken as exact, which false-alarms on clean windows.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.exceptions import ConvergenceWarning

from monitoring.descriptors import descriptor_functions, descriptor_text
from monitoring.stats import auc_p_value, contingency_p_value

TEXT_P_METHOD = "text_content_drift_p"
CATEGORY_P_METHOD = "chisquare_2sample"
_registered = False


@dataclass(frozen=True)
class PlannedCheck:
    """One Evidently drift test to run: `column` of the datasets below, with a pinned method and threshold."""

    name: str  # the verdict row's check, e.g. "text_drift.body"
    column: str
    method: str
    threshold: float
    p_value: bool  # p-value test (alarm when p < threshold) or score test (alarm when score > threshold)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    method: str
    threshold: float
    score: float | None  # None when Evidently gave no finite number
    alarm: bool
    detail: str


def _text_content_drift_p(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Evidently's text-content drift with a p-value: same domain classifier and split as its own two tests."""
    from evidently.legacy.utils.data_drift_utils import roc_auc_domain_classifier
    from sklearn.model_selection import train_test_split

    texts = pd.concat([reference.astype(str), current.astype(str)], ignore_index=True)
    target = [0] * len(reference) + [1] * len(current)
    x_train, x_test, y_train, y_test = train_test_split(texts, target, test_size=0.5, random_state=42, shuffle=True)
    n_cur = int(sum(y_test))
    n_ref = len(y_test) - n_cur
    if n_ref == 0 or n_cur == 0 or len(set(y_train)) < 2:
        return 1.0, False
    auc, _, _ = roc_auc_domain_classifier(x_train, x_test, y_train, y_test)
    p = auc_p_value(float(auc), n_ref, n_cur)
    return p, p < threshold


def _chisquare_2sample(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Two-sample chi-square of the category mix (rare categories pooled): see monitoring.stats."""
    ref, cur = reference.dropna().astype(str).value_counts(), current.dropna().astype(str).value_counts()
    keys = sorted(set(ref.index) | set(cur.index))
    p = contingency_p_value(ref.reindex(keys, fill_value=0).to_numpy(), cur.reindex(keys, fill_value=0).to_numpy())
    return p, p < threshold


def register_stattests() -> None:
    """Register `text_content_drift_p` and `chisquare_2sample` with Evidently (once per process)."""
    global _registered
    if _registered:
        return
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    register_stattest(
        StatTest(
            name=TEXT_P_METHOD,
            display_name="Text content drift (domain classifier AUC as p-value)",
            allowed_feature_types=[ColumnType.Text],
            default_threshold=0.05,
        ),
        _text_content_drift_p,
    )
    register_stattest(
        StatTest(
            name=CATEGORY_P_METHOD,
            display_name="Two-sample chi-square p_value (rare categories pooled)",
            allowed_feature_types=[ColumnType.Categorical],
            default_threshold=0.05,
        ),
        _chisquare_2sample,
    )
    _registered = True


def _descriptor(name: str, func: Callable[[str], float]) -> Any:
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import CustomColumnDescriptor
    from evidently.legacy.core import ColumnType

    def generate(column: DatasetColumn) -> DatasetColumn:
        return DatasetColumn(ColumnType.Numerical, column.data.fillna("").astype(str).map(func).astype(float))

    generate.__name__ = f"mailroute_{name}"  # Evidently records the function's name in the snapshot
    return CustomColumnDescriptor("text", generate, alias=name)


def drift_dataset(frame: pd.DataFrame, vocabulary: frozenset[str]) -> Any:
    """subject, body, text (their join), predicted, confidence, plus one column per descriptor."""
    from evidently import DataDefinition, Dataset

    subjects, bodies = frame["subject"].fillna("").astype(str), frame["body"].fillna("").astype(str)
    data = pd.DataFrame(
        {
            "subject": subjects.to_numpy(),
            "body": bodies.to_numpy(),
            "text": [descriptor_text(s, b) for s, b in zip(subjects, bodies, strict=True)],
            "predicted": frame["predicted"].astype(str).to_numpy(),
            "confidence": frame["confidence"].astype(float).to_numpy(),
        }
    )
    definition = DataDefinition(
        text_columns=["subject", "body", "text"], categorical_columns=["predicted"], numerical_columns=["confidence"]
    )
    descriptors = [_descriptor(name, func) for name, func in descriptor_functions(vocabulary).items()]
    return Dataset.from_pandas(data, data_definition=definition, descriptors=descriptors)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    vocabulary: frozenset[str],
    checks: Sequence[PlannedCheck],
    *,
    name: str,
    tags: Sequence[str],
    metadata: dict[str, Any],
) -> tuple[list[CheckOutcome], Any]:
    """One drift report: every planned check between reference and current. Returns the outcomes and the snapshot."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    register_stattests()
    metrics = [ValueDrift(column=c.column, method=c.method, threshold=c.threshold) for c in checks]
    report = Report(metrics, include_tests=True)
    with warnings.catch_warnings():  # the domain classifier's SGD stops at 50 iterations by design; it says so
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        snapshot = report.run(
            drift_dataset(current, vocabulary),
            drift_dataset(reference, vocabulary),
            name=name,
            tags=list(tags),
            metadata=metadata,
        )
    results = snapshot.dict()
    status = {t["metric_config"]["params"]["column"]: t["status"] for t in results["tests"]}
    values = {m["config"]["column"]: m["value"] for m in results["metrics"]}
    outcomes = []
    for check in checks:
        score = _finite(values.get(check.column))
        alarm = status.get(check.column) == "FAIL" and score is not None
        relation = ("<" if alarm else ">=") if check.p_value else (">" if alarm else "<=")
        what = "p" if check.p_value else "score"
        detail = (
            f"{check.method}: {what} = {score:.3g} {relation} {check.threshold:.3g}"
            if score is not None
            else f"{check.method} gave no finite score"
        )
        outcomes.append(CheckOutcome(check.name, check.method, check.threshold, score, alarm, detail))
    return outcomes, snapshot


def run_quality(frame: pd.DataFrame, *, name: str, tags: Sequence[str], metadata: dict[str, Any]) -> Any:
    """Classification quality of the rows with feedback (`true_queue` vs `predicted`): one report per scope, since
    Evidently 0.7's GroupBy gives every group the overall figure."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    data = pd.DataFrame({"true_queue": frame["true_queue"].astype(str), "predicted": frame["predicted"].astype(str)})
    definition = DataDefinition(
        categorical_columns=["true_queue", "predicted"],
        classification=[MulticlassClassification(target="true_queue", prediction_labels="predicted")],
    )
    dataset = Dataset.from_pandas(data, data_definition=definition)
    return Report([ClassificationPreset()]).run(dataset, None, name=name, tags=list(tags), metadata=metadata)


# Evidently writes the report's data as `var <id> = <json>;` lines inside a plain <script>, and json.dumps leaves
# "</script>" in a string as it is: an email whose text holds one would end the block and run as script. Both data
# lines end with a literal newline, which JSON never holds, so they are found exactly.
_DATA = re.compile(r"(\n    var (\w+) = )(.*?)(;\n    var additional_graphs_\2 = )(.*?)(;\n</script>)", re.DOTALL)


def _escape_json_in_script(data: str) -> str:
    """JSON that means the same and cannot end a <script> or open an HTML comment."""
    return data.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def escape_report_data(html: str) -> str:
    return _DATA.sub(lambda m: m[1] + _escape_json_in_script(m[3]) + m[4] + _escape_json_in_script(m[5]) + m[6], html)


def save_snapshot(snapshot: Any, json_path: Path, html_path: Path | None) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_json(str(json_path))
    if html_path is not None:
        snapshot.save_html(str(html_path))
        html_path.write_text(escape_report_data(html_path.read_text(encoding="utf-8")), encoding="utf-8")


def add_to_workspace(workspace: Path, project: str, snapshot: Any) -> str:
    """Add a snapshot to the local workspace's project named `project` (created on first use); returns its id."""
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(workspace))
    found = ws.search_project(project)
    target = found[0] if found else ws.create_project(project, description="mailroute monitoring runs")
    ws.add_run(target.id, snapshot)
    return str(target.id)


def prune_workspace(workspace: Path, project: str, keep: int) -> int:
    """Delete all but the newest `keep` snapshots of a workspace project; returns how many went."""
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(workspace))
    removed = 0
    for found in ws.search_project(project):
        runs = sorted(str(r) for r in ws.list_runs(found.id))  # UUIDv7: sorted by creation time
        for run in runs[: max(0, len(runs) - keep)]:
            ws.delete_run(found.id, run)
            removed += 1
    return removed
