"""How much of an email the transformer should read: the window / chunking table behind the shipped defaults.

    .venv/bin/python benchmarks/bench_transformer.py --windows-table [--n-train 2000] [--n-test 1000]

A cheap screen, as the long-email issue asks before any long fine-tuning run: the MiniLM encoder frozen, each
window's token embeddings mean-pooled (the sentence-embedding recipe MiniLM was trained for), a text's windows
averaged, and a logistic-regression head trained on those vectors. It is run at max_length 64, 128, 256 and 512
with one window (truncation), and with overlapping windows (`serving.models.windows`, the code serving runs), on three
corpora: the project's long-email corpus (`mailroute data synth --long`), Bitext (27 intents) and Banking77
(77 intents), each read and cleaned as `mailroute train` reads them. Beside each: the project's linear model on the
same split. CPU cost is process CPU time per email at one torch thread (emails/s per core is its inverse).
Fine-tuned figures come from `mailroute train transformer` runs and are in the README with their commands.
Writes benchmarks/results/transformer_windows.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from serving.models.windows import WindowSpec, mean_by_owner, window_ids
from training.config import LinearConfig
from training.data import read_dataset
from training.linear import fit_linear
from training.synth import generate, write_corpus
from training.transformer_config import default_base_model_path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# (name, max_length, max_windows): one window truncates; more read the rest of the email too.
SETTINGS = (
    ("64", 64, 1),
    ("128", 128, 1),
    ("256", 256, 1),
    ("512", 512, 1),
    ("64x4", 64, 4),
    ("128x4", 128, 4),
    ("256x2", 256, 2),
)
OVERLAP = 0.25

Split = tuple[list[str], list[str], list[str], list[str]]


def _sample(texts: list[str], labels: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    if n >= len(texts):
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _read(path: Path, text_col: str | None, label_col: str) -> tuple[list[str], list[str]]:
    frame = read_dataset(path, text_col=text_col, label_col=label_col, require_labels=True).frame
    return frame["text"].tolist(), [str(v) for v in frame["label"]]


def corpora(n_train: int, n_test: int) -> dict[str, Split]:
    """Train and test texts of each corpus, cleaned as training cleans them; the shared ones only when present."""
    out: dict[str, Split] = {}
    with tempfile.TemporaryDirectory(prefix="mr-windows-") as tmp:
        for part, seed, n in (("train", 31, n_train), ("test", 32, n_test)):
            write_corpus(generate(n, seed=seed, length="long"), Path(tmp) / f"{part}.jsonl")
        train = _read(Path(tmp) / "train.jsonl", None, "queue")
        test = _read(Path(tmp) / "test.jsonl", None, "queue")
        out["long"] = (*train, *test)
    for name, folder in (("bitext", "bitext_customer_service"), ("banking77", "banking77")):
        if not (SHARED / folder / "train.csv").is_file():
            print(f"  {name}: {SHARED / folder} not found, skipped")
            continue
        train = _sample(*_read(SHARED / folder / "train.csv", "text", "label"), n_train, seed=1)
        test = _sample(*_read(SHARED / folder / "test.csv", "text", "label"), n_test, seed=2)
        out[name] = (*train, *test)
    return out


@torch.inference_mode()
def embed(model: Any, tokenizer: Any, texts: list[str], spec: WindowSpec, batch: int = 32) -> tuple[np.ndarray, Any]:
    """Mean-pooled, L2-normalised embedding per text (its windows averaged); also the windows."""
    windows = window_ids(tokenizer, texts, spec)
    order = sorted(range(len(windows.ids)), key=lambda i: len(windows.ids[i]))
    vectors = np.zeros((len(windows.ids), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        inputs = tokenizer.pad({"input_ids": [windows.ids[i] for i in chunk]}, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vectors[chunk] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    pooled = mean_by_owner(vectors, windows.owner, windows.n_texts)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(min=1e-9), windows


def _scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
    }


def linear_row(split: Split) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = split
    model = fit_linear(train_x, train_y, LinearConfig())
    cpu = time.process_time()
    predicted = [model.labels[i] for i in model.predict_proba(test_x).argmax(axis=1)]
    ms = (time.process_time() - cpu) * 1000 / len(test_x)
    return {**_scores(test_y, predicted), "cpu_ms_per_email": round(ms, 3)}


def frozen_row(model: Any, tokenizer: Any, split: Split, name: str, max_length: int, windows: int) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = split
    spec = WindowSpec.from_share(max_length, OVERLAP if windows > 1 else 0.0, windows)
    train_emb, _ = embed(model, tokenizer, train_x, spec)
    cpu = time.process_time()
    test_emb, test_windows = embed(model, tokenizer, test_x, spec)
    ms = (time.process_time() - cpu) * 1000 / len(test_x)
    # The same head with and without inverse-frequency class weights (what `class_weighting` does in fine-tuning).
    heads = {
        weighting: LogisticRegression(C=10.0, max_iter=3000, class_weight=weighting).fit(train_emb, train_y)
        for weighting in (None, "balanced")
    }
    return {
        "setting": name,
        "max_length": max_length,
        "max_windows": windows,
        **_scores(test_y, heads[None].predict(test_emb).tolist()),
        "class_weighted": _scores(test_y, heads["balanced"].predict(test_emb).tolist()),
        "cpu_ms_per_email": round(ms, 2),
        "emails_per_s_per_core": round(1000 / ms, 1),
        "windows_per_email": round(len(test_windows.ids) / len(test_x), 2),
    }


def windows_table(n_train: int, n_test: int) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)  # the cost per core, as a Serve replica runs it
    base = str(default_base_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base).eval()
    out: dict[str, Any] = {"n_train": n_train, "n_test": n_test, "overlap": OVERLAP, "corpora": {}}
    for corpus, split in corpora(n_train, n_test).items():
        lengths = [len(tokenizer(t)["input_ids"]) for t in split[2]]
        linear = linear_row(split)
        print(
            f"  {corpus}: {len(split[0])} train / {len(split[2])} test, tokens per email p50 "
            f"{int(np.median(lengths))} p90 {int(np.percentile(lengths, 90))}; linear accuracy "
            f"{linear['accuracy']:.4f} macro-F1 {linear['macro_f1']:.4f}",
            flush=True,
        )
        rows = []
        for name, max_length, windows in SETTINGS:
            row = frozen_row(model, tokenizer, split, name, max_length, windows)
            rows.append(row)
            print(
                f"    frozen MiniLM + logistic head {name:>6}: accuracy {row['accuracy']:.4f} macro-F1 "
                f"{row['macro_f1']:.4f} (class-weighted {row['class_weighted']['accuracy']:.4f} / "
                f"{row['class_weighted']['macro_f1']:.4f})  {row['cpu_ms_per_email']:7.2f} CPU ms/email "
                f"({row['windows_per_email']:.2f} windows)",
                flush=True,
            )
        out["corpora"][corpus] = {
            "tokens_p50": int(np.median(lengths)),
            "tokens_p90": int(np.percentile(lengths, 90)),
            "linear": linear,
            "frozen": rows,
        }
    return out
