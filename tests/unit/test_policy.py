"""Decision policy: threshold, second queue, fallback order."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import PolicyConfig
from serving.policy import CONFIDENT, LOW_CONFIDENCE, decide, failed_reason, fallback_chain

pytestmark = pytest.mark.unit
LABELS = ["billing", "shipping", "technical"]
POLICY = PolicyConfig(confidence_threshold=0.6, secondary_margin=0.2)


def test_confident_single_queue() -> None:
    d = decide(LABELS, np.array([0.9, 0.05, 0.05]), POLICY, "triage")
    assert (d.queue, d.secondary_queue, d.reason) == ("billing", None, CONFIDENT)
    assert d.confidence == pytest.approx(0.9)


def test_mixed_topic_gets_a_second_queue() -> None:
    d = decide(LABELS, np.array([0.6, 0.0, 0.4]), POLICY, "triage")
    assert (d.queue, d.secondary_queue) == ("billing", "technical")
    d = decide(LABELS, np.array([0.7, 0.0, 0.3]), POLICY, "triage")
    assert d.secondary_queue is None  # 0.4 apart: not close


def test_low_confidence_goes_to_triage_with_a_suggestion() -> None:
    d = decide(LABELS, np.array([0.45, 0.3, 0.25]), POLICY, "triage")
    assert (d.queue, d.secondary_queue, d.reason) == ("triage", "billing", LOW_CONFIDENCE)
    edge = decide(LABELS, np.array([0.6, 0.2, 0.2]), POLICY, "triage")
    assert edge.queue == "billing"  # the threshold itself routes


def test_fallback_chain() -> None:
    assert fallback_chain("transformer", ["linear", "transformer"], None) == ["transformer", "linear"]
    assert fallback_chain("b", ["a", "b", "c"], ["c", "a"]) == ["b", "c", "a"]
    assert fallback_chain("a", ["a", "b"], ["a", "gone"]) == ["a"]


def test_failed_reason() -> None:
    assert failed_reason([], "linear") == ""
    assert failed_reason([("transformer", "timeout")], "linear") == "fallback_to_linear:transformer_timeout"
    assert failed_reason([("a", "error"), ("b", "error")], None) == "all_arms_failed:a_error"
