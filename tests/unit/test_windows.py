"""Reading long emails: overlapping token windows, logits pooled per email, and the linear blend of the arm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.models.transformer import TransformerArtifactError, TransformerPredictor, write_blend
from serving.models.windows import WindowSpec, mean_by_owner, window_ids
from training import torch_loop
from training.calibrate import fit_blend_weight
from training.config import LinearConfig
from training.linear import fit_linear
from training.transformer_config import TransformerConfig

LABELS = ["billing", "shipping", "technical"]
SHORT = ["refund my invoice please", "where is my parcel", "the app crashes | error 500 on login"]
LONG = " ".join(f"sentence number {i} says nothing much about the request." for i in range(60))


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return torch_loop.load_tokenizer(TransformerConfig(tiny=True))


def _export(folder: Path, max_windows: int) -> Path:
    cfg = TransformerConfig(tiny=True, max_length=32, max_windows=max_windows, window_overlap=0.25)
    tok = torch_loop.load_tokenizer(cfg)
    model = torch_loop.build_model(cfg, LABELS, len(tok))  # seeded: the same weights for every max_windows
    model.eval()
    return torch_loop.export_model(model, tok, LABELS, cfg, folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("windows")
    return _export(root / "one", 1), _export(root / "four", 4)


def test_one_window_is_plain_truncation(tokenizer: object) -> None:
    spec = WindowSpec(max_length=16)
    windows = window_ids(tokenizer, [*SHORT, LONG], spec)
    plain = tokenizer([*SHORT, LONG], truncation=True, max_length=16)["input_ids"]  # type: ignore[operator]
    assert windows.ids == plain and windows.owner == [0, 1, 2, 3]


def test_long_text_becomes_overlapping_windows(tokenizer: object) -> None:
    spec = WindowSpec.from_share(32, 0.25, 4)
    assert spec.overlap == 7
    windows = window_ids(tokenizer, [SHORT[0], LONG], spec)
    assert windows.owner == [0, 1, 1, 1, 1]  # the long text is cut at max_windows
    cls, sep = windows.ids[0][0], windows.ids[0][-1]
    for ids in windows.ids[1:]:
        assert len(ids) == 32 and ids[0] == cls and ids[-1] == sep
    for left, right in zip(windows.ids[1:], windows.ids[2:], strict=False):
        assert left[-1 - spec.overlap : -1] == right[1 : 1 + spec.overlap]  # neighbours share `overlap` tokens
    everything = tokenizer(LONG)["input_ids"]  # type: ignore[operator]
    assert windows.ids[1][1:-1] == everything[1:31]


def test_bad_window_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        WindowSpec(max_length=32, overlap=16)
    with pytest.raises(ValueError, match="max_windows"):
        WindowSpec(max_length=32, max_windows=0)
    with pytest.raises(ValueError, match=r"share between 0 and 0\.5"):
        WindowSpec.from_share(32, 0.75, 2)


def test_mean_by_owner_averages_each_texts_windows() -> None:
    values = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]], dtype=np.float32)
    pooled = mean_by_owner(values, [0, 1, 1, 2], 3)
    np.testing.assert_allclose(pooled, [[1, 0], [4, 3], [7, 7]])
    assert pooled.dtype == np.float32


def test_chunked_predictor_matches_single_window_on_short_emails(exports: tuple[Path, Path]) -> None:
    one, four = (TransformerPredictor.load(path) for path in exports)
    assert (one.windows.max_windows, four.windows.max_windows) == (1, 4)
    np.testing.assert_allclose(four.predict_proba(SHORT), one.predict_proba(SHORT), atol=1e-6)
    # A long email is read further than its first window: the answer changes, and is the windows' mean.
    assert not np.allclose(four.logits([LONG]), one.logits([LONG]))
    windows = window_ids(four.tokenizer, [LONG], four.windows)
    per_window = np.stack([one.logits([four.tokenizer.decode(ids[1:-1])])[0] for ids in windows.ids])
    np.testing.assert_allclose(four.logits([LONG])[0], per_window.mean(axis=0), atol=1e-4)


def test_training_pools_logits_the_way_serving_does(exports: tuple[Path, Path]) -> None:
    predictor = TransformerPredictor.load(exports[1], max_batch=3)
    batch = torch_loop.encode(predictor.tokenizer, [*SHORT, LONG], predictor.windows)
    with torch.inference_mode():
        pooled = torch_loop.forward_logits(predictor.model, batch).numpy()
    assert pooled.shape == (4, len(LABELS))
    np.testing.assert_allclose(pooled, predictor.logits([*SHORT, LONG]), atol=1e-5)


def test_linear_blend_mixes_calibrated_probabilities(tmp_path: Path, exports: tuple[Path, Path]) -> None:
    texts = ["refund the invoice charge", "parcel delivery tracking", "app error crash"] * 10
    linear = fit_linear(texts, LABELS * 10, LinearConfig(min_df=1, n_jobs=1))
    blended = tmp_path / "blended"
    blended.mkdir()
    for item in exports[1].iterdir():
        (blended / item.name).write_bytes(item.read_bytes())
    write_blend(blended, linear, 0.3)
    predictor = TransformerPredictor.load(blended)
    assert predictor.linear_weight == 0.3
    expected = 0.7 * predictor.transformer_proba(SHORT) + 0.3 * linear.predict_proba(SHORT)
    np.testing.assert_allclose(predictor.predict_proba(SHORT), expected, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(SHORT).sum(axis=1), 1.0, atol=1e-6)
    write_blend(blended, linear, 1.0)  # all weight on the companion: the transformer is not even run
    only_linear = TransformerPredictor.load(blended)
    only_linear.model = None  # type: ignore[assignment]
    np.testing.assert_allclose(only_linear.predict_proba(SHORT), linear.predict_proba(SHORT), atol=1e-9)
    for bad in ('{"linear_weight": 1.5}', '{"weight": 0.2}', "{"):
        (blended / "blend.json").write_text(bad)
        with pytest.raises(TransformerArtifactError, match=r"blend\.json"):
            TransformerPredictor.load(blended)
    (blended / "blend.json").write_text(json.dumps({"linear_weight": 0.5}))
    (blended / "linear" / "model.joblib").unlink()
    with pytest.raises(TransformerArtifactError, match="companion linear model") as err:
        TransformerPredictor.load(blended)
    assert "\n" not in str(err.value)


def test_exports_from_before_windows_read_one_window(tmp_path: Path, exports: tuple[Path, Path]) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for item in exports[1].iterdir():
        (old / item.name).write_bytes(item.read_bytes())
    config = json.loads((old / "transformer_config.json").read_text())
    for key in ("max_windows", "window_overlap", "linear_blend"):
        config.pop(key)
    (old / "transformer_config.json").write_text(json.dumps(config))
    predictor = TransformerPredictor.load(old)
    assert predictor.windows == WindowSpec(max_length=32, overlap=0, max_windows=1)
    assert predictor.linear is None and predictor.linear_weight == 0.0


def test_blend_weight_follows_the_better_model() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    good = np.full((300, 3), 0.05)
    good[np.arange(300), y] = 0.9
    useless = np.full((300, 3), 1 / 3)
    assert fit_blend_weight(good, useless, y) == 0.0
    assert fit_blend_weight(useless, good, y) == 1.0
    # Two models that err on different rows: the mix beats both, so the weight is inside (0, 1).
    first, second = good.copy(), good.copy()
    first[:100] = useless[:100]
    second[200:] = useless[200:]
    assert 0.0 < fit_blend_weight(first, second, y) < 1.0


def _buried(rng: np.random.Generator, label: str) -> str:
    """An email whose only clue sits past token 300: filler shared by every queue, then the ask, then filler."""
    filler = [
        "hello",
        "team",
        "thanks",
        "again",
        "for",
        "the",
        "quick",
        "answer",
        "last",
        "week",
        "it",
        "was",
        "a",
        "busy",
        "month",
        "here",
    ]
    clue = {"billing": "invoice refund charge", "shipping": "parcel courier delivery", "technical": "error crash bug"}
    head = " ".join(rng.choice(filler, size=300))
    return f"{head} so here is my request {clue[label]} {clue[label]} and {' '.join(rng.choice(filler, size=20))}"


@pytest.mark.slow
def test_a_clue_past_the_first_window_is_read_by_the_default_windows() -> None:
    """A small model trained on tiny data: with the shipped windows it routes emails whose deciding sentence
    sits past the first window (token 300); truncated at 64 tokens (the old default) it can only guess."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    train_y = LABELS * 30
    test_y = LABELS * 10
    train_x = [_buried(rng, y) for y in train_y]
    test_x = [_buried(rng, y) for y in test_y]
    shipped = TransformerConfig()
    assert shipped.max_windows > 1 and shipped.max_length < 300  # the clue is in a later window
    scores = {}
    for name, overrides in (("windows", {}), ("truncated", {"max_length": 64, "max_windows": 1})):
        cfg = TransformerConfig(
            tiny=True,
            max_length=overrides.get("max_length", shipped.max_length),
            max_windows=overrides.get("max_windows", shipped.max_windows),
            window_overlap=shipped.window_overlap,
            learning_rate=3e-3,
            weight_decay=0.0,
        )
        tok = torch_loop.load_tokenizer(cfg)
        model = torch_loop.build_model(cfg, LABELS, len(tok))
        optimizer = torch_loop.make_optimizer(model, cfg)
        ids = torch.tensor([LABELS.index(y) for y in train_y])
        loss_fn = torch.nn.CrossEntropyLoss()
        spec = torch_loop.window_spec(cfg)
        for epoch in range(25):
            order = np.random.default_rng(epoch).permutation(len(train_x))
            batches = [
                (torch_loop.encode(tok, [train_x[i] for i in order[s : s + 16]], spec), ids[order[s : s + 16]])
                for s in range(0, len(order), 16)
            ]
            torch_loop.train_epoch(model, batches, optimizer, None, loss_fn)
        counts = torch_loop.confusion_matrix(
            model, [(torch_loop.encode(tok, test_x, spec), torch.tensor([LABELS.index(y) for y in test_y]))], 3
        )
        scores[name] = torch_loop.scores(counts)["accuracy"]
    assert scores["windows"] >= 0.8, scores  # chance is 1/3
    assert scores["truncated"] <= 0.5, scores


def test_post_training_check_calibrates_warns_and_blends(tmp_path: Path, exports: tuple[Path, Path]) -> None:
    """The step after fine-tuning, on an untrained transformer: it is below the linear baseline, so the guard says
    so, and the blend leans on the linear companion; calibration and blend are written into the export."""
    from training.config import TrainingConfig
    from training.pipeline import _check_and_blend

    folder = tmp_path / "export"
    folder.mkdir()
    for item in exports[0].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    words = {"billing": "invoice refund charge", "shipping": "parcel courier delivery", "technical": "error crash bug"}
    rng = np.random.default_rng(3)
    labels = [LABELS[i % 3] for i in range(90)]
    texts = [" ".join(rng.choice(words[y].split(), size=3)) + " please help" for y in labels]
    cfg = TrainingConfig.model_validate(
        {"linear": {"min_df": 1, "n_jobs": 1}, "transformer": {"tiny": True, "val_fraction": 0.3}}
    )
    predictor = TransformerPredictor.load(folder)
    check = _check_and_blend(predictor, folder, texts, labels, list(range(90)), cfg)
    assert check.comparable
    assert check.metrics["val_accuracy_linear"] == 1.0
    assert check.metrics["val_accuracy_transformer"] < 0.7
    assert any("below a linear model trained on the same rows" in w for w in check.warnings)
    assert predictor.linear_weight >= 0.5
    reloaded = TransformerPredictor.load(folder)
    assert reloaded.linear_weight == predictor.linear_weight
    assert reloaded.temperature == pytest.approx(predictor.temperature)
    np.testing.assert_allclose(reloaded.predict_proba(texts[:5]), predictor.predict_proba(texts[:5]), atol=1e-6)
