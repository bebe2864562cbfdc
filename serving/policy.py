"""The decision policy: from a model's probabilities (or its failure) to the queue an email goes to.

Pure functions, no Ray: the router calls them, unit tests pin them. An email is never dropped: when no arm can
answer it goes to the triage queue with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.config import PolicyConfig

CONFIDENT = "confident"
LOW_CONFIDENCE = "low_confidence"
ALL_ARMS_FAILED = "all_arms_failed"
NO_RULE = "no_rule"  # a rules arm where no rule matched: triage, whatever the threshold


@dataclass(frozen=True)
class Decision:
    queue: str
    confidence: float
    secondary_queue: str | None
    reason: str


def decide(labels: Sequence[str], proba: np.ndarray, policy: PolicyConfig, triage_queue: str) -> Decision:
    """Top queue if the model is sure enough (its queue's threshold, else the global one), else triage; a
    runner-up within the margin is the second queue.

    When the email goes to triage, `secondary_queue` carries the model's best guess so the triage agent starts
    from a suggestion.
    """
    order = np.argsort(proba)[::-1]
    top = int(order[0])
    confidence = float(proba[top])
    runner_up = int(order[1]) if len(order) > 1 else None
    close = runner_up is not None and confidence - float(proba[runner_up]) <= policy.secondary_margin
    if confidence < policy.threshold(labels[top]):
        return Decision(triage_queue, confidence, labels[top], LOW_CONFIDENCE)
    secondary = labels[runner_up] if close and runner_up is not None else None
    return Decision(labels[top], confidence, secondary, CONFIDENT)


def with_answerer(decision: Decision, note: str | None, triage_queue: str) -> Decision:
    """The decision with what answered inside the arm (`rule:refund`, `cascade:linear`) in its reason: the note alone
    when confident, after the decision's reason otherwise (`low_confidence:rule:refund`, still flagged as low
    confidence). A rules arm's "no rule matched" is triage."""
    if note is None:
        return decision
    if note == NO_RULE:
        return Decision(triage_queue, decision.confidence, None, NO_RULE)
    reason = note if decision.reason == CONFIDENT else f"{decision.reason}:{note}"
    return Decision(decision.queue, decision.confidence, decision.secondary_queue, reason)


def fallback_chain(primary: str, arms: Sequence[str], fallback_order: Sequence[str] | None) -> list[str]:
    """The arms to try, in order: the assigned one first, then the configured fallbacks (else the others by name)."""
    order = list(fallback_order) if fallback_order else sorted(arms)
    return [primary, *[arm for arm in order if arm != primary and arm in arms]]


def failed_reason(failures: Sequence[tuple[str, str]], served_by: str | None) -> str:
    """`arm_failed:<arm>:<why>` for the first failure, so the log tells which arm failed and why."""
    if not failures:
        return ""
    arm, why = failures[0]
    prefix = f"fallback_to_{served_by}" if served_by else ALL_ARMS_FAILED
    return f"{prefix}:{arm}_{why}"


def triage_decision(triage_queue: str) -> Decision:
    return Decision(triage_queue, 0.0, None, ALL_ARMS_FAILED)
