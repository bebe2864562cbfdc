"""The plain PyTorch pieces of transformer fine-tuning, with no Ray in sight.

Ray Train glue (`training.transformer`) and the single-process benchmark loop both call these, so the two
paths train the same way: model construction, tokenisation with per-batch (dynamic) padding, the weighted
loss, one epoch of optimiser steps, validation by confusion matrix, early-stopping bookkeeping, checkpoint
state and the exported artifact that `serving.models.transformer` loads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from serving.models.windows import WindowSpec, window_ids
from training.transformer_config import TransformerConfig

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
TRAIN_STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.pt"
LABELS_FILE = "labels.json"
CONFIG_FILE = "transformer_config.json"
MODEL_FILES = ("config.json", "model.safetensors")
WINDOW_OWNER = "window_owner"  # in a Batch of windows: which text of the batch each window belongs to


def split_train_val(labels: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified split of row indices: each class gives `val_fraction` of its rows (at least one if it has
    two or more) to validation, so small queues are measured too. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        rows = np.array(by_class[label])
        rng.shuffle(rows)
        n_val = 0 if len(rows) < 2 else max(1, round(len(rows) * val_fraction))
        val.extend(rows[:n_val].tolist())
        train.extend(rows[n_val:].tolist())
    return sorted(train), sorted(val)


def load_tokenizer(cfg: TransformerConfig) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(cfg.resolved_base_model_path()))


def build_model(cfg: TransformerConfig, label_names: Sequence[str], vocab_size: int) -> PreTrainedModel:
    """The classifier to fine-tune: pretrained weights with a fresh head, or a tiny random BERT for tests."""
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    # Seeding here makes the fresh head (and the tiny model) identical on every worker and every run.
    torch.manual_seed(cfg.seed)
    if cfg.init_from is not None:  # a warm start from a version of the same labels (tiny or not)
        return AutoModelForSequenceClassification.from_pretrained(
            str(cfg.init_from), num_labels=len(label_names), id2label=id2label, label2id=label2id
        )
    if cfg.tiny:
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max(128, cfg.max_length),
            id2label=id2label,  # also sets num_labels
            label2id=label2id,
        )
        return BertForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(
        str(cfg.resolved_base_model_path()),
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
    )


def window_spec(cfg: TransformerConfig) -> WindowSpec:
    return WindowSpec.from_share(cfg.max_length, cfg.window_overlap, cfg.max_windows)


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], spec: WindowSpec) -> Batch:
    """Tokenise one batch into windows (`serving.models.windows`), padded only to the longest window (dynamic padding
    keeps short emails cheap). With several windows per text the batch carries `WINDOW_OWNER`."""
    windows = window_ids(tokenizer, texts, spec)
    batch: Batch = dict(tokenizer.pad({"input_ids": windows.ids}, return_tensors="pt"))
    if spec.max_windows > 1:
        batch[WINDOW_OWNER] = torch.tensor(windows.owner, dtype=torch.long)
    return batch


def forward_logits(model: nn.Module, inputs: Batch) -> torch.Tensor:
    """One row of logits per text: the model's logits, averaged over each text's windows."""
    owner = inputs.get(WINDOW_OWNER)
    if owner is None:
        return model(**inputs).logits
    logits = model(**{k: v for k, v in inputs.items() if k != WINDOW_OWNER}).logits
    n_texts = int(owner.max().item()) + 1
    sums = torch.zeros(n_texts, logits.shape[1], dtype=logits.dtype, device=logits.device).index_add(0, owner, logits)
    counts = torch.bincount(owner, minlength=n_texts).clamp(min=1).unsqueeze(1).to(logits.dtype)
    return sums / counts


def class_weights(label_ids: Sequence[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights scaled to mean 1 over the classes present (absent classes get 1)."""
    counts = np.bincount(np.asarray(label_ids, dtype=np.int64), minlength=num_labels).astype(np.float64)
    weights = np.ones(num_labels)
    present = counts > 0
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: TransformerConfig) -> torch.optim.Optimizer:
    # Decaying biases and LayerNorm weights hurts fine-tuning (the BERT recipe leaves them alone).
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TransformerConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, steps_per_epoch * cfg.epochs)
    return get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)


class DeadlineExceeded(RuntimeError):
    """Raised between batches once a run's deadline has passed: a slow run ends instead of hanging."""


def tensor_batches(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    spec: WindowSpec,
    deadline: float | None = None,
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Turn batches of rows ({"text": [...], "label": [...]}, e.g. from Ray Data) into model inputs."""
    for rows_batch in rows:
        if deadline is not None and time.time() > deadline:
            raise DeadlineExceeded("DeadlineExceeded: the run's timeout has passed")
        inputs = encode(tokenizer, [str(t) for t in rows_batch["text"]], spec)
        yield inputs, torch.tensor(np.asarray(rows_batch["label"]), dtype=torch.long)


@dataclass(frozen=True)
class StepInfo:
    """What the progress display needs after each optimiser step."""

    step: int
    loss: float
    samples_per_s: float


@dataclass(frozen=True)
class EpochStats:
    mean_loss: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Batch, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    on_step: Callable[[StepInfo], None] | None = None,
    max_steps: int | None = None,
) -> EpochStats:
    """One pass of optimiser steps; the time counted includes fetching and tokenising the batches."""
    model.train()
    total_loss, samples, steps = 0.0, 0, 0
    start = time.perf_counter()
    for inputs, targets in batches:
        logits = forward_logits(model, inputs)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps += 1
        samples += len(targets)
        total_loss += loss.item()
        if on_step is not None:
            on_step(StepInfo(steps, loss.item(), samples / (time.perf_counter() - start)))
        if max_steps is not None and steps >= max_steps:
            break
    return EpochStats(total_loss / max(1, steps), samples, time.perf_counter() - start)


@torch.inference_mode()
def confusion_matrix(model: nn.Module, batches: Iterable[tuple[Batch, torch.Tensor]], num_labels: int) -> torch.Tensor:
    """Counts[true, predicted] over the batches; summed across workers by the caller."""
    model.eval()
    counts = torch.zeros(num_labels, num_labels, dtype=torch.int64)
    for inputs, targets in batches:
        predicted = forward_logits(model, inputs).argmax(dim=-1)
        counts += torch.bincount(targets * num_labels + predicted, minlength=num_labels**2).view(num_labels, num_labels)
    return counts


def scores(counts: torch.Tensor) -> dict[str, float]:
    """Macro-F1 over the classes present in validation, and accuracy, from a confusion matrix."""
    counts = counts.double()
    tp = counts.diag()
    support = counts.sum(dim=1)
    predicted = counts.sum(dim=0)
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    present = support > 0
    macro = f1[present].mean().item() if present.any() else 0.0
    accuracy = (tp.sum() / counts.sum().clamp(min=1)).item()
    return {"macro_f1": macro, "accuracy": accuracy}


@dataclass(frozen=True)
class TrainState:
    """Everything beyond the weights that a resumed run needs: where it was and how well it did."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def after_epoch(self, record: dict[str, Any], score: float) -> TrainState:
        improved = score > self.best_score
        return replace(
            self,
            epoch=record["epoch"],
            best_score=score if improved else self.best_score,
            best_epoch=record["epoch"] if improved else self.best_epoch,
            bad_epochs=0 if improved else self.bad_epochs + 1,
            history=[*self.history, record],
        )

    def should_stop(self, patience: int) -> bool:
        return self.bad_epochs >= patience


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face model under a DistributedDataParallel wrapper (Ray's prepare_model adds one)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, PreTrainedModel)
    return inner


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> None:
    unwrap(model).save_pretrained(directory, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER_FILE)
    (directory / TRAIN_STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")


def read_train_state(directory: Path) -> TrainState:
    return TrainState(**json.loads((directory / TRAIN_STATE_FILE).read_text(encoding="utf-8")))


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore weights, optimiser and scheduler in place; return where training stopped."""
    from safetensors.torch import load_file

    unwrap(model).load_state_dict(load_file(directory / "model.safetensors"))
    extra = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    return read_train_state(directory)


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    label_names: Sequence[str],
    cfg: TransformerConfig,
    out_dir: Path,
) -> Path:
    """Write the serving artifact: safetensors weights, tokenizer, ordered labels, and the training config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(out_dir, safe_serialization=True)
    write_export_extras(tokenizer, label_names, cfg, out_dir)
    return out_dir


def write_export_extras(
    tokenizer: PreTrainedTokenizerBase, label_names: Sequence[str], cfg: TransformerConfig, out_dir: Path
) -> None:
    tokenizer.save_pretrained(out_dir)
    (out_dir / LABELS_FILE).write_text(json.dumps(list(label_names), indent=1), encoding="utf-8")
    (out_dir / CONFIG_FILE).write_text(cfg.model_dump_json(indent=1), encoding="utf-8")
