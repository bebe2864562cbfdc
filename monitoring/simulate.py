"""Routed synthetic traffic straight into an event log, without a server: for the drift tests, the benchmark and
trying `mailroute monitor run` on a fresh machine.

Each email goes the way the router sends it (serving.router): parsed from its fields, cleaned with `model_text`,
scored by a registered version, decided by the serving policy, its text cut to the text policy; a share of the
emails gets feedback with the true queue. What it skips is the HTTP hop and Ray.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from serving.config import PolicyConfig
from serving.mail.emails import from_fields
from serving.mail.text import model_text
from serving.models.predictor import Predictor
from serving.policy import decide
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent
from serving.store.redact import TextPolicy, apply_policy


@dataclass(frozen=True)
class Arm:
    name: str
    predictor: Predictor
    model_name: str
    model_version: str


def route_frame(
    frame: pd.DataFrame,
    arms: Sequence[Arm],
    *,
    start: datetime,
    span: timedelta,
    policy: PolicyConfig,
    text_policy: TextPolicy = "redacted",
    triage_queue: str = "triage",
    feedback_share: float = 0.3,
    feedback_source: str = "agent",
    seed: int = 0,
    experiment: str | None = None,
    users: int = 5000,
) -> tuple[list[PredictionEvent], list[FeedbackEvent]]:
    """Prediction and feedback events for the emails of `frame` (training.synth.generate's columns), with the
    arms taking turns at random and timestamps spread evenly over [start, start + span). With `experiment`, the
    emails count as that experiment's, from `users` senders (each user's arm is drawn once, as assignment is sticky).
    The feedback (a random `feedback_share` of the emails, tagged `feedback_source`) is unbiased, like an audit's."""
    rng = np.random.default_rng(seed)
    emails = [from_fields(str(s), str(b)) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    texts = [model_text(e.subject, e.body) or e.subject or "(empty)" for e in emails]
    user_ids = rng.integers(0, users, size=len(emails))
    user_arm = rng.integers(0, len(arms), size=users)
    which = user_arm[user_ids]
    gets_feedback = rng.random(len(emails)) < feedback_share
    proba: dict[int, np.ndarray] = {}
    for k, arm in enumerate(arms):
        rows = np.flatnonzero(which == k)
        if len(rows):
            proba[k] = arm.predictor.predict_proba([texts[i] for i in rows])
    position = {k: {int(i): j for j, i in enumerate(np.flatnonzero(which == k))} for k in range(len(arms))}
    predictions, feedback = [], []
    step = span / max(len(emails), 1)
    for i, email in enumerate(emails):
        k = int(which[i])
        arm = arms[k]
        decision = decide(arm.predictor.labels, proba[k][position[k][i]], policy, triage_queue)
        request_id = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex
        ts = (start + step * i).isoformat()
        predictions.append(
            PredictionEvent(
                request_id=request_id,
                ts=ts,
                user_key=f"u{user_ids[i]:09d}",
                arm=arm.name,
                model_name=arm.model_name,
                model_version=arm.model_version,
                queue=decision.queue,
                confidence=round(decision.confidence, 6),
                fallback=False,
                reason=decision.reason,
                latency_ms=1.0,
                experiment=experiment,
                in_experiment=experiment is not None,
                secondary_queue=decision.secondary_queue,
                subject=apply_policy(email.subject, text_policy),
                body=apply_policy(email.body, text_policy),
            )
        )
        if gets_feedback[i]:
            feedback.append(
                FeedbackEvent(
                    request_id=request_id, ts=ts, true_queue=str(frame["queue"].iloc[i]), source=feedback_source
                )
            )
    return predictions, feedback


def fill(event_log: EventLog, predictions: Sequence[PredictionEvent], feedback: Sequence[FeedbackEvent]) -> None:
    """Write the events in batches (feedback after its predictions, as the store requires)."""
    for i in range(0, len(predictions), 2000):
        event_log.record_predictions(predictions[i : i + 2000])
    for event in feedback:
        event_log.record_feedback(event)
