"""CPU inference for the transformer arm: load an exported model folder, return class probabilities.

The folder is what `training.transformer` exports (safetensors weights and config, tokenizer files,
`labels.json`, `transformer_config.json`); nothing from `training` or Ray is imported here, so a Serve replica
stays light. Texts are expected already cleaned by `serving.mail.text.model_text`, the same function training used.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from serving.models.windows import WindowSpec, mean_by_owner, window_ids

if TYPE_CHECKING:
    from serving.models.linear import LinearTextClassifier

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
CONFIG_FILE = "transformer_config.json"
CALIBRATION_FILE = "calibration.json"  # {"temperature": T}, written after training from the validation split
BLEND_FILE = "blend.json"  # {"linear_weight": w}: share of the companion linear model in the probabilities
BLEND_DIR = "linear"  # the companion linear model, trained on the same rows as the transformer
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
        max_windows: int = 1,
        window_overlap: int = 0,  # tokens
        linear: LinearTextClassifier | None = None,
        linear_weight: float = 0.0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.windows = WindowSpec(max_length=max_length, overlap=window_overlap, max_windows=max_windows)
        self.max_batch = max_batch  # windows per forward pass
        self.temperature = temperature  # logits are divided by it before the softmax
        # A companion linear model (serving.models.linear.LinearTextClassifier) whose calibrated probabilities are
        # mixed in with this weight: the two err on different emails. The weight is the one with the best
        # log-likelihood on the validation split, so on those rows the mix is at least as good as either alone.
        self.linear = linear
        self.linear_weight = linear_weight
        if linear is not None and list(linear.labels) != list(labels):
            raise TransformerArtifactError("the companion linear model was trained on other labels")

    @property
    def max_length(self) -> int:
        return self.windows.max_length

    @classmethod
    def load(
        cls, export_dir: Path, *, threads: int = 1, quantize: bool = False, max_batch: int = 32
    ) -> TransformerPredictor:
        """Read an export folder. `threads` sets torch's intra-op threads for the whole process."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a progress bar per load clutters every command's and replica's output

        export_dir = Path(export_dir)
        if threads < 1 or max_batch < 1:
            raise TransformerArtifactError("threads and max_batch must be at least 1")
        labels_path = export_dir / LABELS_FILE
        if not export_dir.is_dir() or not labels_path.is_file():
            raise TransformerArtifactError(f"{export_dir} is not a transformer export (no {LABELS_FILE})")
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
            raise TransformerArtifactError(f"{labels_path} must be a list of at least two label names")
        trained: dict[str, Any] = {}
        config_path = export_dir / CONFIG_FILE
        if config_path.is_file():
            trained = json.loads(config_path.read_text(encoding="utf-8"))
        try:
            windows = WindowSpec.from_share(
                int(trained.get("max_length", DEFAULT_MAX_LENGTH)),
                float(trained.get("window_overlap", 0.0)),
                int(trained.get("max_windows", 1)),
            )
        except (TypeError, ValueError) as err:
            raise TransformerArtifactError(f"{config_path}: {err}") from None

        temperature = read_temperature(export_dir)
        linear, linear_weight = read_blend(export_dir)
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
        return cls(
            model,
            tokenizer,
            labels,
            max_length=windows.max_length,
            max_batch=max_batch,
            temperature=temperature,
            max_windows=windows.max_windows,
            window_overlap=windows.overlap,
            linear=linear,
            linear_weight=linear_weight,
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, one row per text in input order, columns in `labels` order (blended with the
        companion linear model's when the artifact has one)."""
        if self.linear is not None and self.linear_weight >= 1.0:
            return self.linear.predict_proba(list(texts))  # the transformer would add nothing: skip its cost
        proba = self.transformer_proba(texts)
        if self.linear is None or self.linear_weight == 0.0 or len(texts) == 0:
            return proba
        return blend(proba, self.linear.predict_proba(list(texts)), self.linear_weight)

    def proba_parts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """The transformer's and the companion's probabilities apart (None without a companion), for scoring each
        part; `blend(*parts, linear_weight)` is what `predict_proba` returns."""
        companion = self.linear.predict_proba(list(texts)) if self.linear is not None else None
        return self.transformer_proba(texts), companion

    def transformer_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The transformer's own temperature-scaled probabilities, without the linear companion."""
        return np.asarray(softmax(self.logits(texts) / self.temperature, axis=1))

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The model's raw scores, one row per text in input order, columns in `labels` order.

        A text longer than one window is read as overlapping windows (`serving.models.windows`) whose logits are
        averaged.
        """
        if isinstance(texts, str):
            raise ValueError("the predictor takes a sequence of texts, not one string")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("every text given to the predictor must be a string")
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        windows = window_ids(self.tokenizer, texts, self.windows)
        ids = windows.ids
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        # Sorting by length puts windows of similar length together, so padding (wasted compute) stays small.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            out[chunk] = self.model(**batch).logits.float().numpy()
        if self.windows.max_windows == 1:
            return out
        return mean_by_owner(out, windows.owner, windows.n_texts)

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


def blend(transformer: np.ndarray, linear: np.ndarray, linear_weight: float) -> np.ndarray:
    """Mix two models' probabilities (same column order); rows still sum to one."""
    return (1.0 - linear_weight) * transformer + linear_weight * linear


def read_blend(export_dir: Path) -> tuple[LinearTextClassifier | None, float]:
    """The companion linear model and its weight, or (None, 0.0) for an export without one."""
    path = Path(export_dir) / BLEND_FILE
    if not path.is_file():
        return None, 0.0
    try:
        weight = float(json.loads(path.read_text(encoding="utf-8"))["linear_weight"])
    except (ValueError, KeyError, TypeError):
        raise TransformerArtifactError(f'{path}: expected {{"linear_weight": <number in [0, 1]>}}') from None
    if not 0.0 <= weight <= 1.0:
        raise TransformerArtifactError(f"{path}: linear_weight must be in [0, 1], got {weight}")
    from serving.models.linear import LinearTextClassifier

    try:
        linear = LinearTextClassifier.load(Path(export_dir) / BLEND_DIR)
    except Exception as err:  # a damaged pickle raises anything from EOFError to AttributeError: one line for all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TransformerArtifactError(f"{export_dir}: cannot load the companion linear model ({first})") from None
    return linear, weight


def write_blend(export_dir: Path, linear: LinearTextClassifier, linear_weight: float) -> None:
    folder = Path(export_dir) / BLEND_DIR
    folder.mkdir(parents=True, exist_ok=True)
    linear.save(folder)
    (Path(export_dir) / BLEND_FILE).write_text(json.dumps({"linear_weight": linear_weight}), encoding="utf-8")


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
