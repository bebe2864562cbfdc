"""CPU inference for the transformer arm: load an exported model folder, return class probabilities.

The folder is what `training.transformer` exports (safetensors weights and config, tokenizer files,
`labels.json`, `transformer_config.json`); nothing from `training` or Ray is imported here, so a Serve replica
stays light. Texts are expected already cleaned by `serving.text.model_text`, the same function training used.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
CONFIG_FILE = "transformer_config.json"
CALIBRATION_FILE = "calibration.json"  # {"temperature": T}, written after training from the validation split
DEFAULT_MAX_LENGTH = 64


class TransformerArtifactError(ValueError):
    """An export folder that cannot be served; the message is one line."""


class TransformerPredictor:
    """A fine-tuned sequence classifier in eval mode, with the label order it was trained on."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        labels: list[str],
        *,
        max_length: int,
        max_batch: int,
        temperature: float = 1.0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.max_batch = max_batch
        self.temperature = temperature  # logits are divided by it before the softmax

    @classmethod
    def load(
        cls, export_dir: Path, *, threads: int = 1, quantize: bool = False, max_batch: int = 32
    ) -> TransformerPredictor:
        """Read an export folder. `threads` sets torch's intra-op threads for the whole process."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        export_dir = Path(export_dir)
        if threads < 1 or max_batch < 1:
            raise TransformerArtifactError("threads and max_batch must be at least 1")
        labels_path = export_dir / LABELS_FILE
        if not export_dir.is_dir() or not labels_path.is_file():
            raise TransformerArtifactError(f"{export_dir} is not a transformer export (no {LABELS_FILE})")
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
            raise TransformerArtifactError(f"{labels_path} must be a list of at least two label names")
        max_length = DEFAULT_MAX_LENGTH
        config_path = export_dir / CONFIG_FILE
        if config_path.is_file():
            max_length = int(json.loads(config_path.read_text(encoding="utf-8")).get("max_length", max_length))

        temperature = read_temperature(export_dir)
        torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
            model = AutoModelForSequenceClassification.from_pretrained(str(export_dir))
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TransformerArtifactError(f"{export_dir}: cannot load the model ({first})") from None
        if model.config.num_labels != len(labels):
            raise TransformerArtifactError(
                f"{export_dir}: the model has {model.config.num_labels} outputs but {len(labels)} labels"
            )
        model.eval()
        if quantize:
            model = quantize_linear_int8(model)
        return cls(model, tokenizer, labels, max_length=max_length, max_batch=max_batch, temperature=temperature)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Temperature-scaled probabilities, one row per text in input order, columns in `labels` order."""
        return np.asarray(softmax(self.logits(texts) / self.temperature, axis=1))

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The model's raw scores, one row per text in input order, columns in `labels` order."""
        if isinstance(texts, str):
            raise ValueError("the predictor takes a sequence of texts, not one string")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("every text given to the predictor must be a string")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if len(texts) == 0:
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # Sorting by length puts texts of similar length together, so padding (wasted compute) stays small.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            out[chunk] = self.model(**batch).logits.float().numpy()
        return out

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label per text."""
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]


def read_temperature(export_dir: Path) -> float:
    path = Path(export_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0  # exported before calibration existed, or not calibrated
    try:
        temperature = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
    except (ValueError, KeyError, TypeError):
        raise TransformerArtifactError(f'{path}: expected {{"temperature": <positive number>}}') from None
    if not 0 < temperature < float("inf"):
        raise TransformerArtifactError(f"{path}: temperature must be a positive number, got {temperature}")
    return temperature


def write_temperature(export_dir: Path, temperature: float) -> None:
    (Path(export_dir) / CALIBRATION_FILE).write_text(json.dumps({"temperature": temperature}), encoding="utf-8")


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised on the fly)."""
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; it still works in torch 2.13 and torchao is
        # not a dependency. Revisit when torch drops it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
