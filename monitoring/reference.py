"""The reference a version is monitored against, written into its registry folder when it is trained.

A version's reference is a sample of the rows its training run held out (the test split: the model never fitted
them), with what the event log would hold for them and what the version answered:

- `subject`, `body`: redacted exactly as the event log redacts (`serving.store.redact.apply_policy` with the serving
  config's text policy), or text drift would fire on the masking alone;
- `queue`: the label; `predicted`, `confidence`: the version's top queue and top-class probability on the row,
  computed at training time from the same probabilities that score the test split. Held-out rows matter here: on
  rows it was fitted on a model is more confident, and every word is in its vocabulary, so a sample of training rows
  would make the confidence and OOV checks fire on fresh mail that has not drifted at all;
- the vocabulary (every word of the rows the model was fitted on), for the OOV descriptor.

Files: `monitoring/reference.parquet`, `monitoring/vocabulary.txt`, `monitoring/reference.json`. They are written
through the registry's `register()` callback, so they are checksummed with the model and verified with it. A
version trained before this existed has no reference; `load_reference` then returns None and the job skips its
checks with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from monitoring.descriptors import build_vocabulary, descriptor_text
from serving.store.redact import TextPolicy, apply_policy

if TYPE_CHECKING:
    from monitoring.config import ReferenceSpec

FOLDER = "monitoring"
FRAME_FILE = "reference.parquet"
VOCAB_FILE = "vocabulary.txt"
META_FILE = "reference.json"
COLUMNS = ["subject", "body", "queue", "predicted", "confidence"]


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference sample and what the checks need from it."""

    frame: pd.DataFrame  # COLUMNS
    vocabulary: frozenset[str]
    text_policy: str
    source: str  # "name:version", or several joined by "+" for a traffic-weighted mix

    @property
    def accuracy(self) -> float:
        """Share of the sample the version got right (its held-out accuracy, before the triage policy)."""
        if self.frame.empty:
            return 0.0
        return float((self.frame["predicted"] == self.frame["queue"]).mean())

    @property
    def queue_accuracy(self) -> dict[str, float]:
        """The version's held-out accuracy per true queue."""
        right = (self.frame["predicted"] == self.frame["queue"]).groupby(self.frame["queue"].astype(str)).mean()
        return {str(q): float(a) for q, a in right.items()}


def sample_reference(
    subjects: Sequence[str],
    bodies: Sequence[str],
    labels: Sequence[str],
    proba: np.ndarray,
    label_names: Sequence[str],
    policy: TextPolicy,
    size: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Up to `size` held-out rows, chosen at random, with their redacted text, label, prediction and confidence.

    `proba[i]` is the version's probability row for email i (columns in `label_names` order).
    """
    n = len(labels)
    if not (len(subjects) == len(bodies) == n == len(proba)):
        raise ValueError("sample_reference: subjects, bodies, labels and proba must have one entry per email")
    rows = np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])
    proba = np.asarray(proba, dtype=float)
    top = proba.argmax(axis=1) if n else np.zeros(0, dtype=int)
    return pd.DataFrame(
        {
            "subject": [apply_policy(subjects[i], policy) for i in rows],
            "body": [apply_policy(bodies[i], policy) for i in rows],
            "queue": [str(labels[i]) for i in rows],
            "predicted": [str(label_names[top[i]]) for i in rows],
            "confidence": [float(proba[i, top[i]]) for i in rows],
        },
        columns=COLUMNS,
    )


def write_reference(folder: Path, frame: pd.DataFrame, vocabulary: frozenset[str], meta: dict[str, Any]) -> None:
    out = folder / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / FRAME_FILE, index=False)
    (out / VOCAB_FILE).write_text("\n".join(sorted(vocabulary)) + "\n", encoding="utf-8")
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def reference_writer(
    frame: pd.DataFrame,
    held_out: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    label_names: Sequence[str],
    *,
    policy: TextPolicy,
    size: int,
    seed: int = 0,
) -> Callable[[Path], None]:
    """What a training job passes to `register()` beside the model's own save: writes the reference files.

    `frame` is the training data (`subject`, `body`, `label` columns, as `training.data.read_dataset` gives them);
    `held_out` its test-split rows, in the order of `proba`'s rows. The vocabulary comes from every other row.
    """
    held = [int(i) for i in held_out]
    subjects = frame["subject"].fillna("").astype(str).tolist()
    bodies = frame["body"].fillna("").astype(str).tolist()
    labels = frame["label"].astype(str).tolist()
    sample = sample_reference(
        [subjects[i] for i in held],
        [bodies[i] for i in held],
        [labels[i] for i in held],
        proba,
        label_names,
        policy,
        size,
        seed,
    )
    skip = set(held)
    fitted = (i for i in range(len(labels)) if i not in skip)
    vocabulary = build_vocabulary(
        descriptor_text(apply_policy(subjects[i], policy), apply_policy(bodies[i], policy)) for i in fitted
    )
    meta = {"rows": len(sample), "held_out_rows": len(held), "text_policy": policy, "seed": seed,
            "vocabulary_words": len(vocabulary)}  # fmt: skip

    def write(folder: Path) -> None:
        write_reference(folder, sample, vocabulary, meta)

    return write


def reference_spec() -> ReferenceSpec:
    """monitoring.yaml's `reference` section (its defaults where there is no file; a malformed one is a
    ConfigError). A training job calls this when it starts, so a broken file fails it before any training."""
    from monitoring.config import MonitoringConfig, load_monitoring
    from serving.config import config_dir

    path = config_dir() / "monitoring.yaml"
    return (load_monitoring(path) if path.exists() else MonitoringConfig()).reference


def training_reference(
    frame: pd.DataFrame, held_out: Sequence[int] | np.ndarray, proba: np.ndarray, label_names: Sequence[str]
) -> Callable[[Path], None]:
    """`reference_writer` with the serving config's text policy and the monitoring config's sample size (its
    defaults where no monitoring.yaml exists; a malformed one is a ConfigError)."""
    from serving.config import load_serving

    spec = reference_spec()
    policy = load_serving().event_log.text_policy
    return reference_writer(frame, held_out, proba, label_names, policy=policy, size=spec.sample_size, seed=spec.seed)


def with_reference(save: Callable[[Path], None], reference: Callable[[Path], None]) -> Callable[[Path], None]:
    """One `register()` callback that saves the model and then its reference."""

    def write(folder: Path) -> None:
        save(folder)
        reference(folder)

    return write


def load_reference(version_path: Path, source: str) -> Reference | None:
    """The reference stored with a version, or None when it was trained without one."""
    folder = Path(version_path) / FOLDER
    if not (folder / FRAME_FILE).is_file():
        return None
    frame = pd.read_parquet(folder / FRAME_FILE)
    vocabulary = frozenset((folder / VOCAB_FILE).read_text(encoding="utf-8").split())
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    return Reference(frame[COLUMNS], vocabulary, str(meta.get("text_policy", "redacted")), source)


def mix(parts: Sequence[tuple[Reference, float]], size: int, seed: int = 0) -> Reference:
    """The reference of traffic served by several versions: each version's sample in proportion to its share.

    Without drift, mail served by a 70/30 split of two versions looks like 70% of the first's reference and 30% of
    the second's; the vocabulary is their union. Where a version's sample is too small for its share of `size`,
    every share is scaled down by the same factor (the smallest available / wanted ratio), so the proportions hold
    and the mix is smaller instead.
    """
    if len(parts) == 1:
        return parts[0][0]
    total = sum(share for _, share in parts)
    wanted = [size * share / total for _, share in parts]
    ratio = min([1.0, *(len(ref.frame) / want for (ref, _), want in zip(parts, wanted, strict=True) if want > 0)])
    rng = np.random.default_rng(seed)
    frames = []
    for (ref, _), want in zip(parts, wanted, strict=True):
        take = min(len(ref.frame), max(1, round(want * ratio)))
        frames.append(ref.frame.iloc[np.sort(rng.permutation(len(ref.frame))[:take])])
    policies = {ref.text_policy for ref, _ in parts}
    return Reference(
        pd.concat(frames, ignore_index=True),
        frozenset().union(*(ref.vocabulary for ref, _ in parts)),
        policies.pop() if len(policies) == 1 else "mixed",
        "+".join(ref.source for ref, _ in parts),
    )
