"""The retraining data set: the champion's base data, every feedback-labelled email in the event log and the imported
labels (`mailroute label import`), merged into one row per text and split into training and held-out rows.

Sources and what wins:

- **base**: the file the champion was trained on (`params.base_data` of its version), read again as at training;
- **import**: labelled emails with no prediction behind them (the old helpdesk's assignments);
- **feedback**: routed emails with a feedback record (an agent's correction or confirmation, an audit, a labelling
  assignment), their text as the event log stored it: `text_policy: redacted` gives the masked text (what the
  drift reference and the monitoring see too), `none` stores no text, so those emails cannot be learnt from and are
  counted as such; only the base data and imports then remain to retrain on. Text blanked by retention
  (`mailroute privacy retain`) is skipped and counted the same way.

The same email in two sources (the same `email_id`, or the same cleaned text) keeps the most authoritative label:
feedback (the newest, when an email has several) over an import over the base data. Rows repeating another row of
the same source (text and label) are dropped and counted; texts carrying two labels within one source are
conflicts, resolved by the majority (base, import) or the newest (feedback), and counted.

Held out for evaluation, the same for the candidate and the champion: the base rows the champion's own split held
out (`stratified_split` with the split it recorded), and the newest `recent_share` of the feedback-labelled emails
that arrived after the champion's own feedback (the mail it actually sees now), from the unbiased sources only
(`recent_sources`: audits by default; agents mostly send corrections, which would make the champion look worse than
it is). Everything else trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from serving.mail.text import model_text
from serving.models.registry import ModelMeta
from serving.store.eventlog import EventLog, normalize_ts
from training.config import SplitConfig
from training.data import DataError, read_dataset
from training.pipeline import DataSpec
from training.retrain.config import RetrainConfig
from training.split import stratified_split

COLUMNS = ["text", "label", "origin", "email_id", "subject", "body", "ts", "source"]
PRIORITY = {"base": 0, "import": 1, "feedback": 2}


@dataclass(frozen=True)
class Sources:
    """Every labelled email retraining may use, one frame per source (columns COLUMNS; base rows keep their index)."""

    base: pd.DataFrame
    imported: pd.DataFrame
    feedback: pd.DataFrame
    base_spec: DataSpec | None
    base_records: int  # records in the base file, malformed ones included
    base_skipped: int
    base_held_out: frozenset[int]  # base row indices the champion's split held out
    feedback_without_text: int


@dataclass(frozen=True)
class MergeStats:
    duplicates: int  # rows dropped for repeating another row of their source (same text and label)
    rows_before: int
    conflicts: int  # texts carrying two labels within one source
    texts: int  # distinct texts after merging
    overridden: int  # base or import rows replaced by a more authoritative source's label
    matched_feedback: int  # feedback emails also in the base data (same email_id or text)
    disagreeing_feedback: int  # ... whose label differs from the base label


@dataclass(frozen=True)
class RetrainData:
    train: pd.DataFrame
    held_out: pd.DataFrame  # with a `slice` column: base (the champion's own held-out rows) or recent (feedback)
    stats: MergeStats
    sources: Sources
    feedback_until: str | None  # the newest feedback-labelled email's time: the next retrain's recent mail starts here
    notes: tuple[str, ...] = field(default_factory=tuple)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def read_sources(store: EventLog, champion: ModelMeta, split: SplitConfig) -> Sources:
    """Read the three sources. A missing or unreadable base file is a DataError naming the version and the file."""
    spec = DataSpec.from_params(champion.params)
    base = _frame([])
    records = skipped = 0
    held: frozenset[int] = frozenset()
    if spec is not None:
        if not Path(spec.path).exists():
            raise DataError(
                f"{champion.name}:{champion.version} was trained on {spec.path}, which is gone: retraining reads its "
                "base data again (restore the file, or train a new champion with mailroute train)"
            )
        loaded = read_dataset(Path(spec.path), text_col=spec.text_col, label_col=spec.label_col, require_labels=True)
        f = loaded.frame
        base = pd.DataFrame(
            {"text": f["text"], "label": f["label"].astype(str), "origin": "base", "email_id": f["email_id"],
             "subject": f["subject"], "body": f["body"], "ts": None}
        )  # fmt: skip
        skipped = len(loaded.skipped)
        records = len(f) + skipped
        recorded = champion.params.get("split") or {}
        cut = split.model_copy(update={k: v for k, v in recorded.items() if k in ("holdout_fraction", "seed")})
        held = frozenset(int(i) for i in stratified_split(base["label"].tolist(), cut.holdout_fraction, cut.seed).test)
    rows: list[dict[str, Any]] = []
    no_text = 0
    for r in store.feedback_frame().to_dict("records"):
        text = model_text(r["subject"] or "", r["body"] or "")
        if not text:
            no_text += 1
            continue
        rows.append({"text": text, "label": str(r["true_queue"]), "origin": "feedback", "email_id": r["email_id"],
                     "subject": r["subject"], "body": r["body"], "ts": normalize_ts(r["ts"].isoformat()),
                     "source": r["feedback_source"]})  # fmt: skip
    imported: list[dict[str, Any]] = []
    for r in store.labelled_frame().to_dict("records"):
        text = model_text(r["subject"] or "", r["body"] or "")
        if text:
            imported.append({"text": text, "label": str(r["label"]), "origin": "import", "email_id": r["email_id"],
                             "subject": r["subject"], "body": r["body"], "ts": r["ts"]})  # fmt: skip
    return Sources(base, _frame(imported), _frame(rows), spec, records, skipped, held, no_text)


def _dedupe(frame: pd.DataFrame, newest_wins: bool) -> tuple[pd.DataFrame, int, int]:
    """One row per text within a source: (rows, duplicates dropped, conflicting texts)."""
    if frame.empty:
        return frame, 0, 0
    duplicates = int(frame.duplicated(["text", "label"]).sum())
    labels_per_text = frame.groupby("text")["label"].nunique()
    conflicts = int((labels_per_text > 1).sum())
    if newest_wins:
        kept = frame.sort_values("ts", kind="stable").drop_duplicates("text", keep="last")
    else:  # the text's most frequent label (the original row index is kept: the held-out split refers to it)
        majority = frame.groupby("text")["label"].agg(lambda labels: labels.value_counts().index[0])
        kept = frame[frame["label"] == frame["text"].map(majority)].drop_duplicates("text")
    return kept, duplicates, conflicts


def assemble(sources: Sources, cfg: RetrainConfig, *, champion_feedback_until: str | None = None) -> RetrainData:
    """Merge the sources into one row per text and split them (module docstring)."""
    base, d0, c0 = _dedupe(sources.base, newest_wins=False)
    imported, d1, c1 = _dedupe(sources.imported, newest_wins=True)
    feedback, d2, c2 = _dedupe(sources.feedback, newest_wins=True)
    # Feedback on an email of the base data: how often it disagrees with the base label.
    fb_ids = {e for e in feedback["email_id"].dropna()}
    by_text = dict(zip(base["text"], base["label"], strict=True))
    by_id = {e: lab for e, lab in zip(base["email_id"], base["label"], strict=True) if isinstance(e, str)}
    matched = disagree = 0
    for text, label, email_id in zip(feedback["text"], feedback["label"], feedback["email_id"], strict=True):
        known = by_id.get(email_id) if isinstance(email_id, str) and email_id in by_id else by_text.get(text)
        if known is not None:
            matched += 1
            disagree += known != label
    # The most authoritative source wins per email_id, then per text.
    winners = pd.concat([feedback, imported, base.assign(_row=base.index)], ignore_index=True)
    winners["_rank"] = winners["origin"].map(PRIORITY)
    winners = winners.sort_values("_rank", ascending=False, kind="stable")
    with_id = winners["email_id"].notna() & winners["email_id"].isin(fb_ids | set(imported["email_id"].dropna()))
    by_email = winners[with_id].drop_duplicates("email_id")
    merged = (
        pd.concat([by_email, winners[~with_id]])
        .sort_values("_rank", ascending=False, kind="stable")
        .drop_duplicates("text")
    )
    overridden = len(base) + len(imported) + len(feedback) - len(merged)
    # Held out: the champion's own held-out base rows, and the newest feedback that came after its own.
    is_base = merged["origin"] == "base"
    base_held = is_base & merged["_row"].isin(sources.base_held_out)
    fresh = merged[(merged["origin"] == "feedback") & merged["source"].isin(cfg.recent_sources)]
    if champion_feedback_until:
        fresh = fresh[fresh["ts"] > champion_feedback_until]
    n_recent = min(cfg.max_recent, math.ceil(len(fresh) * cfg.recent_share)) if len(fresh) else 0
    recent_idx = fresh.sort_values("ts", kind="stable").index[len(fresh) - n_recent :]
    held_mask = base_held | merged.index.isin(recent_idx)
    held = merged[held_mask].assign(slice=["base" if o == "base" else "recent" for o in merged[held_mask]["origin"]])
    train = merged[~held_mask]
    notes = []
    if sources.feedback_without_text:
        notes.append(
            f"{sources.feedback_without_text} feedback records have no stored text (text_policy none, or blanked by "
            "retention) and cannot be learnt from"
        )
    if champion_feedback_until and len(fresh) < len(merged[merged["origin"] == "feedback"]):
        notes.append(f"recent mail is held out from the feedback after the champion's own ({champion_feedback_until})")
    stats = MergeStats(
        duplicates=d0 + d1 + d2,
        rows_before=len(sources.base) + len(sources.imported) + len(sources.feedback),
        conflicts=c0 + c1 + c2,
        texts=len(merged),
        overridden=overridden,
        matched_feedback=matched,
        disagreeing_feedback=disagree,
    )
    until = str(feedback["ts"].max()) if len(feedback) else champion_feedback_until
    drop = ["_rank", "_row"]
    return RetrainData(
        train.drop(columns=drop).reset_index(drop=True),
        held.drop(columns=drop).reset_index(drop=True),
        stats,
        sources,
        until,
        tuple(notes),
    )
