"""Import historical labels: the old helpdesk's queue assignments, as labelled emails with no prediction behind them.

They are stored apart from predictions (`LabelledEmail`, the event log's `labelled_emails` table) so that exposure,
the daily counts and every experiment KPI stay as they were; retraining reads them beside the feedback. The file is
read by `training.data.read_dataset` (CSV, JSONL, an mbox file or a folder of .eml files), so a malformed record is
skipped and counted, never a crash. The text is cut to the serving text policy before it is stored, as routed
emails' text is.

An import is all-or-nothing on labels (one outside the taxonomy refuses the file, naming it) and idempotent: each
email's key is its email_id when the file has one, else a hash of subject, body and label, and a key already stored
is skipped, so importing a file twice adds nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from serving.config import QueuesConfig
from serving.store.eventlog import EventLog, LabelledEmail, utc_now
from serving.store.redact import TextPolicy, apply_policy
from training.data import read_dataset
from training.labels.labelling import LabellingError, check_agent


@dataclass(frozen=True)
class ImportResult:
    path: str
    new: int  # labelled emails stored now
    already: int  # rows whose key was stored before (by an earlier import, or earlier in this file)
    skipped: int  # malformed records read_dataset left out
    labels: dict[str, int]  # rows per label in the file

    def summary(self) -> str:
        return f"{self.new} new, {self.already} already imported, {self.skipped} malformed records skipped"


def content_key(subject: str, body: str, label: str) -> str:
    """The key of an email without an id: the first 32 hex characters of SHA-256 over subject, body and label."""
    return hashlib.sha256("\x00".join((subject, body, label)).encode()).hexdigest()[:32]


def _made_up_id(email_id: str, path: Path) -> bool:
    """Whether read_dataset invented this id (a row or message number), which a re-export would renumber."""
    if re.fullmatch(rf"{re.escape(path.stem)}-\d+", email_id):  # a table without an id column, or an mbox
        return True
    folder = path.name if path.is_dir() else path.parent.name
    return email_id.startswith(f"{folder}/") and "@" not in email_id  # an .eml without a Message-ID


def import_labels(
    store: EventLog,
    path: str | Path,
    queues: QueuesConfig,
    *,
    text_col: str | None = None,
    label_col: str = "queue",
    agent_id: str | None = None,
    text_policy: TextPolicy = "redacted",
) -> ImportResult:
    """Store the labelled emails of `path` (see the module docstring); a label outside the taxonomy writes nothing."""
    path = Path(path)
    agent = None if agent_id is None else check_agent(agent_id)
    loaded = read_dataset(path, text_col=text_col, label_col=label_col, require_labels=True)
    frame = loaded.frame.dropna(subset=["label"])
    counts = {str(k): int(v) for k, v in frame["label"].value_counts().items()}
    unknown = {label: c for label, c in counts.items() if label not in queues.names}
    if unknown:
        listed = ", ".join(f"'{label}' ({c} row{'s' if c != 1 else ''})" for label, c in sorted(unknown.items()))
        raise LabellingError(
            f"{path}: labels not in the taxonomy: {listed}; the queues are {', '.join(queues.names)}; nothing imported"
        )
    ts = utc_now()
    records = []
    for row in frame.itertuples(index=False):
        subject, body, label = str(row.subject), str(row.body), str(row.label)
        email_id = str(row.email_id) if row.email_id and not _made_up_id(str(row.email_id), path) else None
        records.append(
            LabelledEmail(
                key=email_id or content_key(subject, body, label),
                ts=ts,
                label=label,
                subject=apply_policy(subject, text_policy),
                body=apply_policy(body, text_policy),
                email_id=email_id,
                agent_id=agent,
                origin=path.name,
            )
        )
    new = store.record_labelled(records)
    return ImportResult(str(path), new, len(records) - new, len(loaded.skipped), counts)
