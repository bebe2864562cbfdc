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
import hashlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from circuitbreaker import STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from experiments.assign import bucket, choose_arm
from experiments.config import ExperimentConfig
from serving.api import (
    ApiError,
    BatchItem,
    BatchItemError,
    BatchItemFailure,
    FeedbackRequest,
    FeedbackResponse,
    RouteRequest,
    RouteResponse,
    email_from_request,
    text_for_model,
)
from serving.auth import ANONYMOUS, Principal
from serving.config import PolicyConfig, QueuesConfig, ServingConfig
from serving.metrics import RouterMetrics
from serving.policy import Decision, decide, failed_reason, fallback_chain, triage_decision, with_answerer
from serving.store.eventlog import (
    EventLog,
    EventLogError,
    FeedbackEvent,
    PredictionEvent,
    StoreUnavailableError,
    UnknownRequestError,
    user_key,
    utc_now,
)
from serving.store.loghandler import log_ids
from serving.store.redact import apply_policy
from serving.store.writer import BufferedWriter

log = logging.getLogger(__name__)
SHADOW = "shadow"  # the shadow model's deployment key among the arm callers
ROUTE_LOGGER = "mailroute.routed"  # one record per routed email (the Serve app hands in Serve's replica logger)
STORE_RETRY_S = 1.0  # how long a request retries a failing store before answering 503
STORE_CALL_S = 30.0  # how long a request waits on one store call that hangs (a silent database) before a 503
RETRY_AFTER_S = 2  # what a 503 tells the client to wait
PENDING_S = 600  # a record this young may still wait in a replica's buffer: feedback for it is 503, not 404


@dataclass(frozen=True)
class ArmAnswer:
    """What a model deployment returns for one email."""

    labels: tuple[str, ...]
    proba: tuple[float, ...]
    model_name: str
    model_version: str
    # What answered inside the arm, for the reason: the rule that fired (`rule:refund`, or `no_rule`), a cascade's
    # stage; None for a plain model.
    note: str | None = None


@dataclass(frozen=True)
class ArmRequest:
    """What a model deployment is sent for one email: the text it reads and the ids its log lines name."""

    text: str
    request_id: str
    email_id: str | None = None


ArmCaller = Callable[[str, ArmRequest], Awaitable[ArmAnswer]]  # (arm or SHADOW, the email) -> answer
T = TypeVar("T")


def _spec(experiment: ExperimentConfig, arm: str) -> tuple[str, str] | None:
    """(model, version) an arm (or the shadow) serves in `experiment`; None when it has no such arm."""
    spec = experiment.shadow if arm == SHADOW else experiment.arms.get(arm)
    return None if spec is None else (spec.model, spec.version)


class NonFiniteAnswer(Exception):
    """An arm answered with a NaN or infinite probability."""


def _passing(err: BaseException) -> bool:
    """A store failure that may pass (a locked or full disk, an unopenable file), not a refusal of the data."""
    return isinstance(err, StoreUnavailableError | OSError) or (
        not isinstance(err, EventLogError) and type(err).__module__.startswith(("sqlite3", "sqlalchemy", "psycopg"))
    )


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
        self._breakers: dict[str, CircuitBreaker] = {}  # arm -> its circuit, made on the arm's first call
        self._probing: set[str] = set()  # arms whose one trial call after a pause is under way
        self._in_flight: dict[tuple[str, str], asyncio.Future[RouteResponse]] = {}  # (client, email_id) -> answer
        self._id_key = hmac.new(user_salt.encode(), b"mailroute-request-id", hashlib.sha256).digest()
        self.set_experiment(experiment)

    def set_experiment(self, experiment: ExperimentConfig) -> None:
        # An arm that is new, or serves another model version now, starts with a closed circuit: a canary started
        # again under an earlier canary's name is not skipped for that one's failures.
        old = getattr(self, "experiment", None)
        for arm in list(getattr(self, "_breakers", {})):
            before = None if old is None else _spec(old, arm)
            if before is None or before != _spec(experiment, arm):
                del self._breakers[arm]
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
            breaker = self._breaker(arm)
            state = breaker.state
            # Failing lately: skipped at once, not waited for; once the pause is over, one call tries the arm again
            # (the others keep skipping it until that one answers).
            if state == STATE_OPEN or (state == STATE_HALF_OPEN and arm in self._probing):
                failures.append((arm, "open"))
                self.metrics.arm_errors[(arm, "open")] += 1
                continue
            probe = state == STATE_HALF_OPEN
            if probe:
                self._probing.add(arm)
            try:
                answer = await breaker.call_async(self._call_checked, arm, email, timeout)
                return arm, answer, failures
            except NonFiniteAnswer:
                log.warning("arm %s answered with a non-finite probability", arm, extra=ids)
                failures.append((arm, "error"))
            except TimeoutError:
                log.warning("arm %s gave no answer within %.1f s", arm, timeout, extra=ids)
                failures.append((arm, "timeout"))
            except Exception as err:  # a broken model must never fail the request: next arm, then triage
                log.warning("arm %s failed: %s: %s", arm, type(err).__name__, err, extra=ids)
                failures.append((arm, "error"))
            finally:
                if probe:
                    self._probing.discard(arm)
            self.metrics.arm_errors[(arm, failures[-1][1])] += 1
        return None, None, failures

    def new_request_id(self) -> str:
        """32 hex characters: the issue time (8, unix seconds), 16 random, then 8 of an HMAC keyed by the (shared,
        secret) user salt, so that every replica can tell a recent id this service issued (`issued_recently`)."""
        nonce = f"{int(time.time()) & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:16]}"
        return nonce + hmac.new(self._id_key, nonce.encode(), hashlib.sha256).hexdigest()[:8]

    def issued_recently(self, request_id: str) -> bool:
        """Whether this service issued the id (its HMAC holds) within the last PENDING_S seconds: a record that may
        still wait in some replica's write buffer."""
        nonce, tag = request_id[:24], request_id[24:]
        expected = hmac.new(self._id_key, nonce.encode(), hashlib.sha256).hexdigest()[:8]
        if len(request_id) != 32 or not hmac.compare_digest(tag, expected):
            return False
        return time.time() - int(nonce[:8], 16) < PENDING_S

    async def route_batch(self, items: list[Any], caller: Principal = ANONYMOUS) -> list[BatchItem]:
        """Each item on its own, in order: a routed email's answer, or the error that item alone would have got
        (nothing logged for it). A failed item never fails the others, so a client retries exactly the failed ones."""
        limit = self.serving.max_batch_items
        if len(items) > limit:
            raise ApiError(413, f"batch of {len(items)} emails; the limit is {limit}")
        return list(await asyncio.gather(*(self._batch_item(item, caller) for item in items)))

    async def _batch_item(self, item: Any, caller: Principal) -> BatchItem:
        try:
            req = RouteRequest.model_validate(item)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "item"
            message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            return BatchItemFailure(error=BatchItemError(status=422, detail=f"{where}: {message}"[:500]))
        try:
            return await self.route(req, caller)
        except ApiError as err:
            return BatchItemFailure(error=BatchItemError(status=err.status, detail=err.detail))

    def _breaker(self, arm: str) -> CircuitBreaker:
        breaker = self._breakers.get(arm)
        if breaker is None:
            spec = self.serving.circuit_breaker
            breaker = self._breakers[arm] = CircuitBreaker(
                failure_threshold=spec.failures, recovery_timeout=spec.reset_after_s, name=arm
            )
        return breaker

    async def _call_checked(self, arm: str, email: ArmRequest, timeout: float) -> ArmAnswer:
        answer = await asyncio.wait_for(self.call_arm(arm, email), timeout)
        if not all(math.isfinite(p) for p in answer.proba):
            # A NaN would route the email nowhere sensible (and cannot be stored): the arm failed.
            raise NonFiniteAnswer(arm)
        return answer

    async def route(self, req: RouteRequest, caller: Principal = ANONYMOUS) -> RouteResponse:
        started = time.perf_counter()
        email = email_from_request(req, self.serving.max_body_bytes)
        text = text_for_model(email)
        arm, in_experiment = self._assign(req, caller.can("admin"))  # force_arm is checked before any cached answer
        if req.email_id is None:
            return await self._route(req, caller, text, email.subject, email.body, arm, in_experiment, started)
        # An idempotency key is the client's own: another client's email_id never reaches its answer.
        key = (caller.holder, req.email_id)
        running = self._in_flight.get(key)
        if running is None:  # else the same email is being routed right now here: one model call, one answer
            running = asyncio.ensure_future(
                self._route_once(req, caller, text, email.subject, email.body, arm, in_experiment, started)
            )
            self._in_flight[key] = running
            running.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(running)

    async def _route_once(self, req: RouteRequest, caller: Principal, *args: Any) -> RouteResponse:
        """The first answer to this client's email_id if there is one, else a new one."""
        assert req.email_id is not None
        seen = await self._store_call(self.writer.find_by_email_id, req.email_id, caller.holder)
        if seen is not None:
            return _response(seen)
        return await self._route(req, caller, *args)

    async def _store_call(self, call: Callable[..., T], *args: object) -> T:
        """A store call off the event loop, retried briefly while the store fails for a reason that can pass; a
        503 with Retry-After when it does not come back in time (the client retries; nothing half-done)."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_passing),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                stop=stop_after_delay(STORE_RETRY_S),
                reraise=True,
            ):
                with attempt:
                    # Bounded: the thread of a call that hangs stays behind, the request does not wait on it.
                    return await asyncio.wait_for(asyncio.to_thread(call, *args), STORE_CALL_S)
        except TimeoutError:
            log.warning("event log call %s did not answer in %.0f s", getattr(call, "__name__", call), STORE_CALL_S)
            raise ApiError(503, "the event log is not answering; try again shortly", RETRY_AFTER_S) from None
        except Exception as err:
            if not _passing(err):
                raise
            log.warning("event log unavailable: %s: %s", type(err).__name__, err)
            raise ApiError(503, "the event log is unavailable; try again shortly", RETRY_AFTER_S) from None
        raise AssertionError("unreachable")  # AsyncRetrying either returns or raises

    async def _route(
        self,
        req: RouteRequest,
        caller: Principal,
        text: str,
        subject: str,
        body: str,
        arm: str,
        in_experiment: bool,
        started: float,
    ) -> RouteResponse:
        email_ref = ArmRequest(text, self.new_request_id(), req.email_id)
        served_by, answer, failures = await self._ask(
            fallback_chain(arm, list(self.experiment.arms), self.experiment.fallback_order), email_ref
        )
        if answer is None:
            decision = triage_decision(self.queues.triage_queue)
            model_name, model_version = "none", "none"
        else:
            decision = decide(answer.labels, np.asarray(answer.proba), self.policy, self.queues.triage_queue)
            decision = with_answerer(decision, answer.note, self.queues.triage_queue)
            model_name, model_version = answer.model_name, answer.model_version
        reason = failed_reason(failures, served_by) or decision.reason
        if failures:
            where = f"answered by arm {served_by}" if served_by else f"sent to {decision.queue}: no arm answered"
            log.warning("fallback: %s (%s)", where, reason, extra=log_ids(email_ref.request_id, req.email_id))
        latency_ms = (time.perf_counter() - started) * 1000
        event = self._event(email_ref.request_id, req, caller, subject, body, arm, in_experiment, decision,
                            reason, bool(failures), model_name, model_version, latency_ms, answer)  # fmt: skip
        if req.email_id is None:
            self._submit(event)
        else:
            # An idempotency key must hold across replicas: write now, and answer with whatever record won
            # (the event log keeps one per client and email_id; a racing replica's copy is dropped by the store).
            await self._store_call(self.event_log.record_predictions, [event])
            stored = await self._store_call(self.event_log.find_by_email_id, event.email_id, event.client)
            if stored is not None and stored.request_id != event.request_id:
                return _response(stored)  # another replica's answer won: ours is not an answer, count nothing
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
        caller: Principal,
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
            client=caller.holder,
        )

    def _submit(self, event: PredictionEvent) -> None:
        """Into the write buffer, or a 503: an answer whose record cannot be kept is not given (nothing is lost)."""
        if self.serving.event_log.on_store_failure == "refuse" and self.writer.stats().failing:
            raise ApiError(503, "the event log is failing; try again shortly", RETRY_AFTER_S)
        try:
            accepted = self.writer.submit(event)
        except EventLogError:  # the writer is closed: this replica is shutting down
            raise ApiError(503, "this server is shutting down; try again", RETRY_AFTER_S) from None
        if not accepted:
            raise ApiError(503, "the event log is behind (its write buffer is full); try again shortly", RETRY_AFTER_S)

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
            self._submit_shadow(request_id, {"error": why})
            return
        d = decide(answer.labels, np.asarray(answer.proba), self.policy, self.queues.triage_queue)
        self._submit_shadow(
            request_id,
            {
                "model": answer.model_name,
                "version": answer.model_version,
                "queue": d.queue,
                "confidence": round(d.confidence, 6),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    def _submit_shadow(self, request_id: str, result: dict[str, object]) -> None:
        try:
            if not self.writer.submit_shadow(request_id, result):
                log.warning("shadow result not kept: the write buffer is full", extra=log_ids(request_id, None))
        except EventLogError as err:  # a closed writer (shutting down): a shadow result is never worth an error
            log.warning("shadow result not kept: %s", err, extra=log_ids(request_id, None))

    # ---- feedback ----------------------------------------------------------------------------------------------
    async def feedback(self, req: FeedbackRequest, caller: Principal = ANONYMOUS) -> FeedbackResponse:
        if req.true_queue not in self.queues.queues:
            known = ", ".join(self.queues.names)
            raise ApiError(422, f"true_queue: '{req.true_queue}' is not a queue of the taxonomy ({known})")
        if req.agent_id is not None and req.agent_id != caller.holder and caller is not ANONYMOUS:
            raise ApiError(403, f"agent_id: feedback is recorded as your token's holder '{caller.holder}'")
        event = FeedbackEvent(
            request_id=req.request_id,
            ts=utc_now(),
            true_queue=req.true_queue,
            handling_seconds=None if req.handling_seconds is None else float(req.handling_seconds),
            agent_id=req.agent_id if caller is ANONYMOUS else caller.holder,
            source=req.source,
        )
        # The prediction may still sit in a replica's write buffer: flush ours, then give the others one interval.
        pending = self.issued_recently(req.request_id)
        for attempt in range(3 if pending else 1):
            try:
                result = await self._store_call(self.event_log.record_feedback, event)
                return FeedbackResponse(
                    request_id=req.request_id, created=result.created, true_queue=result.event.true_queue
                )
            except UnknownRequestError:
                if attempt == 0:
                    await asyncio.to_thread(self.writer.flush, 5.0)
                else:
                    await asyncio.sleep(self.serving.event_log.flush_interval_ms / 1000 * 2)
        if not pending:  # made up, mistyped, deleted (privacy), or older than any buffer holds
            raise ApiError(404, f"unknown request_id '{req.request_id[:64]}': no routed email has this id")
        # This service issued the id minutes ago (its signature holds), so the prediction exists but is not written
        # yet: it waits in another replica's buffer behind a slow or failing store. Not unknown: come back shortly.
        raise ApiError(503, f"request_id '{req.request_id}' is not in the event log yet; try again", RETRY_AFTER_S)

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
