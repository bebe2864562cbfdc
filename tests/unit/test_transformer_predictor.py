"""The serving-side transformer predictor: loads an export folder, returns probabilities in input order.

Most tests use a tiny random BERT exported in-process (no Ray); one loads the real MiniLM weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.models.transformer import TransformerArtifactError, TransformerPredictor, write_temperature
from serving.models.windows import WindowSpec
from training import torch_loop
from training.transformer_config import TransformerConfig

LABELS = ["billing", "shipping", "technical"]
TEXTS = [
    "refund my invoice please | I was charged twice for the same order and want the money back",
    "where is my parcel",
    "the app crashes | every time I log in the app shows error 500 and closes itself",
    "hello",
    "courier lost the delivery | tracking says delivered but nothing arrived, please check with the courier",
]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    torch.set_num_threads(1)
    cfg = TransformerConfig(tiny=True, max_length=32)
    tokenizer = torch_loop.load_tokenizer(cfg)
    model = torch_loop.build_model(cfg, LABELS, len(tokenizer))
    model.eval()
    out = torch_loop.export_model(model, tokenizer, LABELS, cfg, tmp_path_factory.mktemp("export") / "model")
    return out, model, tokenizer


def test_round_trip_matches_the_in_memory_model(tiny_export: tuple) -> None:
    export, model, tokenizer = tiny_export
    predictor = TransformerPredictor.load(export, max_batch=2)
    assert predictor.labels == LABELS
    assert predictor.max_length == 32
    with torch.inference_mode():
        batch = torch_loop.encode(tokenizer, TEXTS, WindowSpec(max_length=32))
        expected = torch.softmax(model(**batch).logits, dim=-1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), expected, atol=1e-5)


def test_rows_sum_to_one_and_keep_input_order(tiny_export: tuple) -> None:
    export, _, _ = tiny_export
    one_batch = TransformerPredictor.load(export, max_batch=32).predict_proba(TEXTS)
    micro = TransformerPredictor.load(export, max_batch=2).predict_proba(TEXTS)
    assert one_batch.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(one_batch.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(micro, one_batch, atol=1e-5)
    reversed_rows = TransformerPredictor.load(export).predict_proba(TEXTS[::-1])
    np.testing.assert_allclose(reversed_rows, one_batch[::-1], atol=1e-5)


def test_empty_input_and_single_string(tiny_export: tuple) -> None:
    predictor = TransformerPredictor.load(tiny_export[0])
    assert predictor.predict_proba([]).shape == (0, len(LABELS))
    with pytest.raises(ValueError, match="sequence of texts"):
        predictor.predict_proba("one string")
    with pytest.raises(ValueError, match="must be a string"):
        predictor.predict_proba(["fine", None])  # type: ignore[list-item]


def test_quantized_model_stays_close(tiny_export: tuple) -> None:
    export, _, _ = tiny_export
    plain = TransformerPredictor.load(export).predict_proba(TEXTS)
    quantized = TransformerPredictor.load(export, quantize=True)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.model.modules())
    probs = quantized.predict_proba(TEXTS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probs - plain).max() < 0.05


def test_a_calibration_file_scales_the_logits(tmp_path: Path, tiny_export: tuple) -> None:
    calibrated = tmp_path / "calibrated"
    calibrated.mkdir()
    for item in tiny_export[0].iterdir():
        (calibrated / item.name).write_bytes(item.read_bytes())
    write_temperature(calibrated, 0.25)
    predictor = TransformerPredictor.load(calibrated)
    assert predictor.temperature == 0.25
    logits = predictor.logits(TEXTS) / 0.25
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        predictor.predict_proba(TEXTS), expected / expected.sum(axis=1, keepdims=True), atol=1e-6
    )
    plain = TransformerPredictor.load(tiny_export[0]).predict_proba(TEXTS)
    assert predictor.predict_proba(TEXTS).max(axis=1).mean() > plain.max(axis=1).mean()  # T < 1 sharpens
    for bad in ('{"temperature": 0}', '{"t": 1}', "not json"):
        (calibrated / "calibration.json").write_text(bad)
        with pytest.raises(TransformerArtifactError, match=r"calibration\.json"):
            TransformerPredictor.load(calibrated)


def test_bad_export_folders_raise_one_line(tmp_path: Path, tiny_export: tuple) -> None:
    with pytest.raises(TransformerArtifactError, match="not a transformer export") as err:
        TransformerPredictor.load(tmp_path / "missing")
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.json").write_text(json.dumps(LABELS))
    with pytest.raises(TransformerArtifactError, match="cannot load the model") as err:
        TransformerPredictor.load(broken)
    assert "\n" not in str(err.value)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for item in tiny_export[0].iterdir():
        (wrong / item.name).write_bytes(item.read_bytes())
    (wrong / "labels.json").write_text(json.dumps([*LABELS, "extra"]))
    with pytest.raises(TransformerArtifactError, match="3 outputs but 4 labels"):
        TransformerPredictor.load(wrong)


def test_serving_module_imports_neither_ray_nor_training() -> None:
    code = (
        "import sys, serving.models.transformer; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'training')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.slow
def test_real_minilm_weights_give_sane_probabilities(tmp_path: Path) -> None:
    """The pretrained MiniLM (fresh 3-way head) exports, loads, and predicts, plain and quantised."""
    torch.set_num_threads(1)
    cfg = TransformerConfig()
    tokenizer = torch_loop.load_tokenizer(cfg)
    model = torch_loop.build_model(cfg, LABELS, len(tokenizer))
    export = torch_loop.export_model(model, tokenizer, LABELS, cfg, tmp_path / "minilm")
    plain = TransformerPredictor.load(export).predict_proba(TEXTS)
    quantized = TransformerPredictor.load(export, quantize=True).predict_proba(TEXTS)
    for probs in (plain, quantized):
        assert probs.shape == (len(TEXTS), len(LABELS))
        assert np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(plain - quantized).max() < 0.1
