"""`mailroute train transformer` end to end (tiny model, 2 Ray Train workers) and `evaluate` on its version."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import main
from serving.models.registry import ModelRegistry
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
    config.write_text(shipped.replace("  max_length: 256", "  tiny: true\n  max_length: 32"))
    home = str(tmp_path / "home")
    # The installed script in its own process, as users run it: what Ray's processes print reaches its stderr.
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mailroute")), "--home", home, "train", "transformer", "--data", str(data),
         "--label-col", "queue", "--config", str(config), "--epochs", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    version = proc.stdout.strip().splitlines()[-1]
    assert version == "transformer:v1"
    # mailroute's own progress, and nothing of Ray's internals (they stay in Ray's log files without -v).
    assert "epoch 1/1: train loss" in proc.stderr and "val macro-F1" in proc.stderr, proc.stderr
    for noise in ("PlacementGroupCleaner", "core_worker", "TrainController", "RayTrainWorker", "pid=", "Traceback"):
        assert noise not in proc.stdout + proc.stderr
    ours = re.compile(r"(epoch \d+/\d+: |warning: |\S+ \S+ WARNING (training|serving)\.)")  # the tiny model warns
    assert all(ours.match(line) for line in proc.stderr.splitlines() if line.strip()), proc.stderr
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


def _keyword_corpus(path: Path, shuffle: bool) -> None:
    """Emails whose queue a keyword gives away (60/20/20): any working model learns them; with the labels
    shuffled there is nothing to learn."""
    words = {
        "billing": "invoice charge refund payment billed",
        "technical": "error crash bug login timeout",
        "shipping": "parcel delivery tracking courier package",
    }
    rng = random.Random(7)
    labels = ["billing"] * 180 + ["technical"] * 60 + ["shipping"] * 60
    rows = []
    for i, label in enumerate(labels):
        body = " ".join(rng.choices(words[label].split(), k=3) + rng.choices(["my", "the", "please", "today"], k=3))
        rows.append({"subject": "", "body": body, "queue": label, "email_id": f"k{i}"})
    if shuffle:
        shuffled = [row["queue"] for row in rows]
        rng.shuffle(shuffled)
        rows = [{**row, "queue": label} for row, label in zip(rows, shuffled, strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("broken", [False, True], ids=["good-run", "shuffled-labels"])
def test_training_guard_warns_on_a_broken_run_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_cluster: None, broken: bool
) -> None:
    data = tmp_path / "train.jsonl"
    _keyword_corpus(data, shuffle=broken)
    config = tmp_path / "training.yaml"
    config.write_text(
        # The real MiniLM: a tiny random BERT gets stuck on one class for some seeds even on this easy task.
        "transformer:\n  max_length: 32\n  max_windows: 1\n  learning_rate: 3.0e-4\n"
        "  batch_size: 16\n  val_fraction: 0.3\n  early_stopping_patience: 4\n"
        "linear:\n  min_df: 1\n  n_jobs: 1\n"
    )
    home = str(tmp_path / "home")
    code = main(["--home", home, "train", "transformer", "--data", str(data), "--label-col", "queue",
                 "--config", str(config), "--epochs", "2", "--workers", "2", "--holdout", "0.1"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    version = captured.out.strip().splitlines()[-1]
    code = main(["--home", home, "models", "show", version])
    shown = capsys.readouterr().out
    meta = ModelRegistry(Path(home) / "registry").get(version).meta
    if broken:
        assert any("always answering 'billing'" in w for w in meta.warnings), meta.metrics
        assert "warning: the transformer's validation accuracy" in captured.err
        assert "WARNING: the transformer's validation accuracy" in shown
    else:
        assert meta.warnings == (), meta.warnings
        assert meta.metrics["val_accuracy_transformer"] >= meta.metrics["val_accuracy_linear"] > 0.9
        assert "WARNING" not in shown and "warning" not in captured.err
