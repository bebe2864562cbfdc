"""The data checks a retrain passes before any training, each with its measured value and its limit.

Pure: `validate(data, queues, limits)` returns a `ValidationReport`; `mailroute retrain` prints it and stops with
exit code 1, naming each failed check, when one fails. The checks:

- `schema`: every row has a text and a label, and the base file had few malformed records;
- `labels_in_taxonomy`: every label of every source is a queue of `configs/queues.yaml`;
- `feedback`: enough feedback-labelled emails with text to learn from (none yet is the common first failure);
- `duplicates`: few rows repeating another row's text and label (they are dropped, but many means a broken export);
- `train_heldout_overlap`: no text both in the training rows and in the held-out rows the gate scores on;
- `min_per_queue`: every queue has enough training rows;
- `feedback_per_queue`: every queue has feedback, so the recent held-out mail covers every queue the gate compares;
- `label_conflicts`: few texts carry two labels within one source;
- `feedback_disagreement`: on emails in both, the feedback rarely contradicts the base data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from serving.config import QueuesConfig
from training.retrain.config import ValidationLimits
from training.retrain.dataset import RetrainData

MIN_MATCHED = 20  # feedback emails also in the base data before their disagreement is judged


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: str  # what was measured, in words
    limit: str
    detail: str = ""


@dataclass(frozen=True)
class ValidationReport:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def lines(self) -> list[str]:
        width = max(len(c.name) for c in self.checks)
        out = []
        for c in self.checks:
            mark = "ok    " if c.passed else "FAILED"
            out.append(
                f"  {mark} {c.name.ljust(width)}  {c.value} (limit: {c.limit}){': ' + c.detail if c.detail else ''}"
            )
        return out

    def summary(self) -> str:
        bad = self.failed
        if not bad:
            return f"all {len(self.checks)} data checks passed"
        return f"{len(bad)} data check(s) failed: " + "; ".join(f"{c.name} ({c.detail or c.value})" for c in bad)


def _share(n: int, d: int) -> str:
    return f"{n} of {d} ({n / d:.1%})" if d else f"{n} of 0"


def validate(data: RetrainData, queues: QueuesConfig, limits: ValidationLimits) -> ValidationReport:
    src, stats = data.sources, data.stats
    rows = [data.train, data.held_out]
    everything = [src.base, src.imported, src.feedback]
    checks = []

    empty = sum(int((f["text"].fillna("").str.strip() == "").sum() + f["label"].isna().sum()) for f in rows)
    malformed = src.base_skipped / src.base_records if src.base_records else 0.0
    checks.append(Check(
        "schema", empty == 0 and malformed <= limits.max_malformed_share,
        f"{empty} rows without text or label; {_share(src.base_skipped, src.base_records)} base records malformed",
        f"0 rows, {limits.max_malformed_share:.0%} malformed",
        "" if empty == 0 and malformed <= limits.max_malformed_share else "fix the base file or the export",
    ))  # fmt: skip

    outside: Counter[str] = Counter()
    for frame in everything:
        for label, origin in zip(frame["label"], frame["origin"], strict=True):
            if label not in queues.queues:
                outside[f"{label} ({origin})"] += 1
    checks.append(Check(
        "labels_in_taxonomy", not outside, f"{sum(outside.values())} rows with a label outside the taxonomy",
        "0", ", ".join(f"{k}: {v}" for k, v in outside.most_common(5)) if outside else "",
    ))  # fmt: skip

    n_fb = len(src.feedback)
    checks.append(Check(
        "feedback", n_fb >= limits.min_feedback, f"{n_fb} feedback-labelled emails with text",
        f">= {limits.min_feedback}",
        ("no feedback yet: nothing to learn from" if n_fb == 0 else "too little feedback to learn from")
        if n_fb < limits.min_feedback else "",
    ))  # fmt: skip

    dup_share = stats.duplicates / stats.rows_before if stats.rows_before else 0.0
    checks.append(Check(
        "duplicates", dup_share <= limits.max_duplicate_share, _share(stats.duplicates, stats.rows_before) + " dropped",
        f"{limits.max_duplicate_share:.0%}",
    ))  # fmt: skip

    overlap = set(data.train["text"]) & set(data.held_out["text"])
    ids = set(data.train["email_id"].dropna()) & set(data.held_out["email_id"].dropna())  # the same email reworded
    overlap |= {f"email {i}" for i in ids}
    checks.append(Check(
        "train_heldout_overlap", not overlap, f"{len(overlap)} texts or email ids both in training and held out", "0",
        "the gate would score emails the candidate learnt" if overlap else "",
    ))  # fmt: skip

    per_queue = Counter(data.train["label"])
    short = {q: per_queue.get(q, 0) for q in queues.names if per_queue.get(q, 0) < limits.min_train_per_queue}
    fewest = min((per_queue.get(q, 0) for q in queues.names), default=0)
    checks.append(Check(
        "min_per_queue", not short, f"fewest training rows in a queue: {fewest}",
        f">= {limits.min_train_per_queue} per queue", ", ".join(f"{q} has {n}" for q, n in short.items()),
    ))  # fmt: skip

    fb_queue = Counter(src.feedback["label"])
    thin = {q: fb_queue.get(q, 0) for q in queues.names if fb_queue.get(q, 0) < limits.min_feedback_per_queue}
    covered = [q for q in queues.names if fb_queue.get(q, 0)]
    checks.append(Check(
        "feedback_per_queue", not thin, f"feedback for {len(covered)} of {len(queues.names)} queues",
        f">= {limits.min_feedback_per_queue} per queue",
        (f"feedback only for {', '.join(covered) or 'no queue'}; " if len(covered) < len(queues.names) else "")
        + ", ".join(f"{q} has {n}" for q, n in thin.items()) if thin else "",
    ))  # fmt: skip

    rate = stats.conflicts / stats.texts if stats.texts else 0.0
    checks.append(Check(
        "label_conflicts", rate <= limits.max_conflict_rate,
        f"{stats.conflicts} of {stats.texts} texts with two labels in one source ({rate:.1%})",
        f"{limits.max_conflict_rate:.0%}",
    ))  # fmt: skip

    m, d = stats.matched_feedback, stats.disagreeing_feedback
    share = d / m if m >= MIN_MATCHED else 0.0  # a handful of emails in both says nothing systematic
    checks.append(Check(
        "feedback_disagreement", share <= limits.max_feedback_disagreement,
        f"{_share(d, m)} of the feedback on base-data emails disagrees with the base label"
        + ("" if m >= MIN_MATCHED else f" (judged from {MIN_MATCHED} such emails up)"),
        f"{limits.max_feedback_disagreement:.0%}",
    ))  # fmt: skip
    return ValidationReport(tuple(checks))
