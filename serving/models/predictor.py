"""Load any registered model version as a `Predictor`: texts in, queue probabilities out.

Serving, evaluation and benchmarks go through here, so a version is scored exactly the way it is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from serving.mail.text import PREPROCESSING_VERSION
from serving.models.registry import ModelMeta, ModelRegistry, RegistryError, VersionInfo


class Predictor(Protocol):
    @property
    def labels(self) -> list[str]: ...

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def load_artifact(kind: str, path: Path, *, threads: int = 1, quantize: bool = False) -> Predictor:
    """Build the predictor for one artifact folder; the kind comes from its meta.json."""
    if kind == "linear":
        from serving.models.linear import LinearTextClassifier

        return LinearTextClassifier.load(path)
    if kind == "transformer":
        from serving.models.transformer import TransformerPredictor

        return TransformerPredictor.load(path, threads=threads, quantize=quantize)
    if kind == "rules":
        from serving.models.rules import RulesPredictor

        return RulesPredictor.load(path)
    raise RegistryError(f"unknown model kind '{kind}' in {path}")


def load_version(
    registry: ModelRegistry, ref: str, *, threads: int = 1, quantize: bool = False
) -> tuple[Predictor, ModelMeta]:
    """Resolve `ref` (e.g. `linear:champion`), verify the artifact's checksums and load it."""
    info: VersionInfo = registry.get(ref, verify=True)
    if info.meta.preprocessing_version != PREPROCESSING_VERSION:
        # A model only works on text cleaned the way it was trained on (serving.mail.text); serving it on other
        # cleaning would silently cost accuracy.
        raise RegistryError(
            f"model {info.meta.name}:{info.meta.version} was trained on text cleaned with preprocessing version "
            f"{info.meta.preprocessing_version}, but this release cleans with version {PREPROCESSING_VERSION}: "
            "retrain it on this release"
        )
    try:
        if info.meta.kind == "cascade":  # its stages are versions of the same registry
            from serving.models.cascade import CascadePredictor

            predictor: Predictor = CascadePredictor.load(info.path, registry, threads=threads, quantize=quantize)
        else:
            predictor = load_artifact(info.meta.kind, info.path, threads=threads, quantize=quantize)
    except RegistryError:
        raise
    except Exception as err:  # a damaged pickle or weights file: refuse it with a clear line, keep the registry usable
        raise RegistryError(
            f"model {info.meta.name}:{info.meta.version} cannot be loaded: {type(err).__name__}: {err}"
        ) from None
    if list(predictor.labels) != list(info.meta.labels):
        raise RegistryError(f"model {info.meta.name}:{info.meta.version} labels do not match its meta.json")
    return predictor, info.meta


def check_servable(meta: ModelMeta, queue_names: Sequence[str], triage_queue: str) -> None:
    """Only a model whose labels are all queues of the taxonomy (or triage) can route mail."""
    unknown = sorted(set(meta.labels) - set(queue_names) - {triage_queue})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise RegistryError(
            f"model {meta.name}:{meta.version} cannot be served: its labels are not queues of the taxonomy ({shown})"
        )
