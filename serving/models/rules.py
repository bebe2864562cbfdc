"""The rules arm's model: ordered keyword and regular-expression rules per queue, the no-ML baseline.

`configs/rules.yaml` lists named rules; the first rule that matches an email's text routes it to its queue, with a
confidence equal to that rule's precision measured on labelled data (`measure_precision`), so the router's
confidence threshold treats a rule that is often wrong like an unsure model. No rule matching is triage, said in
words. A rules file is registered as a version of kind `rules` (rules.yaml plus precision.json) and served through
the same predictor interface as the models: `RulesPredictor.predict_proba` gives each email the fired rule's
precision for its queue and spreads the rest evenly; `explain` names the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from serving.config import ConfigError, StrictModel, parse_config
from serving.policy import NO_RULE

RULES_FILE = "rules.yaml"
PRECISION_FILE = "precision.json"
# A rule never seen to fire on the labelled data gets this confidence: below any sensible threshold, so its
# emails go to triage until its precision is measured.
UNMEASURED_PRECISION = 0.0


class Rule(StrictModel):
    """One rule: the queue it routes to when any keyword (whole words, any case) or its regex matches."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Unique name, shown in each answer's reason.")
    queue: str = Field(description="The queue of the taxonomy this rule routes to.")
    keywords: tuple[str, ...] = Field((), description="Words or phrases; any one matching fires the rule.")
    regex: str | None = Field(None, description="A Python regular expression, matched case-insensitively.")

    @field_validator("keywords")
    @classmethod
    def _no_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() for k in value):
            raise ValueError("a keyword is blank")
        return value

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if not self.keywords and not self.regex:
            raise ValueError(f"rule '{self.name}': give keywords or a regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"rule '{self.name}': invalid regular expression ({err})") from None
        return self

    def pattern(self) -> re.Pattern[str]:
        parts = [r"\b" + r"\s+".join(map(re.escape, k.split())) + r"\b" for k in self.keywords]
        if self.regex:
            parts.append(f"(?:{self.regex})")
        return re.compile("|".join(parts), re.IGNORECASE)


class RulesFile(StrictModel):
    """`configs/rules.yaml`: the rules, in the order they are tried."""

    rules: tuple[Rule, ...] = Field(min_length=1, description="Tried in order; the first that matches answers.")

    @model_validator(mode="after")
    def _unique(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule '{rule.name}' is named twice")
            seen.add(rule.name)
        return self


def parse_rules(data: Any, queue_names: Sequence[str], source: str = RULES_FILE) -> RulesFile:
    """A rules document checked against the taxonomy; a ConfigError naming the rule and the reason otherwise."""
    rules = parse_config(data, RulesFile, source)
    for rule in rules.rules:
        if rule.queue not in queue_names:
            raise ConfigError(
                f"{source}: rule '{rule.name}': queue '{rule.queue}' is not in the taxonomy ({', '.join(queue_names)})"
            )
    return rules


def load_rules(path: Path, queue_names: Sequence[str]) -> RulesFile:
    """`parse_rules` of a YAML file; every failure one line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: rules file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the rules ({' '.join(str(err).split())[:200]})") from None
    return parse_rules(data, queue_names, str(path))


@dataclass(frozen=True)
class RuleScore:
    """What one rule did on labelled data: how often it answered first, and how often rightly."""

    fired: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.fired if self.fired else UNMEASURED_PRECISION


def first_match(rules: RulesFile, texts: Sequence[str]) -> list[int | None]:
    """For each text, the index of the first rule that matches it, or None."""
    patterns = [rule.pattern() for rule in rules.rules]
    out: list[int | None] = []
    for text in texts:
        out.append(next((i for i, p in enumerate(patterns) if p.search(text)), None))
    return out


def measure_precision(rules: RulesFile, texts: Sequence[str], labels: Sequence[str]) -> dict[str, RuleScore]:
    """Each rule's score on labelled texts, counting only the emails it answered (the first rule to match)."""
    fired = dict.fromkeys((r.name for r in rules.rules), 0)
    correct = dict.fromkeys(fired, 0)
    for index, label in zip(first_match(rules, texts), labels, strict=True):
        if index is not None:
            rule = rules.rules[index]
            fired[rule.name] += 1
            correct[rule.name] += rule.queue == label
    return {name: RuleScore(fired[name], correct[name]) for name in fired}


class RulesPredictor:
    """A registered rules version as a predictor: the fired rule's queue gets its precision, the rest share what is
    left; no rule: every queue alike (confidence 1/len(labels), below any threshold: triage)."""

    def __init__(self, rules: RulesFile, precision: Mapping[str, float], labels: Sequence[str]) -> None:
        self.rules = rules
        self._labels = list(labels)
        self._precision = {r.name: float(precision.get(r.name, UNMEASURED_PRECISION)) for r in rules.rules}
        self._column = {q: i for i, q in enumerate(self._labels)}

    @property
    def labels(self) -> list[str]:
        return self._labels

    @classmethod
    def load(cls, path: Path) -> RulesPredictor:
        """A registered version's folder (its labels, the taxonomy it was checked against, from its meta.json)."""
        labels = json.loads((path / "meta.json").read_text(encoding="utf-8"))["labels"]
        rules = parse_rules(yaml.safe_load((path / RULES_FILE).read_text(encoding="utf-8")), labels, RULES_FILE)
        precision = json.loads((path / PRECISION_FILE).read_text(encoding="utf-8"))
        return cls(rules, {name: score["precision"] for name, score in precision.items()}, labels)

    def explain(self, texts: Sequence[str]) -> list[str]:
        """Per text, the rule that answers it (`rule:<name>`), or NO_RULE."""
        return [NO_RULE if i is None else f"rule:{self.rules.rules[i].name}" for i in first_match(self.rules, texts)]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        n = len(self._labels)
        out = np.full((len(texts), n), 1.0 / n)
        for row, index in enumerate(first_match(self.rules, texts)):
            if index is None:
                continue
            rule = self.rules.rules[index]
            p = self._precision[rule.name]
            out[row, :] = (1.0 - p) / (n - 1) if n > 1 else 0.0
            out[row, self._column[rule.queue]] = p
        return out


def write_rules_version(folder: Path, rules: RulesFile, scores: Mapping[str, RuleScore]) -> None:
    """The files of a registered rules version: the rules as given, and each rule's measured score."""
    (folder / RULES_FILE).write_text(
        yaml.safe_dump(rules.model_dump(mode="json", exclude_defaults=True), sort_keys=False), encoding="utf-8"
    )
    doc = {name: {"fired": s.fired, "correct": s.correct, "precision": s.precision} for name, s in scores.items()}
    (folder / PRECISION_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")


def suggest_rules(
    texts: Sequence[str], labels: Sequence[str], *, per_queue: int = 5, min_count: int = 5
) -> list[dict[str, Any]]:
    """A starting point for a rules file: per queue, the words most telling of it (frequent in its emails, rare in
    the others': smoothed document frequencies), as one keyword rule per queue."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(lowercase=True, binary=True, token_pattern=r"(?u)\b[a-z][a-z]{2,}\b",
                                 stop_words="english", min_df=min_count)  # fmt: skip
    counts = vectorizer.fit_transform(texts)
    words = np.asarray(vectorizer.get_feature_names_out())
    y = np.asarray(labels)
    out = []
    for queue in sorted(set(labels)):
        inside, outside = counts[y == queue], counts[y != queue]
        share_in = (np.asarray(inside.sum(axis=0)).ravel() + 1) / (inside.shape[0] + 2)
        share_out = (np.asarray(outside.sum(axis=0)).ravel() + 1) / (outside.shape[0] + 2)
        # Common in the queue and rare outside it: the word's share of the queue's emails times the log ratio (its
        # term of the KL divergence), so a word that tells the queue apart in one email of a thousand ranks low.
        telling = share_in * np.log(share_in / share_out)
        best = np.argsort(-telling, kind="stable")[:per_queue]
        out.append({"name": f"{queue}-words", "queue": queue, "keywords": [str(w) for w in words[best]]})
    return out
