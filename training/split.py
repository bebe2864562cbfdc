"""Deterministic stratified splits and data fingerprints, shared by every model kind."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices
    calib: np.ndarray
    test: np.ndarray


def stratified_split(labels: Sequence[str], holdout_fraction: float, seed: int) -> Split:
    """Hold `holdout_fraction` of each class out (half calibration, half test); the rest trains.

    A class with fewer than 3 examples stays entirely in training: it cannot be both learnt and measured.
    """
    rng = np.random.default_rng(seed)
    arr = np.asarray(list(labels))
    train: list[np.ndarray] = []
    calib: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in sorted(set(arr.tolist())):
        idx = np.flatnonzero(arr == label)
        rng.shuffle(idx)
        if len(idx) < 3:
            train.append(idx)
            continue
        held = min(max(2, round(len(idx) * holdout_fraction)), len(idx) - 1)
        half = held // 2
        calib.append(idx[:half])
        test.append(idx[half:held])
        train.append(idx[held:])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.array([], dtype=int)

    return Split(cat(train), cat(calib), cat(test))


def fingerprint(texts: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 over the (text, label) pairs in order: two trainings on the same data share it."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
        digest.update(str(label).encode("utf-8"))
        digest.update(b"\x1e")
    return f"sha256:{digest.hexdigest()[:32]}"
