"""Transformer training: the pure PyTorch pieces (fast) and the Ray Train run with two workers (slow).

The Ray tests share one tiny run (module fixture): a randomly initialised 2-layer BERT on the real MiniLM
tokenizer, so tokenisation, sharding, checkpoints, resume and export are all real but each epoch is quick.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from serving.models.windows import WindowSpec
from training import torch_loop
from training.transformer import (
    RAY_SNAPSHOT_FILE,
    TransformerInputError,
    TransformerRunResult,
    train_transformer,
)
from training.transformer_config import TransformerConfig

WORDS = {
    "billing": "invoice charge refund payment billed overcharged",
    "technical": "error crash bug login broken timeout",
    "shipping": "parcel delivery tracking courier package shipped",
}
FILLER = ["the", "a", "my", "please", "help", "hello", "thanks", "today"]


def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = list(WORDS)[i % len(WORDS)]
        words = rng.choices(WORDS[label].split(), k=4) + rng.choices(FILLER, k=4)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def tiny_cfg(**overrides: object) -> TransformerConfig:
    base = {
        "tiny": True,
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "num_workers": 2,
        "early_stopping_patience": 5,
        "log_every_steps": 10,
    }
    return TransformerConfig.model_validate({**base, **overrides})


# --- pure PyTorch, no Ray -----------------------------------------------------------------------------------


def test_overfit_one_batch() -> None:
    """Eight examples, one batch, 100 steps: a model that cannot memorise this has a broken loop."""
    torch.set_num_threads(1)
    cfg = tiny_cfg(weight_decay=0.0)
    tokenizer = torch_loop.load_tokenizer(cfg)
    texts = [
        "refund my invoice please",
        "the app crashes on login",
        "where is my parcel",
        "cancel my subscription now",
        "charged twice on my card",
        "error 500 when saving",
        "courier lost the delivery",
        "close my account today",
    ]
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    model = torch_loop.build_model(cfg, ["a", "b", "c", "d"], len(tokenizer))
    optimizer = torch_loop.make_optimizer(model, cfg)
    batch = torch_loop.encode(tokenizer, texts, torch_loop.window_spec(cfg))
    loss_fn = torch.nn.CrossEntropyLoss()
    first = torch_loop.train_epoch(model, [(batch, targets)], optimizer, None, loss_fn).mean_loss
    for _ in range(99):
        last = torch_loop.train_epoch(model, [(batch, targets)], optimizer, None, loss_fn).mean_loss
    assert first > 1.0
    assert last < 0.1


def test_dynamic_padding_pads_to_longest_in_batch() -> None:
    tokenizer = torch_loop.load_tokenizer(tiny_cfg())
    short = torch_loop.encode(tokenizer, ["hi", "hello there"], WindowSpec(max_length=64))
    long = torch_loop.encode(tokenizer, ["word " * 200], WindowSpec(max_length=16))
    assert short["input_ids"].shape == (2, 4)  # [CLS] hello there [SEP]
    assert long["input_ids"].shape == (1, 16)
    windows = torch_loop.encode(tokenizer, ["hi", "word " * 200], WindowSpec(max_length=16, overlap=4, max_windows=3))
    assert windows["input_ids"].shape == (4, 16)  # one window for "hi", three for the long text
    assert windows[torch_loop.WINDOW_OWNER].tolist() == [0, 1, 1, 1]


def test_split_is_stratified_and_deterministic() -> None:
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 1
    train, val = torch_loop.split_train_val(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(61))
    assert [labels[i] for i in val].count("a") == 10
    assert [labels[i] for i in val].count("b") == 2
    assert "c" not in [labels[i] for i in val]  # a single example stays in training
    assert (train, val) == torch_loop.split_train_val(labels, 0.2, seed=3)
    assert val != torch_loop.split_train_val(labels, 0.2, seed=4)[1]


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = torch_loop.class_weights([0, 0, 0, 1], num_labels=3)
    assert weights.tolist() == pytest.approx([2 / 3, 2.0, 1.0])


def test_scores_from_confusion_matrix() -> None:
    counts = torch.tensor([[3, 1], [0, 0]])  # class 1 never occurs: left out of macro-F1
    assert torch_loop.scores(counts) == pytest.approx({"macro_f1": 6 / 7, "accuracy": 0.75})
    counts = torch.tensor([[2, 0], [2, 0]])
    assert torch_loop.scores(counts) == pytest.approx({"macro_f1": (2 / 3 + 0) / 2, "accuracy": 0.5})


def test_train_state_counts_epochs_without_improvement() -> None:
    state = torch_loop.TrainState()
    for epoch, score in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        state = state.after_epoch({"epoch": epoch}, score)
    assert (state.epoch, state.best_epoch, state.best_score, state.bad_epochs) == (4, 2, 0.7, 2)
    assert state.should_stop(patience=2) and not state.should_stop(patience=3)
    assert len(state.history) == 4


@pytest.mark.parametrize(
    ("texts", "labels", "kwargs", "message"),
    [
        ([], [], {}, "no training texts"),
        (["a", "b"], ["x"], {}, "must pair up"),
        (["a", "b", "c"], ["x", "y", "z"], {"label_names": ["x", "y"]}, "not in label_names"),
        (["a", "b"], ["x", "x"], {}, "at least two labels"),
        (["a", "b"], ["x", "y"], {}, "too few"),
    ],
)
def test_bad_inputs_raise_one_line(
    tmp_path: Path, texts: list[str], labels: list[str], kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as err:
        train_transformer(texts, labels, tiny_cfg(), run_dir=tmp_path / "run", **kwargs)
    assert isinstance(err.value, TransformerInputError)
    assert "\n" not in str(err.value)


def test_missing_base_model_raises_one_line(tmp_path: Path) -> None:
    texts, labels = synthetic(30)
    cfg = tiny_cfg(base_model_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="does not exist") as err:
        train_transformer(texts, labels, cfg, run_dir=tmp_path / "run")
    assert "\n" not in str(err.value)


def test_existing_run_without_resume_is_refused(tmp_path: Path) -> None:
    texts, labels = synthetic(30)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RAY_SNAPSHOT_FILE).write_text("{}")
    with pytest.raises(ValueError, match="already holds a training run"):
        train_transformer(texts, labels, tiny_cfg(), run_dir=run_dir, resume=False)


def test_resuming_on_other_labels_is_refused(tmp_path: Path) -> None:
    texts, labels = synthetic(30)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RAY_SNAPSHOT_FILE).write_text("{}")
    (run_dir / "mailroute_run.json").write_text(json.dumps({"label_names": ["x", "y"], "data_fingerprint": ""}))
    with pytest.raises(ValueError, match="other labels"):
        train_transformer(texts, labels, tiny_cfg(), run_dir=run_dir)


# --- Ray Train, two workers --------------------------------------------------------------------------------

DATA = synthetic(192)


@pytest.fixture(scope="module")
def first_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> TransformerRunResult:
    run_dir = tmp_path_factory.mktemp("transformer") / "run"
    texts, labels = DATA
    return train_transformer(texts, labels, tiny_cfg(), run_dir=run_dir, timeout_s=240)


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_train_and_loss_falls(first_run: TransformerRunResult) -> None:
    history = first_run.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"] - 0.02
    metrics = first_run.metrics
    assert metrics["num_workers"] == 2 and metrics["start_epoch"] == 1 and metrics["epochs_run"] == 2
    assert metrics["train_size"] + metrics["val_size"] == len(DATA[0])
    assert metrics["val_macro_f1"] == max(h["val_macro_f1"] for h in history)
    assert metrics["train_samples_per_s"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_export_serves_the_best_epoch(first_run: TransformerRunResult) -> None:
    """The exported folder loads without Ray and scores the validation split as the best epoch did."""
    from serving.models.transformer import TransformerPredictor

    export = first_run.export_dir
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "labels.json",
        "transformer_config.json",
    } <= {p.name for p in export.iterdir()}
    predictor = TransformerPredictor.load(export)
    assert predictor.labels == sorted(WORDS)
    texts, labels = DATA
    _, val = torch_loop.split_train_val(labels, tiny_cfg().val_fraction, tiny_cfg().seed)
    predicted = predictor.predict([texts[i] for i in val])
    accuracy = sum(p == labels[i] for p, i in zip(predicted, val, strict=True)) / len(val)
    assert accuracy == pytest.approx(first_run.metrics["val_accuracy"], abs=1.01 / len(val))


@pytest.mark.ray
@pytest.mark.slow
def test_second_call_resumes_after_the_last_epoch(first_run: TransformerRunResult) -> None:
    run_dir = first_run.export_dir.parent
    texts, labels = DATA
    resumed = train_transformer(texts, labels, tiny_cfg(epochs=3), run_dir=run_dir, timeout_s=240)
    assert resumed.metrics["start_epoch"] == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first_run.history  # carried over from the checkpoint, not retrained
