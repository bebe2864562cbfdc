"""The router's logic, apart from Ray: assign the sender to an arm, ask the arm's model, apply the decision
policy with fallbacks, log exactly one prediction event, and record feedback.

The Ray Serve ingress (`serving/app.py`) wraps a `RouterCore` and hands it an `ArmCaller` that awaits the arm
deployments' handles; unit tests hand it plain coroutines and a memory event log.

The request_id is made before the arm is asked, and travels with the email to the arm (`ArmRequest`), so that
every warning about an email — an arm's failure or timeout, a fallback, a non-finite probability — names it
(`extra=log_ids(...)`, kept in the store by `serving.store.loghandler`) and the dashboard's search finds them all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from experiments.assign import bucket, choose_arm
from experiments.config import ExperimentConfig
from serving.api import (
    ApiError,
    FeedbackRequest,
    FeedbackResponse,
    RouteRequest,
    RouteResponse,
    email_from_request,
    text_for_model,
)
from serving.config import PolicyConfig, QueuesConfig, ServingConfig
from serving.metrics import RouterMetrics
from serving.policy import Decision, decide, failed_reason, fallback_chain, triage_decision
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent, UnknownRequestError, user_key, utc_now
from serving.store.loghandler import log_ids
from serving.store.redact import apply_policy
from serving.store.writer import BufferedWriter

log = logging.getLogger(__name__)
SHADOW = "shadow"  # the shadow model's deployment key among the arm callers
ROUTE_LOGGER = "mailroute.routed"  # one record per routed email (the Serve app hands in Serve's replica logger)


@dataclass(frozen=True)
class ArmAnswer:
    """What a model deployment returns for one email."""

    labels: tuple[str, ...]
    proba: tuple[float, ...]
    model_name: str
    model_version: str


@dataclass(frozen=True)
class ArmRequest:
    """What a model deployment is sent for one email: the text it reads and the ids its log lines name."""

    text: str
    request_id: str
    email_id: str | None = None


ArmCaller = Callable[[str, ArmRequest], Awaitable[ArmAnswer]]  # (arm or SHADOW, the email) -> answer


class RouterCore:
    def __init__(
        self,
        *,
        queues: QueuesConfig,
        serving: ServingConfig,
        experiment: ExperimentConfig,
        event_log: EventLog,
        writer: BufferedWriter,
        call_arm: ArmCaller,
        user_salt: str,
        route_log: logging.Logger | None = None,
        policy: PolicyConfig | None = None,
    ) -> None:
        self.queues = queues
        self.serving = serving
        self.policy = policy or serving.policy  # the decision policy in force: serving.yaml's, or a runtime change
        self.event_log = event_log
        self.writer = writer
        self.call_arm = call_arm
        self.user_salt = user_salt
        self.route_log = route_log or logging.getLogger(ROUTE_LOGGER)
        self.metrics = RouterMetrics()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.set_experiment(experiment)

    def set_experiment(self, experiment: ExperimentConfig) -> None:
        self.experiment = experiment
        self.ranges = experiment.ranges()

    def set_policy(self, policy: PolicyConfig) -> None:
        self.policy = policy

    # ---- routing -----------------------------------------------------------------------------------------------
    def _assign(self, req: RouteRequest, is_admin: bool) -> tuple[str, bool]:
        exp = self.experiment
        if req.force_arm is not None:
            if not is_admin:
                raise ApiError(403, "force_arm needs the admin token (Authorization: Bearer <token>)")
            if req.force_arm not in exp.arms:
                raise ApiError(422, f"force_arm: unknown arm '{req.force_arm}' (arms: {', '.join(sorted(exp.arms))})")
            return req.force_arm, False
        if not exp.active:
            return exp.holdout_arm, False
        assignment = choose_arm(exp.salt, req.user_id, self.ranges)
        if assignment.arm is None:
            return exp.holdout_arm, False
        return assignment.arm, True

    async def _ask(
        self, chain: Sequence[str], email: ArmRequest
    ) -> tuple[str | None, ArmAnswer | None, list[tuple[str, str]]]:
        failures: list[tuple[str, str]] = []
        timeout = self.serving.model_timeout_s
        ids = log_ids(email.request_id, email.email_id)
        for arm in chain:
            try:
                answer = await asyncio.wait_for(self.call_arm(arm, email), timeout)
                if all(math.isfinite(p) for p in answer.proba):
                    return arm, answer, failures
                # A NaN would route the email nowhere sensible (and cannot be stored): treat it as the arm failing.
                log.warning("arm %s answered with a non-finite probability", arm, extra=ids)
                failures.append((arm, "error"))
            except TimeoutError:
                log.warning("arm %s gave no answer within %.1f s", arm, timeout, extra=ids)
                failures.append((arm, "timeout"))
            except Exception as err:  # a broken model must never fail the request: next arm, then triage
                log.warning("arm %s failed: %s: %s", arm, type(err).__name__, err, extra=ids)
                failures.append((arm, "error"))
            self.metrics.arm_errors[(arm, failures[-1][1])] += 1
        return None, None, failures

    async def route(self, req: RouteRequest, *, is_admin: bool = False) -> RouteResponse:
        started = time.perf_counter()
        email = email_from_request(req, self.serving.max_body_bytes)
        text = text_for_model(email)
        if req.email_id is not None:
            seen = self.writer.find_by_email_id(req.email_id)
            if seen is not None:
                return _response(seen)
        arm, in_experiment = self._assign(req, is_admin)
        email_ref = ArmRequest(text, uuid.uuid4().hex, req.email_id)
        served_by, answer, failures = await self._ask(
            fallback_chain(arm, list(self.experiment.arms), self.experiment.fallback_order), email_ref
        )
        if answer is None:
            decision = triage_decision(self.queues.triage_queue)
            model_name, model_version = "none", "none"
        else:
            decision = decide(answer.labels, np.asarray(answer.proba), self.policy, self.queues.triage_queue)
            model_name, model_version = answer.model_name, answer.model_version
        reason = failed_reason(failures, served_by) or decision.reason
        if failures:
            where = f"answered by arm {served_by}" if served_by else f"sent to {decision.queue}: no arm answered"
            log.warning("fallback: %s (%s)", where, reason, extra=log_ids(email_ref.request_id, req.email_id))
        latency_ms = (time.perf_counter() - started) * 1000
        event = self._event(email_ref.request_id, req, email.subject, email.body, arm, in_experiment, decision,
                            reason, bool(failures), model_name, model_version, latency_ms, answer)  # fmt: skip
        if req.email_id is None:
            self.writer.submit(event)
        else:
            # An idempotency key must hold across replicas: write now, and answer with whatever record won
            # (the event log keeps one per email_id; a racing replica's copy is dropped by the store).
            await asyncio.to_thread(self.event_log.record_predictions, [event])
            stored = await asyncio.to_thread(self.event_log.find_by_email_id, req.email_id)
            event = stored if stored is not None else event
        self.metrics.record(
            arm, decision.queue, latency_ms, reason if failures else None, f"{model_name}:{model_version}"
        )
        record = {
            "request_id": event.request_id,
            "arm": arm,
            "model": f"{model_name}:{model_version}",
            "queue": decision.queue,
            "confidence": round(decision.confidence, 3),
            "reason": reason,
            "latency_ms": round(latency_ms, 1),
        }
        self.route_log.info(" ".join(f"{k}={v}" for k, v in record.items()), extra={"routed": record})
        self._maybe_shadow(ArmRequest(text, event.request_id, event.email_id))
        return _response(event)

    def _event(
        self,
        request_id: str,
        req: RouteRequest,
        subject: str,
        body: str,
        arm: str,
        in_experiment: bool,
        decision: Decision,
        reason: str,
        fallback: bool,
        model_name: str,
        model_version: str,
        latency_ms: float,
        answer: ArmAnswer | None,
    ) -> PredictionEvent:
        policy = self.serving.event_log.text_policy
        proba = None if answer is None else {q: round(p, 6) for q, p in zip(answer.labels, answer.proba, strict=True)}
        return PredictionEvent(
            request_id=request_id,
            ts=utc_now(),
            user_key=user_key(self.user_salt, req.user_id),
            arm=arm,
            model_name=model_name,
            model_version=model_version,
            queue=decision.queue,
            confidence=round(decision.confidence, 6),
            fallback=fallback,
            reason=reason,
            latency_ms=round(latency_ms, 3),
            experiment=self.experiment.name,
            in_experiment=in_experiment,
            secondary_queue=decision.secondary_queue,
            email_id=req.email_id,
            subject=apply_policy(subject, policy),
            body=apply_policy(body, policy),
            proba=proba,
        )

    def _maybe_shadow(self, email: ArmRequest) -> None:
        shadow = self.experiment.shadow
        if shadow is None or bucket(f"{self.experiment.salt}-shadow", email.request_id) >= shadow.sample_rate:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(email))
        self._shadow_tasks.add(task)  # keep a reference until done, or the task may be collected mid-flight
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, email: ArmRequest) -> None:
        started = time.perf_counter()
        request_id = email.request_id
        try:
            answer = await asyncio.wait_for(self.call_arm(SHADOW, email), self.serving.model_timeout_s)
        except Exception as err:  # the shadow never affects anyone: log and move on
            why = f"{type(err).__name__}: {err}"[:200]
            log.warning("shadow failed: %s", why, extra=log_ids(request_id, email.email_id))
            self.writer.submit_shadow(request_id, {"error": why})
            return
        d = decide(answer.labels, np.asarray(answer.proba), self.policy, self.queues.triage_queue)
        self.writer.submit_shadow(
            request_id,
            {
                "model": answer.model_name,
                "version": answer.model_version,
                "queue": d.queue,
                "confidence": round(d.confidence, 6),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    # ---- feedback ----------------------------------------------------------------------------------------------
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        if req.true_queue not in self.queues.queues:
            known = ", ".join(self.queues.names)
            raise ApiError(422, f"true_queue: '{req.true_queue}' is not a queue of the taxonomy ({known})")
        event = FeedbackEvent(
            request_id=req.request_id,
            ts=utc_now(),
            true_queue=req.true_queue,
            handling_seconds=None if req.handling_seconds is None else float(req.handling_seconds),
            agent_id=req.agent_id,
            source=req.source,
        )
        # The prediction may still sit in a replica's write buffer: flush ours, then give the others one interval.
        for attempt in range(3):
            try:
                result = await asyncio.to_thread(self.event_log.record_feedback, event)
                return FeedbackResponse(
                    request_id=req.request_id, created=result.created, true_queue=result.event.true_queue
                )
            except UnknownRequestError:
                if attempt == 0:
                    await asyncio.to_thread(self.writer.flush, 5.0)
                else:
                    await asyncio.sleep(self.serving.event_log.flush_interval_ms / 1000 * 2)
        raise ApiError(404, f"unknown request_id '{req.request_id}': no routed email has this id")

    async def close(self) -> None:
        if self._shadow_tasks:
            await asyncio.wait(self._shadow_tasks, timeout=self.serving.model_timeout_s)
        await asyncio.to_thread(self.writer.close, 30.0)


def _response(event: PredictionEvent) -> RouteResponse:
    return RouteResponse(
        request_id=event.request_id,
        queue=event.queue,
        confidence=event.confidence,
        secondary_queue=event.secondary_queue,
        arm=event.arm,
        model_version=f"{event.model_name}:{event.model_version}",
        fallback=event.fallback,
        reason=event.reason,
        latency_ms=event.latency_ms,
    )
