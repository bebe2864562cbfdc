"""The cascade arm's model: the cheap model answers first; only an email it is unsure of goes to the transformer.

A cascade version (kind `cascade`) holds no weights: `cascade.json` pins its two stages, registered versions such as
`linear:v3` and `transformer:v2` (immutable, so the cascade version alone says which two models answered), and the
threshold chosen offline (`training.cascade`). Served, the first stage scores every email of a batch; the emails
whose calibrated top probability is below the threshold go to the second stage together, in one call (the arm
replica batches as the transformer arm does). Each answer's note names the stage that answered, with its version
(`cascade:linear:v3`), and becomes the reason of the routing decision.

Both stages must know the same queues; their columns are aligned by name. A stage may not itself be a cascade.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from serving.config import ConfigError, StrictModel, parse_config
from serving.models.registry import ModelRegistry, RegistryError

CASCADE_FILE = "cascade.json"
STAGE_KINDS = ("linear", "transformer")


class CascadeSpec(StrictModel):
    """`cascade.json`: the pinned stages and the threshold below which the second answers."""

    first: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*:v[0-9]+$", description="The cheap stage, name:vN.")
    second: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*:v[0-9]+$", description="The strong stage, name:vN.")
    threshold: float = Field(gt=0.0, le=1.0, description="Below this first-stage confidence, the second answers.")


def check_stage_labels(first: str, first_labels: Sequence[str], second: str, second_labels: Sequence[str]) -> None:
    """Both stages must route to the same queues: a RegistryError naming the difference otherwise."""
    only_first, only_second = (
        sorted(set(first_labels) - set(second_labels)),
        sorted(set(second_labels) - set(first_labels)),
    )
    if only_first or only_second:
        parts = [f"only {ref} knows {', '.join(q[:40] for q in qs[:5])}"
                 for ref, qs in ((first, only_first), (second, only_second)) if qs]  # fmt: skip
        raise RegistryError(f"a cascade's stages must know the same queues: {'; '.join(parts)}")


def check_stage_kind(ref: str, kind: str) -> None:
    if kind not in STAGE_KINDS:
        raise RegistryError(f"{ref} is a {kind} version: a cascade's stages are {' or '.join(STAGE_KINDS)} models")


def read_spec(path: Path) -> CascadeSpec:
    """A registered cascade folder's `cascade.json`; a RegistryError in one line otherwise."""
    try:
        data = json.loads((path / CASCADE_FILE).read_text(encoding="utf-8"))
        return parse_config(data, CascadeSpec, CASCADE_FILE)
    except (OSError, ValueError) as err:  # ConfigError is a ValueError
        raise RegistryError(f"cascade at {path.name}: {' '.join(str(err).split())[:300]}") from None


def check_cascade(registry: ModelRegistry, path: Path) -> CascadeSpec:
    """A cascade's stages exist, are models and know the same queues, read from their meta.json alone (no weights
    loaded): what a change checks before any replica tries to load it."""
    spec = read_spec(path)
    metas = []
    for ref in (spec.first, spec.second):
        name, _, version = ref.partition(":")
        meta = registry.read_meta(name, version)
        check_stage_kind(ref, meta.kind)
        metas.append(meta)
    check_stage_labels(spec.first, metas[0].labels, spec.second, metas[1].labels)
    return spec


class CascadePredictor:
    """Two loaded stages and the threshold between them (module docstring)."""

    def __init__(self, first: Any, second: Any, threshold: float, first_ref: str, second_ref: str) -> None:
        check_stage_labels(first_ref, first.labels, second_ref, second.labels)
        self.first, self.second, self.threshold = first, second, float(threshold)
        self.first_ref, self.second_ref = first_ref, second_ref
        self._labels = list(first.labels)
        self._order = [list(second.labels).index(label) for label in self._labels]  # second's columns, first's order

    @property
    def labels(self) -> list[str]:
        return self._labels

    @classmethod
    def load(cls, path: Path, registry: ModelRegistry, *, threads: int = 1, quantize: bool = False) -> CascadePredictor:
        """A registered cascade's folder: its stages are loaded (checksums verified) from the same registry."""
        from serving.models.predictor import load_version

        spec = read_spec(path)
        stages = []
        for ref in (spec.first, spec.second):
            predictor, meta = load_version(registry, ref, threads=threads, quantize=quantize)
            check_stage_kind(ref, meta.kind)
            stages.append(predictor)
        return cls(stages[0], stages[1], spec.threshold, spec.first, spec.second)

    def escalated(self, first_proba: np.ndarray) -> np.ndarray:
        """Which rows the first stage is unsure of (its top probability below the threshold)."""
        return np.asarray(first_proba.max(axis=1) < self.threshold, dtype=bool)

    def predict_with_notes(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Probabilities (the answering stage's) and, per text, `cascade:<stage name:version>`."""
        proba = np.array(self.first.predict_proba(texts), dtype=float, copy=True)
        up = self.escalated(proba)
        if up.any():
            picked = [text for text, go in zip(texts, up, strict=True) if go]
            proba[up] = np.asarray(self.second.predict_proba(picked))[:, self._order]
        notes = [f"cascade:{self.second_ref if go else self.first_ref}" for go in up]
        return proba, notes

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_with_notes(texts)[0]


def write_cascade_version(folder: Path, spec: CascadeSpec) -> None:
    (folder / CASCADE_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2), encoding="utf-8")


def parse_spec(first: str, second: str, threshold: float) -> CascadeSpec:
    """A CascadeSpec from command-line values; a ConfigError in one line otherwise."""
    try:
        return CascadeSpec(first=first, second=second, threshold=threshold)
    except ValueError as err:
        raise ConfigError(f"cascade: {' '.join(str(err).split())[:300]}") from None
