"""The rules arm's model: ordered keyword and regular-expression rules per queue, the no-ML baseline.

`configs/rules.yaml` lists named rules; the first rule that matches an email's text routes it to its queue, with a
confidence equal to that rule's precision measured on labelled data (`measure_precision`), so the router's
confidence threshold treats a rule that is often wrong like an unsure model. No rule matching is triage, said in
words. A rules file is registered as a version of kind `rules` (rules.yaml plus precision.json) and served through
the same predictor interface as the models: `RulesPredictor.predict_proba` gives each email the fired rule's
precision for its queue and spreads the rest evenly; `explain` names the rule; `predict_with_notes` gives both in
one pass (what the arm replica calls).

The rules run on the sender's text, the regular expressions are ops': a pattern with nested quantifiers can take
exponential time on a crafted body. So patterns run on the `regex` module with a time budget per email (all rules
together, `MATCH_BUDGET_S`) over its first `MATCH_CHARS` characters; a rule that runs out of the budget does not fire,
and no later rule is tried (it might have been an earlier rule's email): the email is triage, and a warning names the
rule.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import regex
import yaml
from pydantic import Field, field_validator, model_validator
from regex import Pattern

from serving.config import ConfigError, StrictModel, parse_config
from serving.policy import NO_RULE

log = logging.getLogger(__name__)
RULES_FILE = "rules.yaml"
PRECISION_FILE = "precision.json"
# A rule never seen to fire on the labelled data gets this confidence: below any sensible threshold, so its
# emails go to triage until its precision is measured.
UNMEASURED_PRECISION = 0.0
NEVER_RIGHT = 1e-9  # the confidence of a rule measured never right: below any threshold, its queue still the top
MATCH_BUDGET_S = 0.1  # per email, all rules together
MATCH_CHARS = 20_000  # the rules read an email's text this far (a subject and any real opening fit)


class Rule(StrictModel):
    """One rule: the queue it routes to when any keyword (whole words, any case) or its regex matches.

    A keyword matches where no letter or digit touches its ends (so `c++` and `$5 fee` work); the regex follows the
    `regex` module's syntax (a superset of Python's `re`), case-insensitive."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Unique name, shown in each answer's reason.")
    queue: str = Field(description="The queue of the taxonomy this rule routes to.")
    keywords: tuple[str, ...] = Field((), description="Words or phrases; any one matching fires the rule.")
    regex: str | None = Field(None, description="A regular expression (Python `regex` syntax), case-insensitive.")

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
        try:  # the regex alone and joined with the keywords (a global flag is valid only at the very start)
            if self.regex is not None:
                regex.compile(self.regex)
            self.pattern()
        except regex.error as err:
            raise ValueError(f"rule '{self.name}': invalid regular expression ({err})") from None
        return self

    def pattern(self) -> Pattern[str]:
        parts = [r"(?<!\w)" + r"\s+".join(map(regex.escape, k.split())) + r"(?!\w)" for k in self.keywords]
        if self.regex:
            parts.append(f"(?:{self.regex})")
        return regex.compile("|".join(parts), regex.IGNORECASE)


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


def first_match(
    rules: RulesFile, texts: Sequence[str], patterns: Sequence[Pattern[str]] | None = None
) -> list[int | None]:
    """For each text, the index of the first rule that matches it, or None (also when the rules ran out of the
    email's time budget: module docstring). `patterns`: `rule.pattern()` of each rule, compiled once by the caller."""
    compiled = patterns if patterns is not None else [rule.pattern() for rule in rules.rules]
    out: list[int | None] = []
    for text in texts:
        head, found = text[:MATCH_CHARS], None
        deadline = time.monotonic() + MATCH_BUDGET_S
        for i, pattern in enumerate(compiled):
            try:
                if pattern.search(head, timeout=max(deadline - time.monotonic(), 1e-3), concurrent=True):
                    found = i
                    break
            except TimeoutError:
                log.warning("rule '%s' ran out of the %.0f ms an email may take: no rule answers it (triage)",
                            rules.rules[i].name, MATCH_BUDGET_S * 1000)  # fmt: skip
                break
        out.append(found)
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
        self._patterns = [rule.pattern() for rule in rules.rules]

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

    def predict_with_notes(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Probabilities and, per text, the rule that answers it (`rule:<name>`) or NO_RULE, in one pass.

        The fired rule's queue gets its precision and the other queues share the rest; a rule measured no better
        than chance (precision <= 1/len(queues)) leaves the others nothing, as no distribution would keep its own
        queue on top (precision 0: `NEVER_RIGHT`). No rule: every queue alike."""
        n = len(self._labels)
        out = np.full((len(texts), n), 1.0 / n)
        notes: list[str] = []
        for row, index in enumerate(first_match(self.rules, texts, self._patterns)):
            if index is None:
                notes.append(NO_RULE)
                continue
            rule = self.rules.rules[index]
            p = self._precision[rule.name]
            out[row, :] = (1.0 - p) / (n - 1) if n > 1 and p * n > 1 else 0.0
            out[row, self._column[rule.queue]] = max(p, NEVER_RIGHT)  # its queue on top, even at precision 0
            notes.append(f"rule:{rule.name}")
        return out, notes

    def explain(self, texts: Sequence[str]) -> list[str]:
        return self.predict_with_notes(texts)[1]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_with_notes(texts)[0]


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
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # scikit-learn's "no terms remain" / "max_df corresponds to < documents than min_df"
        raise ValueError(
            f"too little labelled data to suggest rules: no word appears in {min_count} emails ({len(texts)} given)"
        ) from None
    words = np.asarray(vectorizer.get_feature_names_out())
    y = np.asarray(labels)
    out: list[dict[str, Any]] = []
    for queue in sorted(set(labels)):
        inside, outside = counts[y == queue], counts[y != queue]
        share_in = (np.asarray(inside.sum(axis=0)).ravel() + 1) / (inside.shape[0] + 2)
        share_out = (np.asarray(outside.sum(axis=0)).ravel() + 1) / (outside.shape[0] + 2)
        # Common in the queue and rare outside it: the word's share of the queue's emails times the log ratio (its
        # term of the KL divergence), so a word that tells the queue apart in one email of a thousand ranks low.
        telling = share_in * np.log(share_in / share_out)
        best = np.argsort(-telling, kind="stable")[:per_queue]
        slug = regex.sub(r"[^a-z0-9_.-]+", "-", queue.lower()).strip("-._")[:50] or "queue"
        name = next(n for k in range(1, len(out) + 2) if (n := f"{slug}-words" + (f"-{k}" if k > 1 else "")) not in
                    {rule["name"] for rule in out})  # fmt: skip
        out.append({"name": name, "queue": queue, "keywords": [str(w) for w in words[best]]})
    return out
