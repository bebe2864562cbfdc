"""Error analysis over a small log worked by hand: which emails are judged under each feedback policy, the
confusion, misroute pairs with their examples, confidence bands, the triage catch, filters, and the renderings."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.error_render import render_html, render_text, to_json
from experiments.analysis.errors import (
    NO_TEXT,
    AnalysisInputError,
    ErrorAnalysis,
    NoDataError,
    analyze_errors,
    prepare,
    what_if_sample,
)
from experiments.analysis.thresholds import what_if
from serving.config import PolicyConfig, load_queues
from serving.store.eventlog import FeedbackEvent, PredictionEvent
from serving.store.memory import MemoryEventLog

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
QUEUES = load_queues(ROOT / "configs" / "queues.yaml")
AS_OF = datetime(2026, 3, 10, 12, tzinfo=UTC)  # implicit cut-off (48 h): 2026-03-08T12:00Z
OLD, YOUNG = "2026-03-01T10:00:00+00:00", "2026-03-09T10:00:00+00:00"
LONG_BODY = "word " * 60  # 300 characters


def pred(rid: str, queue: str, proba: dict[str, float] | None, **kw: Any) -> PredictionEvent:
    fields: dict[str, Any] = {
        "request_id": rid, "ts": OLD, "user_key": "u", "arm": "linear", "model_name": "linear", "model_version": "v1",
        "queue": queue, "confidence": max(proba.values()) if proba else 0.0, "fallback": False,
        "reason": "confident" if queue != "triage" else "low_confidence", "latency_ms": 5.0,
        "subject": f"subject {rid}", "body": f"body of {rid}", "proba": proba,
    } | kw  # fmt: skip
    return PredictionEvent(**fields)


def fb(rid: str, true: str, source: str = "agent", ts: str = "2026-03-02T10:00:00+00:00") -> FeedbackEvent:
    return FeedbackEvent(rid, ts, true, source=source)


def frame(predictions: list[PredictionEvent], feedback: list[FeedbackEvent]) -> pd.DataFrame:
    log = MemoryEventLog()
    log.record_predictions(predictions)
    for f in feedback:
        log.record_feedback(f)
    return log.joined_frame()


@pytest.fixture(scope="module")
def log_frame() -> pd.DataFrame:
    script = "<script>alert(1)</script>"
    predictions = [
        pred("r1", "billing", {"billing": 0.9, "shipping": 0.1}),  # confirmed by an agent: correct
        pred("r2", "billing", {"billing": 0.85, "technical": 0.15}),  # old, no feedback: implicitly correct
        pred("r3", "billing", {"billing": 0.75, "shipping": 0.25}),  # corrected to shipping: misroute
        pred("r4", "billing", {"billing": 0.72, "shipping": 0.28}, subject=script, body=LONG_BODY),  # misroute
        pred("r5", "technical", {"technical": 0.65, "account": 0.35}, subject=None, body=None),  # misroute, no text
        pred("r6", "triage", {"billing": 0.5, "shipping": 0.45, "account": 0.05}, secondary_queue="billing"),
        pred("r7", "triage", {"account": 0.4, "billing": 0.35, "general": 0.25}, secondary_queue="account"),
        pred("r8", "triage", {"sales": 0.5, "general": 0.5}, secondary_queue="sales"),  # no feedback: no verdict
        pred("r9", "billing", {"billing": 0.9, "sales": 0.1}, ts=YOUNG),  # too young: pending
        pred(
            "r10",
            "triage",
            None,
            fallback=True,
            reason="all_arms_failed:linear_error",
            model_name="none",
            model_version="none",
        ),
        pred("r11", "shipping", None, confidence=0.8),  # logged before vectors were kept; corrected to billing
        pred(
            "r12",
            "billing",
            {"billing": 0.95, "general": 0.05},
            arm="transformer",
            model_name="transformer",
            model_version="v2",
        ),
        pred("r13", "billing", {"billing": 0.8, "general": 0.2}),  # its feedback came after as-of: implicit
    ]
    feedback = [
        fb("r1", "billing"), fb("r3", "shipping"), fb("r4", "shipping"), fb("r5", "account"), fb("r6", "shipping"),
        fb("r7", "account"), fb("r10", "billing"), fb("r11", "billing"), fb("r12", "billing", source="audit"),
        fb("r13", "general", ts="2026-03-11T10:00:00+00:00"),
    ]  # fmt: skip
    return frame(predictions, feedback)


def analyze(df: pd.DataFrame, analysis: AnalysisConfig | None = None, **kw: Any) -> ErrorAnalysis:
    cfg = analysis or AnalysisConfig()
    judged = prepare(df, QUEUES, cfg, as_of=AS_OF, **kw)
    return analyze_errors(judged, QUEUES, cfg, as_of=AS_OF, **kw)


def test_counts_confusion_and_pairs(log_frame: pd.DataFrame) -> None:
    a = analyze(log_frame)
    # Judged: r1-r7 but r8 (triage without feedback) and r9 (pending); r10, r11 (no vector); r12; r13 (implicit).
    assert (a.emails, a.judged, a.judged_with_proba, a.judged_without_proba) == (13, 11, 9, 2)
    assert (a.auto_routed_judged, a.misroutes) == (8, 4)  # r3, r4, r5, r11
    assert a.labels == ("billing", "technical", "account", "shipping")  # taxonomy order
    cells = {(t, g): n for t, row in a.confusion.items() for g, n in row.items() if n}
    # r1, r2, r12, r13 | r3, r4 and the triaged r6 (the model guessed billing) | r5 | r7
    assert cells == {("billing", "billing"): 4, ("shipping", "billing"): 3, ("account", "technical"): 1,
                     ("account", "account"): 1}  # fmt: skip
    pairs = [(p.true_queue, p.routed_queue, p.count, p.share) for p in a.pairs]
    assert pairs == [("shipping", "billing", 2, 0.5), ("account", "technical", 1, 0.25),
                     ("billing", "shipping", 1, 0.25)]  # fmt: skip
    first = a.pairs[0].examples
    assert [e.request_id for e in first] == ["r3", "r4"]  # the most confident first
    assert first[1].subject == "<script>alert(1)</script>"
    assert first[1].snippet == " ".join(LONG_BODY.split())[:200].rstrip() + "…"
    assert a.pairs[1].examples[0].subject == NO_TEXT and a.pairs[1].examples[0].snippet == ""
    assert any("2 judged emails have no probability vector" in n for n in a.notes)
    assert any("2 emails have no verdict yet" in n for n in a.notes)


def test_bands_and_triage_catch(log_frame: pd.DataFrame) -> None:
    a = analyze(log_frame)
    bands = {b.lo: (b.judged, b.auto_routed, b.misrouted, b.accuracy) for b in a.bands}
    assert len(a.bands) == 10 and a.bands[-1].hi == 1.0
    assert bands[0.9] == (2, 2, 0, 1.0)  # r1 0.9 (on the edge), r12 0.95
    assert bands[0.8] == (2, 2, 0, 1.0)  # r2, r13
    assert bands[0.7] == (2, 2, 2, 0.0)  # r3, r4
    assert bands[0.6] == (1, 1, 1, 0.0)  # r5
    assert bands[0.5] == (1, 0, 0, None)  # r6, triaged
    assert bands[0.4] == (1, 0, 0, None)  # r7 at exactly 0.4
    assert sum(b.judged for b in a.bands) == a.judged_with_proba
    c = a.triage_catch  # the model was wrong on r3, r4, r5 (routed) and r6 (triaged)
    assert (c.model_wrong, c.sent_to_triage, c.auto_routed, c.share_caught) == (4, 1, 3, 0.25)


def test_audit_policy_judges_only_audited_emails(log_frame: pd.DataFrame) -> None:
    a = analyze(log_frame, AnalysisConfig(feedback_policy="audit"))
    assert (a.judged, a.misroutes, a.auto_routed_judged) == (1, 0, 1)  # r12
    both = analyze(log_frame, AnalysisConfig(feedback_policy="both"))
    assert both.judged == 11  # the implicit verdicts


def test_feedback_after_as_of_is_not_known_yet(log_frame: pd.DataFrame) -> None:
    judged = prepare(log_frame, QUEUES, AnalysisConfig(), as_of=AS_OF)
    r13 = judged.set_index("request_id").loc["r13"]
    assert r13["judged"] and r13["true"] == "billing"  # implicitly correct, not corrected to general
    earlier = prepare(log_frame, QUEUES, AnalysisConfig(), as_of=datetime(2026, 3, 2, 12, tzinfo=UTC))
    assert not earlier.set_index("request_id").loc["r2", "judged"]  # not 48 h old yet at that time


def test_filters(log_frame: pd.DataFrame) -> None:
    assert analyze(log_frame, arm="transformer").emails == 1
    assert analyze(log_frame, version="transformer:v2").emails == 1
    assert analyze(log_frame, version="v2").emails == 1
    with pytest.raises(AnalysisInputError, match="no email of arm 'nope' in the window; arms: linear, transformer"):
        analyze(log_frame, arm="nope")
    with pytest.raises(AnalysisInputError, match="versions: linear:v1, none:none, transformer:v2"):
        analyze(log_frame, version="linear:v9")


def test_nothing_to_analyse() -> None:
    empty = frame([], [])
    with pytest.raises(NoDataError, match="no email was routed in the window"):
        analyze(empty)
    pending = frame([pred("p1", "billing", {"billing": 0.9, "sales": 0.1}, ts=YOUNG)], [])
    with pytest.raises(NoDataError, match="none of the 1 emails has a verdict yet"):
        analyze(pending)


def test_a_tie_goes_to_the_queue_the_router_chose() -> None:
    df = frame([pred("t1", "technical", {"billing": 0.5, "technical": 0.5})], [fb("t1", "technical")])
    judged = prepare(df, QUEUES, AnalysisConfig(), as_of=AS_OF)
    assert judged["guess"].tolist() == ["technical"]
    sample = what_if_sample(judged)
    assert sample.to_dict("records") == [{"top": "technical", "p_top": 0.5, "true_queue": "technical"}]


def test_renderings_escape_text_and_print_no_nan(log_frame: pd.DataFrame) -> None:
    a = analyze(log_frame)
    sample = what_if_sample(prepare(log_frame, QUEUES, AnalysisConfig(), as_of=AS_OF))
    assert len(sample) == 9
    w = what_if(sample, QUEUES, PolicyConfig())
    page = render_html(a, w)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Threshold what-if" in page and "shipping → billing" in page
    text = render_text(a, w)
    assert "shipping -> billing: 2 (50.0%)" in text and "triage caught 1 (25.0%)" in text
    assert "threshold what-if over 9 judged emails" in text
    for out in (page, text, render_text(a, None)):
        assert not re.search(r"\bnan\b", out.lower())
    data = json.loads(to_json(a, w))
    assert data["errors"]["misroutes"] == 4 and data["what_if"]["emails"] == 9
    assert json.loads(to_json(a, None))["what_if"] is None
