"""Error analysis of the routing decisions in the event log: where the model goes wrong, and how often triage saves it.

Pure functions over the joined frame (`EventLog.joined_frame`: predictions LEFT JOIN feedback); the CLI in
`experiments/analyze_cli.py` reads the log and the configs. Which emails are *judged* follows the KPI module
(`experiments.analysis.kpi`) and the `analysis.feedback_policy` exactly:

- `implicit` / `both`: an email with feedback (any source, recorded by the as-of time) is judged by its true queue;
  an auto-routed email without feedback counts as correct once older than `implicit_correct_after_hours` at the
  as-of time; an email sent to triage is judged only when feedback came;
- `audit`: only emails with audit feedback are judged.

The model's guess is the top queue of the logged probability vector (for an email sent to triage too: that is the
guess the triage agent saw). Emails logged without a vector (a fallback where no model answered, records from before
the log kept vectors) are counted and left out of every probability-based part (confusion, confidence bands, the
triage catch and the threshold what-if); the misroute pairs, which need only the routed and the true queue, keep them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from experiments.analysis.config import AnalysisConfig
from serving.config import QueuesConfig

NO_TEXT = "(text not stored: text_policy none)"
SNIPPET_CHARS = 200
EXAMPLES_PER_PAIR = 3
BAND_EDGES = tuple(round(k / 10, 1) for k in range(11))  # [0, 0.1), ..., [0.9, 1.0]


class AnalysisInputError(ValueError):
    """A bad filter or time given to an analysis (unknown arm, model version); one line, the CLI exits 2."""


class NoDataError(ValueError):
    """Nothing to analyse: no email in the window, none judged, or no probability vectors; one line, exit 1."""


@dataclass(frozen=True)
class Example:
    """One misrouted email as the log stored it (the store already applied the text policy)."""

    request_id: str
    ts: str
    confidence: float
    subject: str
    snippet: str  # the first ~200 characters of the body, whitespace collapsed


@dataclass(frozen=True)
class MisroutePair:
    true_queue: str
    routed_queue: str
    count: int
    share: float  # of all misroutes
    examples: tuple[Example, ...]  # the most confident first: the model was sure, and wrong


@dataclass(frozen=True)
class Band:
    """Judged emails whose top probability lies in [lo, hi) ([0.9, 1.0] for the last band)."""

    lo: float
    hi: float
    judged: int
    auto_routed: int
    misrouted: int
    accuracy: float | None  # among the auto-routed ones; None when none was routed


@dataclass(frozen=True)
class TriageCatch:
    """Among judged emails whose model guess was wrong: how many triage caught and how many were misrouted."""

    model_wrong: int
    sent_to_triage: int
    auto_routed: int
    share_caught: float | None


@dataclass(frozen=True)
class ErrorAnalysis:
    as_of: str
    since: str | None
    arm: str | None
    version: str | None
    feedback_policy: str
    emails: int  # in the window, after the filters
    judged: int
    judged_with_proba: int
    judged_without_proba: int
    auto_routed_judged: int
    misroutes: int
    labels: tuple[str, ...]  # the confusion's rows and columns, taxonomy order first
    confusion: dict[str, dict[str, int]]  # true queue -> model guess -> judged emails
    pairs: tuple[MisroutePair, ...]
    bands: tuple[Band, ...]
    triage_catch: TriageCatch
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def filter_emails(frame: pd.DataFrame, *, arm: str | None = None, version: str | None = None) -> pd.DataFrame:
    """The emails of one arm and/or one model version (`name:vN`, or `vN` of any model); an unknown value is an
    AnalysisInputError naming the ones the frame holds."""
    if arm is not None:
        if arm not in set(frame["arm"]):
            raise AnalysisInputError(f"no email of arm '{arm}' in the window; arms: {_listing(frame['arm'])}")
        frame = frame[frame["arm"] == arm]
    if version is not None:
        full = frame["model_name"].astype(str) + ":" + frame["model_version"].astype(str)
        keep = full == version if ":" in version else frame["model_version"] == version
        if not keep.any():
            raise AnalysisInputError(f"no email of model version '{version}' in the window; versions: {_listing(full)}")
        frame = frame[keep]
    return frame


def _listing(values: pd.Series) -> str:
    return ", ".join(sorted(set(values.astype(str)))) or "none"


def judge(frame: pd.DataFrame, queues: QueuesConfig, analysis: AnalysisConfig, as_of: datetime) -> pd.DataFrame:
    """The frame with the verdict columns added: `auto`, `judged`, `true` (the true queue of a judged email, else
    None), `guess` and `p_top` (the model's top queue and its probability; None/NaN without a vector)."""
    df = frame.copy()
    at = pd.Timestamp(as_of)
    auto = df["queue"] != queues.triage_queue
    has_fb = df["true_queue"].notna() & (df["feedback_ts"] <= at)  # feedback after as-of is not known yet
    if analysis.feedback_policy == "audit":
        by_feedback = has_fb & (df["feedback_source"] == "audit")
        implicit = pd.Series(False, index=df.index)
    else:
        by_feedback = has_fb
        cutoff = at - pd.Timedelta(hours=analysis.implicit_correct_after_hours)
        implicit = auto & ~has_fb & (df["ts"] <= cutoff)
    df["auto"] = auto
    df["judged"] = by_feedback | implicit
    df["true"] = df["true_queue"].where(by_feedback, df["queue"].where(implicit))  # NaN: no verdict
    guesses = [
        _top(p, q if a else s) for p, q, s, a in zip(df["proba"], df["queue"], df["secondary_queue"], auto, strict=True)
    ]
    df["guess"] = [g for g, _ in guesses]
    df["p_top"] = np.array([p for _, p in guesses], dtype=float)
    return df


def _top(proba: Any, hint: Any) -> tuple[str | None, float]:
    """The top queue of a probability vector; a tie goes to the queue the router logged (its own choice)."""
    if not isinstance(proba, dict) or not proba:
        return None, math.nan
    top = max(proba, key=lambda q: (proba[q], q == hint))
    return top, float(proba[top])


def what_if_sample(judged: pd.DataFrame) -> pd.DataFrame:
    """The judged emails with a probability vector as the threshold what-if reads them: top, p_top, true_queue."""
    rows = judged[judged["judged"] & judged["guess"].notna()]
    return pd.DataFrame({"top": rows["guess"], "p_top": rows["p_top"], "true_queue": rows["true"]}).reset_index(
        drop=True
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _example(row: Any) -> Example:
    subject, body = _text(row.subject), _text(row.body)
    if subject is None and body is None:
        subject_text, snippet = NO_TEXT, ""
    else:
        subject_text = subject or ""
        flat = " ".join((body or "").split())
        snippet = flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS].rstrip() + "…"
    return Example(str(row.request_id), row.ts.isoformat(), float(row.confidence), subject_text, snippet)


def _pairs(df: pd.DataFrame, top: int) -> tuple[int, tuple[MisroutePair, ...]]:
    wrong = df[df["judged"] & df["auto"] & (df["true"] != df["queue"])]
    if wrong.empty:
        return 0, ()
    counts = wrong.groupby(["true", "queue"]).size().reset_index(name="n")
    counts = counts.sort_values(["n", "true", "queue"], ascending=[False, True, True]).head(top)
    out = []
    for t, q, n in counts.itertuples(index=False):
        rows = wrong[(wrong["true"] == t) & (wrong["queue"] == q)].sort_values(
            ["confidence", "ts"], ascending=[False, False]
        )
        examples = tuple(_example(r) for r in rows.head(EXAMPLES_PER_PAIR).itertuples())
        out.append(MisroutePair(str(t), str(q), int(n), int(n) / len(wrong), examples))
    return len(wrong), tuple(out)


def _bands(scored: pd.DataFrame) -> tuple[Band, ...]:
    index = np.searchsorted(np.array(BAND_EDGES[1:-1]), scored["p_top"].to_numpy(), side="right")
    out = []
    for k in range(len(BAND_EDGES) - 1):
        rows = scored[index == k]
        routed = rows[rows["auto"]]
        wrong = int((routed["true"] != routed["queue"]).sum())
        accuracy = (len(routed) - wrong) / len(routed) if len(routed) else None
        out.append(Band(BAND_EDGES[k], BAND_EDGES[k + 1], len(rows), len(routed), wrong, accuracy))
    return tuple(out)


def _labels(queues: QueuesConfig, *columns: pd.Series) -> tuple[str, ...]:
    seen = set().union(*(set(c.dropna().astype(str)) for c in columns))
    return (*[q for q in queues.names if q in seen], *sorted(seen - set(queues.names)))


def prepare(
    frame: pd.DataFrame,
    queues: QueuesConfig,
    analysis: AnalysisConfig,
    *,
    as_of: datetime,
    since: str | None = None,
    arm: str | None = None,
    version: str | None = None,
) -> pd.DataFrame:
    """The window's emails of the arm/version, judged (`judge`); NoDataError when the window holds no email."""
    if frame.empty:
        raise NoDataError("no email was routed in the window" + (f" (since {since})" if since else ""))
    return judge(filter_emails(frame, arm=arm, version=version), queues, analysis, as_of)


def analyze_errors(
    df: pd.DataFrame,
    queues: QueuesConfig,
    analysis: AnalysisConfig,
    *,
    as_of: datetime,
    since: str | None = None,
    arm: str | None = None,
    version: str | None = None,
    top_pairs: int = 10,
) -> ErrorAnalysis:
    """The error analysis of the judged emails `df` (`prepare`'s result); `since`, `arm` and `version` only label
    it. NoDataError when no email has a verdict."""
    judged = df[df["judged"]]
    if judged.empty:
        raise NoDataError(f"none of the {len(df)} emails has a verdict yet under the {_policy_words(analysis)}")
    scored = judged[judged["guess"].notna()]
    labels = _labels(queues, scored["true"], scored["guess"])
    confusion = {t: {g: 0 for g in labels} for t in labels}
    for t, g, n in scored.groupby(["true", "guess"]).size().reset_index(name="n").itertuples(index=False):
        confusion[str(t)][str(g)] = int(n)
    misroutes, pairs = _pairs(df, top_pairs)
    wrong = scored[scored["guess"] != scored["true"]]
    caught = int((~wrong["auto"]).sum())
    notes = []
    missing = len(judged) - len(scored)
    if missing:
        notes.append(
            f"{missing} judged emails have no probability vector (a fallback where no model answered, or logged "
            "before vectors were kept): left out of the confusion, the bands, the triage catch and the what-if"
        )
    pending = len(df) - len(judged)
    if pending:
        notes.append(f"{pending} emails have no verdict yet (sent to triage without feedback, or too recent)")
    if analysis.feedback_policy != "audit":
        notes.append(
            "an email sent to triage is judged only when feedback came, an auto-routed one also by its age: the "
            "triage catch counts the triaged emails agents answered"
        )
    return ErrorAnalysis(
        as_of=as_of.isoformat(),
        since=since,
        arm=arm,
        version=version,
        feedback_policy=analysis.feedback_policy,
        emails=len(df),
        judged=len(judged),
        judged_with_proba=len(scored),
        judged_without_proba=missing,
        auto_routed_judged=int(judged["auto"].sum()),
        misroutes=misroutes,
        labels=labels,
        confusion=confusion,
        pairs=pairs,
        bands=_bands(scored),
        triage_catch=TriageCatch(len(wrong), caught, len(wrong) - caught, caught / len(wrong) if len(wrong) else None),
        notes=tuple(notes),
    )


def _policy_words(analysis: AnalysisConfig) -> str:
    if analysis.feedback_policy == "audit":
        return "audit feedback policy (only audited emails are judged)"
    return (
        f"{analysis.feedback_policy} feedback policy (feedback, or auto-routed and older than "
        f"{analysis.implicit_correct_after_hours:g} h)"
    )
