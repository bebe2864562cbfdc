"""How the transformer reads an email longer than its window: overlapping token windows, logits averaged.

A real support email runs to hundreds of tokens and the sentence that decides its queue is often not in the first
64. Each text is cut into windows of `max_length` tokens (each with its own [CLS] and [SEP]); consecutive windows
share `overlap` tokens so that no sentence is only ever seen cut in half; at most `max_windows` windows are kept per
text. The model scores every window and a text's logits are the mean over its windows. Training
(`training.torch_loop`) and serving (`serving.models.transformer`) both call `window_ids` and the pooling
functions here, so the two read an email the same way. A text that fits one window gets exactly the ids and the
logits of plain truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WindowSpec", "Windows", "mean_by_owner", "window_ids"]


@dataclass(frozen=True)
class WindowSpec:
    """Window length in tokens (special tokens included), tokens shared by neighbours, windows kept per text."""

    max_length: int
    overlap: int = 0
    max_windows: int = 1

    @classmethod
    def from_share(cls, max_length: int, overlap_share: float, max_windows: int) -> WindowSpec:
        """Windows whose neighbours share `overlap_share` (0 to 0.5) of their text tokens."""
        if not 0.0 <= overlap_share <= 0.5:
            raise ValueError(f"window_overlap must be a share between 0 and 0.5 of a window, got {overlap_share}")
        return cls(max_length=max_length, overlap=int(overlap_share * (max_length - 2)), max_windows=max_windows)

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {self.max_windows}")
        # Each window holds max_length - 2 text tokens; the overlap must leave at least half of them new.
        if not 0 <= self.overlap <= (self.max_length - 2) // 2:
            raise ValueError(
                f"overlap must be between 0 and {(self.max_length - 2) // 2} tokens for windows of "
                f"{self.max_length}, got {self.overlap}"
            )


@dataclass(frozen=True)
class Windows:
    """Token ids of every window, and for each window the index of the text it came from."""

    ids: list[list[int]]
    owner: list[int]
    n_texts: int


def window_ids(tokenizer: Any, texts: Sequence[str], spec: WindowSpec) -> Windows:
    """Cut each text into at most `spec.max_windows` overlapping windows of token ids, in text order."""
    if spec.max_windows == 1:
        ids = tokenizer(list(texts), truncation=True, max_length=spec.max_length)["input_ids"]
        return Windows(ids=list(ids), owner=list(range(len(texts))), n_texts=len(texts))
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=spec.max_length,
        stride=spec.overlap,
        return_overflowing_tokens=True,
    )
    kept_ids: list[list[int]] = []
    owner: list[int] = []
    per_text = [0] * len(texts)
    for window, text in zip(enc["input_ids"], enc["overflow_to_sample_mapping"], strict=True):
        if per_text[text] < spec.max_windows:
            per_text[text] += 1
            kept_ids.append(window)
            owner.append(int(text))
    return Windows(ids=kept_ids, owner=owner, n_texts=len(texts))


def mean_by_owner(values: np.ndarray, owner: Sequence[int], n_texts: int) -> np.ndarray:
    """Rows of `values` (one per window) averaged per text: shape (n_texts, columns)."""
    out = np.zeros((n_texts, values.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(owner, dtype=np.int64), values)
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=n_texts).astype(np.float64)
    return (out / np.maximum(counts, 1.0)[:, None]).astype(values.dtype)
