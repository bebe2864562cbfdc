"""`mailroute train transformer` end to end (tiny model, 2 Ray Train workers) and `evaluate` on its version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli import main
from training.synth import generate, write_corpus

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_train_transformer_registers_a_version_evaluate_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_cluster: None
) -> None:
    data = tmp_path / "train.jsonl"
    write_corpus(generate(400, seed=41), data)
    config = tmp_path / "training.yaml"
    shipped = (REPO / "configs" / "training.yaml").read_text()
    config.write_text(shipped.replace("  max_length: 64", "  tiny: true\n  max_length: 32"))
    home = str(tmp_path / "home")
    code = main(["--home", home, "train", "transformer", "--data", str(data), "--label-col", "queue",
                 "--config", str(config), "--epochs", "1", "--workers", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    version = out.strip().splitlines()[-1]
    assert version == "transformer:v1"
    code = main(["--home", home, "evaluate", "--model", version, "--data", str(data), "--label-col", "queue", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["n"] == 400 and result["model"] == version
    assert len(result["labels"]) == 7
    code = main(["--home", home, "models", "show", version, "--json"])
    meta = json.loads(capsys.readouterr().out)
    assert meta["kind"] == "transformer" and "model.safetensors" in meta["files"]


def test_missing_base_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    write_corpus(generate(60, seed=42), data)
    config = tmp_path / "training.yaml"
    config.write_text("transformer:\n  base_model_path: /nonexistent/model\n")
    code = main(["--home", str(tmp_path), "train", "transformer", "--data", str(data), "--label-col", "queue",
                 "--config", str(config)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "/nonexistent/model" in err
