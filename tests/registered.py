"""Registered model versions for tests, importable from every test folder (pytest puts `tests/` on sys.path): a
linear model trained on synthetic mail and a tiny random transformer (real tokenizer, 2 layers), each a champion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.config import Home, load_queues
from serving.mail.text import PREPROCESSING_VERSION, model_text
from serving.models.registry import ModelMeta, ModelRegistry, open_registry
from training.config import LinearConfig
from training.linear import fit_linear
from training.synth import generate
from training.torch_loop import build_model, export_model, load_tokenizer
from training.transformer_config import TransformerConfig

QUEUES = load_queues(Path(__file__).resolve().parents[1] / "configs" / "queues.yaml")
COMMON: dict[str, Any] = {"preprocessing_version": PREPROCESSING_VERSION, "data_fingerprint": "test", "metrics": {},
                          "params": {}}  # fmt: skip


def register_tiny_transformer(registry: ModelRegistry, labels: Sequence[str], name: str = "transformer") -> ModelMeta:
    """A tiny random transformer with these labels: it loads and answers like a real one, at chance."""
    cfg = TransformerConfig(tiny=True)
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, list(labels), len(tokenizer))
    return registry.register(
        name,
        lambda folder: export_model(model, tokenizer, list(labels), cfg, folder),  # type: ignore[arg-type,return-value]
        kind="transformer",
        labels=list(labels),
        **COMMON,
    )


def register_models(home: Home) -> None:
    """A linear model on 1,500 synthetic emails (with the drift-monitoring reference a training run stores: 400
    held-out emails) and a tiny random transformer (no reference: its checks are skipped), each champion."""
    import pandas as pd

    from monitoring.reference import reference_writer, with_reference

    registry = open_registry(home)  # $MAILROUTE_REGISTRY_URI's when set (the multi-node test's shared registry)
    frame = generate(1500, seed=31)
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    linear = fit_linear(texts, frame["queue"].tolist(), LinearConfig(n_jobs=1))
    held = generate(400, seed=32)
    proba = linear.predict_proba([model_text(s, b) for s, b in zip(held["subject"], held["body"], strict=True)])
    both = pd.concat([frame, held], ignore_index=True).rename(columns={"queue": "label"})
    reference = reference_writer(both, range(len(frame), len(both)), proba, linear.labels, policy="redacted", size=400)
    registry.register("linear", with_reference(linear.save, reference), kind="linear", labels=linear.labels, **COMMON)
    register_tiny_transformer(registry, QUEUES.names)
