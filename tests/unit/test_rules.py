"""The rules arm's model (serving/models/rules.py): a rules file is checked against the taxonomy with the rule's
name and the reason, the first matching rule answers with its measured precision, no rule is triage, and a rules
file registers and loads like any model version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serving.config import ConfigError
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.predictor import load_version
from serving.models.registry import ModelRegistry
from serving.models.rules import (
    RulesPredictor,
    load_rules,
    measure_precision,
    parse_rules,
    suggest_rules,
    write_rules_version,
)
from serving.policy import NO_RULE

pytestmark = pytest.mark.unit
QUEUES = ["billing", "technical", "shipping"]
RULES = {
    "rules": [
        {"name": "refund", "queue": "billing", "keywords": ["refund", "charged twice"]},
        {"name": "error-code", "queue": "technical", "regex": r"error\s+[0-9]{3}"},
        {"name": "parcel", "queue": "shipping", "keywords": ["parcel", "delivery"]},
    ]
}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"regex": "error ("}, "rule 'error-code': invalid regular expression"),
        ({"queue": "marketing"}, "rule 'error-code': queue 'marketing' is not in the taxonomy"),
        ({"name": "refund"}, "rule 'refund' is named twice"),
        ({"regex": None}, "rule 'error-code': give keywords or a regex"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_rule_and_the_reason(change: dict[str, Any], says: str) -> None:
    data = {"rules": [dict(r) for r in RULES["rules"]]}
    data["rules"][1] = {k: v for k, v in {**data["rules"][1], **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")) as refused:
        parse_rules(data, QUEUES)
    assert "\n" not in str(refused.value)


def test_the_first_matching_rule_answers_with_its_precision_and_no_rule_is_triage() -> None:
    rules = parse_rules(RULES, QUEUES)
    texts = ["I was CHARGED   twice for my plan", "the app shows error 503 after my refund", "hello there"]
    predictor = RulesPredictor(rules, {"refund": 0.9, "error-code": 0.6}, QUEUES)
    proba = predictor.predict_proba(texts)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert proba[0, 0] == pytest.approx(0.9) and proba[0, 1] == pytest.approx(0.05)
    assert proba[1, 0] == pytest.approx(0.9)  # "refund" comes first in the file: order decides
    assert np.allclose(proba[2], 1 / 3)  # nothing matched: no queue stands out, the router's threshold triages it
    assert predictor.explain(texts) == ["rule:refund", "rule:refund", NO_RULE]
    assert predictor.explain(["parcel lost"]) == ["rule:parcel"]
    assert RulesPredictor(rules, {}, QUEUES).predict_proba(["parcel lost"])[0, 2] < 1e-6  # never measured: triage


def test_precision_counts_only_the_emails_a_rule_answered() -> None:
    rules = parse_rules(RULES, QUEUES)
    texts = ["refund please", "refund for a parcel", "error 500 on login", "error 404 on the invoice page"]
    scores = measure_precision(rules, texts, ["billing", "shipping", "technical", "billing"])
    assert (scores["refund"].fired, scores["refund"].correct) == (2, 1)
    assert scores["error-code"].precision == 0.5 and scores["parcel"].fired == 0  # "refund" took the parcel email


def test_a_rules_version_registers_and_loads_like_a_model(tmp_path: Path) -> None:
    rules = parse_rules(RULES, QUEUES)
    scores = measure_precision(rules, ["refund now"], ["billing"])
    registry = ModelRegistry(tmp_path / "registry")
    registry.register("rules", lambda folder: write_rules_version(folder, rules, scores), kind="rules",
                      labels=QUEUES, preprocessing_version=PREPROCESSING_VERSION, data_fingerprint="x",
                      metrics={}, params={})  # fmt: skip
    predictor, meta = load_version(registry, "rules:latest")
    assert meta.kind == "rules" and predictor.labels == QUEUES
    assert predictor.predict_proba(["a refund"])[0, 0] == pytest.approx(1.0)


def test_a_rules_file_on_disk_is_read_in_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES))
    assert [r.name for r in load_rules(path, QUEUES).rules] == ["refund", "error-code", "parcel"]
    path.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="cannot read the rules"):
        load_rules(path, QUEUES)
    with pytest.raises(ConfigError, match="not found"):
        load_rules(tmp_path / "missing.yaml", QUEUES)


def test_suggested_rules_pick_each_queues_telling_words() -> None:
    texts = ["refund my invoice"] * 8 + ["my parcel delivery is late"] * 8 + ["login error again"] * 8
    labels = ["billing"] * 8 + ["shipping"] * 8 + ["technical"] * 8
    suggested = {r["queue"]: r["keywords"] for r in suggest_rules(texts, labels, per_queue=2)}
    assert set(suggested["billing"]) == {"refund", "invoice"} and set(suggested["shipping"]) <= {
        "parcel",
        "delivery",
        "late",
    }
    parse_rules({"rules": suggest_rules(texts, labels)}, QUEUES)  # a valid rules file as it stands


def test_a_catastrophic_regex_on_a_hostile_body_answers_in_bounded_time(caplog: pytest.LogCaptureFixture) -> None:
    """Found in review: an ops regex with nested quantifiers ran on the sender's body with no bound, twice per email
    (probabilities, then the note), blocking the replica. One pass now, each email within a time budget: a rule that
    runs out of it does not fire (the email is triage)."""
    import time

    nested = {"name": "nested", "queue": "billing", "regex": r"(a|aa)+$"}
    rules = parse_rules({"rules": [nested, {"name": "later", "queue": "shipping", "keywords": ["parcel"]}]}, QUEUES)
    predictor = RulesPredictor(rules, {"nested": 0.9, "later": 0.9}, QUEUES)
    started = time.perf_counter()
    with caplog.at_level("WARNING", logger="serving.models.rules"):
        proba, notes = predictor.predict_with_notes(["a" * 60 + "! parcel", ("a" * 60 + "!") * 5000])
    assert time.perf_counter() - started < 10  # unbounded, each takes longer than the universe is old
    assert notes == [NO_RULE, NO_RULE] and proba.shape == (2, 3)  # no later rule answers after a timeout
    assert sum("rule 'nested' ran out of the 100 ms" in r.getMessage() for r in caplog.records) == 2
    assert predictor.predict_with_notes(["aaaa", "a parcel"])[1] == ["rule:nested", "rule:later"]


def test_a_global_flag_inside_a_regex_is_checked_with_the_rule_it_joins() -> None:
    """Found in review: '(?i)' after the start passed the check alone, then failed when joined with the keywords,
    at load in the replica."""
    data = {"rules": [{"name": "flagged", "queue": "billing", "keywords": ["refund"], "regex": "(?i)invoice"}]}
    rules = parse_rules(data, QUEUES)  # the regex module takes a global flag anywhere (Python's re does not)
    assert RulesPredictor(rules, {"flagged": 0.9}, QUEUES).explain(["a refund", "INVOICE"]) == ["rule:flagged"] * 2
    data["rules"][0]["regex"] = "invoice(?-i:X"  # an unclosed group: refused, naming the rule
    with pytest.raises(ConfigError, match="rule 'flagged': invalid regular expression"):
        parse_rules(data, QUEUES)


def test_keywords_that_start_or_end_with_a_symbol_match() -> None:
    """Found in review: '\\b' around 'c++' or '$5' needs a word character there, so such keywords never fired."""
    data = {"rules": [{"name": "cpp", "queue": "technical", "keywords": ["c++", "$5 fee"]}]}
    predictor = RulesPredictor(parse_rules(data, QUEUES), {"cpp": 0.9}, QUEUES)
    assert predictor.explain(["my C++ build fails", "a $5  fee appeared", "abc++x", "xc++", "the c+ grade"]) == [
        "rule:cpp", "rule:cpp", NO_RULE, NO_RULE, NO_RULE
    ]  # fmt: skip


def test_a_rule_worse_than_chance_still_names_its_own_queue() -> None:
    """Found in review: a rule measured below 1/len(queues) gave the other queues more than its own, so at a low
    threshold the email went to a queue no rule chose, its reason naming the rule."""
    predictor = RulesPredictor(parse_rules(RULES, QUEUES), {"refund": 0.1, "parcel": 0.0}, QUEUES)
    row = predictor.predict_proba(["a refund please"])[0]
    assert QUEUES[int(row.argmax())] == "billing" and row.max() == pytest.approx(0.1)
    row = predictor.predict_proba(["my parcel"])[0]  # measured never right: still its own queue, below any threshold
    assert QUEUES[int(row.argmax())] == "shipping" and row.max() < 1e-6


def test_offline_scoring_sends_unmatched_mail_to_triage_at_any_threshold(tmp_path: Path) -> None:
    """Found in review: served, no rule is triage whatever the threshold; scored offline, an unmatched email's even
    row was auto-routed when the threshold sat below 1/len(queues), flattering the rules' coverage."""
    from serving.config import load_queues
    from training.pipeline import DataSpec
    from training.rules import evaluate_rules
    from training.synth import generate, write_corpus

    corpus = tmp_path / "mail.jsonl"
    write_corpus(generate(600, seed=5), corpus)
    queues = load_queues(Path(__file__).resolve().parents[2] / "configs" / "queues.yaml")
    shipped = Path(__file__).resolve().parents[2] / "configs" / "rules.yaml"
    outcome = evaluate_rules(shipped, DataSpec(corpus, label_col="queue"), queues, threshold=0.01)
    assert 0 < outcome.matched < 1
    assert outcome.result.coverage == pytest.approx(outcome.matched, abs=1e-6)
