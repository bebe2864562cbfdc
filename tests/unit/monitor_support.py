"""Shared set-up of the monitoring tests: a small linear version trained through the real pipeline (so its
reference sample is written the way training writes it) and windows of routed synthetic mail in a memory log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitoring.simulate import Arm, fill, route_frame
from serving.config import Home, load_serving
from serving.models.predictor import load_version
from serving.models.registry import ModelMeta, ModelRegistry
from serving.store.memory import MemoryEventLog
from training.config import load_training
from training.pipeline import DataSpec, train_linear
from training.synth import generate

REPO = Path(__file__).resolve().parents[2]
END = datetime(2026, 1, 2, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def train_version(home: Home, *, n: int = 3000, seed: int = 1, holdout: float = 0.5) -> ModelMeta:
    """`train_linear` on `n` generated emails; half held out, so the reference sample has n/4 rows."""
    data = home.root / f"train-{seed}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    generate(n, seed=seed).to_json(data, orient="records", lines=True)
    cfg = load_training(REPO / "configs" / "training.yaml")
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"holdout_fraction": holdout})})
    return train_linear(DataSpec(data, label_col="queue"), cfg, home).meta


def window_log(
    home: Home,
    *,
    n: int,
    seed: int,
    drift: float = 0.0,
    arms: tuple[str, ...] = ("linear",),
    feedback: float = 0.3,
    model: str = "linear",
) -> MemoryEventLog:
    """A memory event log holding `n` routed emails of the last day before END, split over `arms` (all served
    by the champion of `model`), a random `feedback` share of them with audit feedback."""
    predictor, meta = load_version(ModelRegistry(home.registry), model)
    served = [Arm(name, predictor, meta.name, meta.version) for name in arms]
    predictions, fb = route_frame(
        generate(n, seed=seed, drift=drift), served, start=END - WINDOW, span=WINDOW - timedelta(minutes=1),
        policy=load_serving(REPO / "configs" / "serving.yaml").policy, feedback_share=feedback, seed=seed,
        feedback_source="audit",  # random feedback is an audit's: what checks.quality.sources counts by default
    )  # fmt: skip
    store = MemoryEventLog()
    fill(store, predictions, fb)
    return store
