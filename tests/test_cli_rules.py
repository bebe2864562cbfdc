"""The rules arm's commands: suggest a rules file from labelled mail, score one offline, register it as a version
of kind `rules` (with a reference sample, so drift monitoring covers it), and every bad rules file as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_support import one_line_error, run_cli

from monitoring.reference import load_reference
from serving.config import Home
from serving.models.predictor import load_version
from serving.models.registry import ModelRegistry
from training.synth import generate, write_corpus

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "rules.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules-corpus") / "mail.jsonl"
    write_corpus(generate(2000, seed=31), path)
    return path


def test_the_shipped_rules_score_register_and_load(
    capsys: pytest.CaptureFixture[str], corpus: Path, tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "evaluate", "--rules", str(SHIPPED), "--data", str(corpus), "--label-col", "queue",
                           "--json")  # fmt: skip
    assert code == 0
    scored = json.loads(out)
    assert 0.5 < scored["matched_share"] < 1.0 and scored["matched_accuracy"] > 0.7  # a real baseline, not perfect
    assert scored["rules"]["charge"]["fired"] > 0 and 0 < scored["rules"]["charge"]["precision"] <= 1
    home = tmp_path / "home"
    code, out, _ = run_cli(capsys, "--home", str(home), "train", "rules", "--rules", str(SHIPPED), "--data",
                           str(corpus), "--label-col", "queue")  # fmt: skip
    assert code == 0 and out.strip().splitlines()[-1] == "rules:v1"
    predictor, meta = load_version(ModelRegistry(Home(home).registry), "rules:v1")
    assert meta.kind == "rules" and "matched_accuracy" in meta.metrics
    assert predictor.explain(["I was charged twice on my card"]) == ["rule:charge"]  # type: ignore[attr-defined]
    info = ModelRegistry(Home(home).registry).get("rules:v1")
    reference = load_reference(info.path, "rules:v1")
    assert reference is not None  # drift monitoring has its reference sample
    # ...with the confidences this version serves (found in test: they were the calibration half's, so every
    # served confidence differed from every reference one)
    served = {
        round(float(p), 9) for p in predictor.predict_proba(reference.frame["body"].fillna("").tolist()).max(axis=1)
    }
    precisions = {
        round(float(s["precision"]), 9) for s in json.loads((info.path / "precision.json").read_text()).values()
    }
    assert {round(float(c), 9) for c in reference.frame["confidence"]} <= precisions | served


def test_suggested_rules_are_a_valid_rules_file(
    capsys: pytest.CaptureFixture[str], corpus: Path, tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "data", "suggest-rules", "--data", str(corpus), "--label-col", "queue")
    assert code == 0
    suggested = tmp_path / "rules.yaml"
    suggested.write_text(out)
    assert {r["queue"] for r in yaml.safe_load(out)["rules"]} >= {"billing", "shipping", "technical"}
    code, _, _ = run_cli(capsys, "evaluate", "--rules", str(suggested), "--data", str(corpus), "--label-col", "queue")
    assert code == 0


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"name": "broken", "queue": "billing", "regex": "invoice ("}, "rule 'broken': invalid regular expression"),
        ({"name": "promo", "queue": "marketing", "keywords": ["promo"]}, "rule 'promo': queue 'marketing' is not in"),
        ({"name": "charge", "queue": "billing", "keywords": ["bill"]}, "rule 'charge' is named twice"),
    ],
)
def test_a_bad_rules_file_is_one_line_and_registers_nothing(
    capsys: pytest.CaptureFixture[str], corpus: Path, tmp_path: Path, rule: dict[str, object], says: str
) -> None:
    rules = yaml.safe_load(SHIPPED.read_text())
    rules["rules"].append(rule)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    home = tmp_path / "home"
    code, _, err = run_cli(capsys, "--home", str(home), "train", "rules", "--rules", str(path), "--data", str(corpus),
                           "--label-col", "queue")  # fmt: skip
    assert code != 0 and says in one_line_error(err)
    assert not (home / "registry" / "rules").exists()


def test_evaluate_needs_exactly_one_of_model_and_rules(capsys: pytest.CaptureFixture[str], corpus: Path) -> None:
    code, _, err = run_cli(capsys, "evaluate", "--data", str(corpus))
    assert code == 2 and "--model or --rules" in err
    code, _, err = run_cli(capsys, "evaluate", "--data", str(corpus), "--model", "linear", "--rules", str(SHIPPED))
    assert code == 2 and "--model or --rules" in err


def test_suggesting_from_too_little_data_is_one_clear_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Found in review: a handful of emails gave scikit-learn's own words about pruning."""
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("text,label\nmy invoice is wrong,billing\nthe app crashes,technical\n")
    code, _, err = run_cli(capsys, "data", "suggest-rules", "--data", str(tiny))
    assert code != 0 and "too little labelled data to suggest rules" in one_line_error(err)


def test_suggested_rule_names_are_valid_whatever_the_labels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Found in review: a label such as 'Billing Dept' became a rule name the rules file refuses."""
    rows = ["text,label"] + [f"refund invoice charge number {i},Billing Dept" for i in range(10)]
    rows += [f"crash error login number {i},Tech/Support" for i in range(10)]
    data = tmp_path / "mail.csv"
    data.write_text("\n".join(rows) + "\n")
    code, out, _ = run_cli(capsys, "data", "suggest-rules", "--data", str(data))
    assert code == 0
    from serving.models.rules import parse_rules

    parse_rules(yaml.safe_load(out), ["Billing Dept", "Tech/Support"])  # names valid; queues kept as given


def test_a_rules_version_is_not_retrained_and_says_what_to_do_instead(
    capsys: pytest.CaptureFixture[str], corpus: Path, tmp_path: Path
) -> None:
    """Found in review: `mailroute retrain --model rules` went down the transformer's path."""
    from serving.store.eventlog import open_event_log

    home = tmp_path / "home"
    code, _, _ = run_cli(capsys, "--home", str(home), "train", "rules", "--rules", str(SHIPPED), "--data", str(corpus),
                         "--label-col", "queue")  # fmt: skip
    assert code == 0
    open_event_log(f"sqlite:///{home / 'events.db'}").close()  # something was routed: the log exists
    code, _, err = run_cli(capsys, "--home", str(home), "retrain", "--model", "rules")
    line = one_line_error(err)
    assert code != 0 and "rules:v1 is a rules version, not retrained from feedback" in line
    assert "mailroute train rules" in line
