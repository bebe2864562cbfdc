"""The Ray Serve applications: a FastAPI router in front of one model application per arm.

    mailroute           Router (FastAPI ingress) --handle by name--> arm-<name> in mailroute-arm-<name>
                                                 --handle by name--> shadow in mailroute-shadow (answers only logged)

Deployed through Serve's config-deploy path (`serving/ops/launch.py`; the configs are `serving/ops/apps.py`'s):
`build_app(args)` builds the router application, `build_arm(args)` one arm's. The experiment and the decision policy
travel in the router's `user_config`, each arm's pinned model version in its own, so a weight change, a threshold
change or a new version reaches the running replicas through `reconfigure()` without restarting them, and an arm
can be added or removed (a canary) without touching the router application (`serving/ops/changes.py`). The routing
logic itself lives in `serving/router.py`, apart from Ray.

Every replica keeps its warnings in the event log's `logs` table (`serving.store.loghandler`: component "router",
"event-writer", "arm-<name>" or "shadow"), and the router serves the ops dashboard at `/dashboard`
(`monitoring.dashboard`), which reads them back from the store, so it shows every node's lines.
"""

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle

from experiments.config import ExperimentConfig
from monitoring.dashboard.data import DashboardSources
from monitoring.dashboard.routes import install as install_dashboard
from serving.api import (
    ApiError,
    BatchItem,
    BodyLimit,
    ExperimentChange,
    FeedbackRequest,
    FeedbackResponse,
    PolicyChange,
    RollbackRequest,
    RolloutStart,
    RouteRequest,
    RouteResponse,
    errors,
)
from serving.auth import AUTH_OFF_WARNING, AuthError, Principal, RateLimits, Right, TokenStore, resolve_user_salt
from serving.batcher import CallBatcher
from serving.config import Home, PolicyConfig, QueuesConfig, ServingConfig, config_dir, parse_config
from serving.metrics import merge, render
from serving.models.predictor import check_servable, load_version
from serving.models.registry import open_registry
from serving.ops import admin
from serving.ops.apps import (
    APP_NAME,
    HEAVY_KINDS,
    SHADOW,
    arm_app,
    arm_deployment,
    arm_spec,
    arm_user_config,
    in_router,
)
from serving.ops.changes import Context
from serving.router import ArmAnswer, ArmRequest, RouterCore
from serving.store.eventlog import EventLog, open_event_log
from serving.store.location import event_log_url, is_shared, ray_nodes, require_shared_storage
from serving.store.loghandler import StoreLogHandler, install_store_logging, log_ids
from serving.store.writer import BufferedWriter

log = logging.getLogger(__name__)


def _flush_serve_logs_forever(interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        for handler in logging.getLogger("ray.serve").handlers:
            handler.flush()


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__


STORE_LOGGERS = ("serving", "ray.serve")  # mailroute's own loggers and Serve's (its replica warnings)


def _store_logging(store: str | EventLog, default_component: str) -> StoreLogHandler | None:
    """This replica's warnings into the event log, named after its deployment ("router", "arm-linear", "shadow")."""
    try:
        component = serve.get_replica_context().deployment
    except Exception:  # outside a replica (a test calling the class directly)
        component = default_component
    try:
        return install_store_logging(
            open_event_log(store) if isinstance(store, str) else store,
            "router" if component == "Router" else component,
            loggers=STORE_LOGGERS,
            components={"serving.store.writer": "event-writer"},
        )
    except Exception as err:  # the logs are for triage; a replica without them still routes
        log.warning("component logs will not reach the event log: %s", _one_line(err))
        return None


class ModelServer:
    """One arm's model. `user_config` names the registry version, so a new version loads without a restart."""

    def __init__(
        self, home: str, queues: dict[str, Any], batched: bool, serving: dict[str, Any] | None = None,
        store_logging: bool = True, off_loop: bool = False,
    ) -> None:  # fmt: skip
        """`store_logging` off: the model runs inside a router replica, whose own handler keeps its warnings;
        `off_loop`: predictions run in a worker thread (inside a router, its event loop must keep serving)."""
        self.registry = open_registry(Home(Path(home)))
        self.queues = parse_config(queues, QueuesConfig, "queues")
        self.batched = batched
        self.ref: str | None = None
        self.predictor: Any = None
        self.meta: Any = None
        self.fault: str | None = None
        self.off_loop = off_loop
        # The event log's URL is resolved here, in the replica (it may carry a password: never in Serve's config).
        settings = parse_config(serving or {}, ServingConfig, "serving")
        self.log_handler = _store_logging(event_log_url(settings, Home(Path(home))), "arm") if store_logging else None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        ref, threads, quantize = config["ref"], int(config.get("threads", 1)), bool(config.get("quantize", False))
        if (ref, threads, quantize) != (self.ref, getattr(self, "_threads", None), getattr(self, "_quantize", None)):
            # Loaded off the event loop: the running version keeps answering until the new one is ready, then
            # the swap is one assignment.
            predictor, meta = await asyncio.to_thread(self._load, ref, threads, quantize)
            self.predictor, self.meta, self.ref = predictor, meta, ref
            self._threads, self._quantize = threads, quantize
            log.info("loaded %s:%s for %s", meta.name, meta.version, ref)
        batch: Any = self._predict_batch  # serve.batch adds these setters to the method
        batch.set_max_batch_size(int(config.get("max_batch_size", 16)))
        batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.0)))

    def _load(self, ref: str, threads: int, quantize: bool) -> tuple[Any, Any]:
        predictor, meta = load_version(self.registry, ref, threads=threads, quantize=quantize)
        check_servable(meta, self.queues.names, self.queues.triage_queue)
        predictor.predict_proba(["warm up"])  # first-call costs (lazy tables, allocator) before traffic
        return predictor, meta

    def set_fault(self, fault: str | None) -> None:
        """Fault injection for failure drills and tests: 'error' raises, 'hang' never answers in time, 'nan' answers
        with NaN probabilities."""
        if fault not in (None, "error", "hang", "nan"):
            raise ValueError(f"unknown fault {fault!r}: use error, hang, nan or None")
        self.fault = fault

    def ready(self) -> str:
        if self.fault == "error":  # a drill's failing arm is not ready either
            raise RuntimeError("injected fault")
        return f"{self.meta.name}:{self.meta.version}"

    def _answers(self, texts: list[str]) -> list[ArmAnswer]:
        """One answer per text; a predictor that can say what answered (a rules arm's rule) says it in `note`."""
        labels, with_notes = tuple(self.predictor.labels), getattr(self.predictor, "predict_with_notes", None)
        proba, notes = with_notes(texts) if with_notes else (self.predictor.predict_proba(texts), [None] * len(texts))
        return [ArmAnswer(labels, tuple(float(p) for p in row), self.meta.name, self.meta.version, note)
                for row, note in zip(proba, notes, strict=True)]  # fmt: skip

    async def predict(self, emails: list[ArmRequest] | list[str]) -> list[ArmAnswer]:
        """Answers for a router's batch of emails (one per email, in order). A warning about the batch is logged
        once per email, with its ids, so that a search for any of them finds it."""
        requests = [e if isinstance(e, ArmRequest) else ArmRequest(e, "") for e in emails]
        texts = [r.text for r in requests]
        if self.fault in ("error", "hang"):
            self._warn_each(requests, f"injected fault '{self.fault}' ({len(requests)} email(s) in the call)")
        if self.fault == "error":
            raise RuntimeError("injected fault")
        if self.fault == "hang":
            await asyncio.sleep(3600)
        try:
            if self.batched:  # merge the batches of all router replicas, up to max_batch_size
                answers = list(await asyncio.gather(*(self._predict_batch(text) for text in texts)))
            else:
                answers = await asyncio.to_thread(self._answers, texts) if self.off_loop else self._answers(texts)
        except Exception as err:
            self._warn_each(requests, f"prediction failed: {type(err).__name__}: {_one_line(err)}")
            raise
        if self.fault == "nan":
            answers = [ArmAnswer(a.labels, tuple(math.nan for _ in a.proba), a.model_name, a.model_version, a.note)
                       for a in answers]  # fmt: skip
        for request, answer in zip(requests, answers, strict=True):
            if not all(math.isfinite(p) for p in answer.proba):
                self._warn_each([request], f"{answer.model_name}:{answer.model_version} gave a non-finite probability")
        return answers

    def _warn_each(self, requests: list[ArmRequest], message: str) -> None:
        for request in requests:
            log.warning("%s", message, extra=log_ids(request.request_id or None, request.email_id))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _predict_batch(self, texts: list[str]) -> list[ArmAnswer]:
        return self._answers(texts)

    def __del__(self) -> None:
        handler = getattr(self, "log_handler", None)  # absent when __init__ failed
        if handler is not None:
            handler.close()


api = FastAPI(title="mailroute", description="Routes customer emails to specialist queues.", version="1")
install_dashboard(api)  # GET /dashboard, over this replica's event log and live experiment


api.add_middleware(BodyLimit)
# Declares the bearer scheme in the OpenAPI schema (so /docs can send a token); the check itself is
# `Router._require`, against the token store, which knows the holders and their roles.
BEARER = [Security(HTTPBearer(auto_error=False, description="A token of the client, agent or admin role."))]


def _within_limit(request: Request, principal: Principal, cost: int = 1) -> None:
    wait = request.app.state.limits.check(principal.holder, cost)
    if wait is not None:
        raise ApiError(429, f"the rate limit of this token is reached; try again in {wait} s", wait)


def _without_salt(answer: dict[str, Any]) -> dict[str, Any]:
    """An admin answer that names the experiment, without its salt (a secret: it decides every user's arm)."""
    experiment = answer.get("experiment")
    if isinstance(experiment, dict):
        answer["experiment"] = {k: v for k, v in experiment.items() if k != "salt"}
    return answer


def _needs(right: Right, what: str) -> Any:
    """A dependency: the caller's principal, checked before the body is validated (a stranger gets 401, never a
    422 that describes the body)."""

    def check(request: Request) -> Principal:
        tokens: TokenStore = request.app.state.tokens
        principal = tokens.require(request.headers.get("authorization"), right, what)
        _within_limit(request, principal)
        return principal

    return Depends(check)


RoutingCaller = Annotated[Principal, _needs("route", "routing")]
FeedbackCaller = Annotated[Principal, _needs("feedback", "feedback")]


def _refuse(request: Request, status: int, detail: str) -> JSONResponse:
    core = getattr(request.app.state, "core", None)  # this replica's RouterCore, once configured
    if core is not None:
        core.metrics.rejected[str(status)] += 1
    # One line, whatever the detail quotes (a body's key may hold a line break).
    return JSONResponse({"detail": " ".join(detail.split())[:500]}, status_code=status)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return _refuse(request, 400, "invalid JSON body")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return _refuse(request, 422, f"{where}: {message}")


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    answer = _refuse(request, exc.status, exc.detail)
    if exc.retry_after_s is not None:
        answer.headers["Retry-After"] = str(exc.retry_after_s)
    return answer


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Whatever was not foreseen: one line and a 500, never a traceback (the traceback goes to the log)."""
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return _refuse(request, 500, f"internal error ({type(exc).__name__}); the server log has the details")


@api.exception_handler(AuthError)
async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
    answer = _refuse(request, exc.status, exc.detail)
    if exc.status == 401:
        answer.headers["WWW-Authenticate"] = "Bearer"
    return answer


async def _json_body(request: Request, default: bytes = b"null", limit: int = 2**20) -> Any:
    """The JSON body, read no further than `limit` bytes (413 past it, before anything is parsed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the limit of {limit} bytes")
    try:
        return json.loads(bytes(body) or default)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        raise ApiError(400, "invalid JSON body") from None


@serve.ingress(api)
class Router:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.home = Home(Path(settings["home"]))
        self.queues = parse_config(settings["queues"], QueuesConfig, "queues")
        self.serving = parse_config(settings["serving"], ServingConfig, "serving")
        self.config_dir = Path(settings.get("config_dir") or config_dir()).absolute()
        self.handles: dict[str, DeploymentHandle] = {}  # arm -> its deployment, looked up by name on first use
        self.local: dict[str, ModelServer] = {}  # arm -> its model, run in this replica (in_router_arms)
        self._retired: dict[str, ModelServer] = {}  # an arm taken out: its model, for the emails already queued
        self._local_failed: dict[str, str] = {}  # arm -> why its pinned version did not load here
        self.tokens = TokenStore(self.serving, self.home)
        api.state.tokens = self.tokens  # for the dependencies that check a caller before the body
        api.state.limits = RateLimits(self.serving)
        api.state.max_request_bytes = self.serving.max_request_bytes
        if not self.tokens.enabled:
            log.warning("%s", AUTH_OFF_WARNING)
        store_url = event_log_url(self.serving, self.home)
        nodes = ray_nodes()
        require_shared_storage(store_url, nodes)
        event_log = open_event_log(store_url)
        salt = resolve_user_salt(self.serving, self.home, self.tokens, shared=is_shared(event_log, nodes))
        self.log_handler = _store_logging(event_log, "router")
        spec = self.serving.event_log
        writer = BufferedWriter(event_log, flush_interval_ms=spec.flush_interval_ms, max_pending=spec.max_pending)
        calls = self.serving.arm_calls
        self.batcher: CallBatcher[ArmAnswer, ArmRequest] = CallBatcher(
            self._call_arm_batch,
            max_batch=calls.max_batch_size,
            max_in_flight=calls.max_in_flight,
            timeout_s=self.serving.model_timeout_s,
        )
        self.core: RouterCore | None = None
        self._event_log, self._writer, self._salt = event_log, writer, salt
        self.config_version = 0
        api.state.dashboard = DashboardSources(
            self.home,
            event_log,
            store_url,
            live_experiment=lambda: self.core.experiment if self.core else None,
            queues=self.queues,
            tokens=self.tokens,
            build_report=False,
            server_secret=salt,
        )
        # Serve buffers request-path log records (1,000 in throughput mode) with no time limit: flush every second,
        # so that a quiet replica's records reach its log file too.
        threading.Thread(target=_flush_serve_logs_forever, args=(1.0,), name="log-flush", daemon=True).start()

    async def _set_local(self, refs: dict[str, str]) -> None:
        """Load the arms that run inside this replica at their pinned versions (the same ModelServer code an arm
        deployment runs, off the event loop); the running ones answer until the new version is ready. A version
        that fails to load here (the change loaded it first, so rarely: a node that cannot reach the registry) is
        logged and leaves the arm on its previous version, or with none, so that its emails fall back: raising
        would make Serve stop the replica, and with it the ingress."""
        loaded = dict(self.local)
        for arm, ref in refs.items():
            server = loaded.get(arm)
            if server is not None and server.ref == ref:
                continue
            fresh = ModelServer(str(self.home.root), self.queues.model_dump(mode="json"), False,
                                self.serving.model_dump(mode="json"), store_logging=False, off_loop=True)  # fmt: skip
            try:
                await fresh.reconfigure(arm_user_config(self.serving.linear, ref))
            except Exception as err:
                why = f"{type(err).__name__}: {_one_line(err)}"
                self._local_failed[arm] = f"{ref} did not load ({why})"
                log.error("arm %s (inside the router) could not load %s, %s: %s", arm, ref,
                          f"keeps {server.ref}" if server is not None else "its emails fall back", why)  # fmt: skip
                continue
            self._local_failed.pop(arm, None)
            loaded[arm] = fresh
        self._retired.update({arm: server for arm, server in self.local.items() if arm not in refs})
        self.local = {arm: loaded[arm] for arm in refs if arm in loaded}

    async def reconfigure(self, config: dict[str, Any]) -> None:
        experiment = parse_config(config["experiment"], ExperimentConfig, "experiment")
        policy = parse_config(config.get("policy") or self.serving.policy.model_dump(), PolicyConfig, "policy")
        await self._set_local(dict(config.get("local") or {}))
        if self.core is None:
            self.core = RouterCore(
                queues=self.queues,
                serving=self.serving,
                experiment=experiment,
                policy=policy,
                event_log=self._event_log,
                writer=self._writer,
                call_arm=self._call_arm,
                user_salt=self._salt,
                route_log=logging.getLogger("ray.serve.mailroute"),  # Serve's replica log, in its encoding
            )
            api.state.core = self.core  # the exception handlers count refusals in its metrics
        else:
            self.core.set_experiment(experiment)
            self.core.set_policy(policy)
        self.config_version = config.get("version", 0)

    def _handle(self, arm: str) -> DeploymentHandle:
        handle = self.handles.get(arm)
        if handle is None:
            handle = self.handles[arm] = serve.get_deployment_handle(arm_deployment(arm), arm_app(arm))
        return handle

    async def _call_arm(self, arm: str, email: ArmRequest) -> ArmAnswer:
        return await self.batcher.call(arm, email)

    async def _call_arm_batch(self, arm: str, emails: list[ArmRequest]) -> list[ArmAnswer]:
        if in_router(self.serving, arm):  # in this replica: no hop, the same predictor code and warnings
            local = self.local.get(arm) or self._retired.get(arm)
            if local is None:
                raise RuntimeError(f"arm {arm} runs inside the router and has no version loaded here")
            return await local.predict(emails)
        return await self._handle(arm).predict.remote(emails)

    def _context(self, caller: Principal) -> Context:
        """The context of an admin's change: who acts is the token's holder, never a header the caller chooses."""
        return Context(
            self.home,
            self.queues.model_dump(mode="json"),
            self.serving,
            caller.holder,
            self.config_dir,
            store=self._event_log,
        )

    # ---- routes --------------------------------------------------------------------------------------------
    @api.post("/v1/route", response_model=RouteResponse, dependencies=BEARER,
              responses=errors(400, 401, 403, 413, 422, 429, 503))  # fmt: skip
    async def route(self, req: RouteRequest, caller: RoutingCaller) -> RouteResponse:
        assert self.core is not None
        return await self.core.route(req, caller)

    @api.post(
        "/v1/route/batch",
        response_model=list[BatchItem],
        dependencies=BEARER,
        responses=errors(400, 401, 403, 413, 422, 429, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {
                    "type": "array", "items": {"$ref": "#/components/schemas/RouteRequest"}, "maxItems": 1000,
                }}},
            }
        },
    )  # fmt: skip
    async def route_batch(self, request: Request, caller: RoutingCaller) -> list[BatchItem]:
        """Emails in order; each answer is the email's route or its own error (`{"error": {status, detail}}`)."""
        assert self.core is not None
        items = await _json_body(request, limit=self.serving.max_request_bytes)  # size first, then anything else
        if not isinstance(items, list):
            raise ApiError(422, "body: expected a JSON array of emails")
        share = request.app.state.limits.share
        if share is not None and len(items) > share:  # it could never pass: say so instead of 429 forever
            raise ApiError(413, f"batch of {len(items)} emails; this token's rate limit allows {share} a minute here")
        if 1 < len(items) <= self.serving.max_batch_items:
            _within_limit(request, caller, len(items) - 1)  # each email counts; the call itself was counted
        return await self.core.route_batch(items, caller)

    @api.post("/v1/feedback", response_model=FeedbackResponse, dependencies=BEARER,
              responses=errors(400, 401, 403, 404, 413, 422, 429, 503))  # fmt: skip
    async def feedback(self, req: FeedbackRequest, caller: FeedbackCaller) -> FeedbackResponse:
        assert self.core is not None
        return await self.core.feedback(req, caller)

    @api.get("/v1/experiments", dependencies=BEARER, responses=errors(401, 403, 429))
    async def experiments(
        self, caller: Annotated[Principal, _needs("admin", "reading the experiment")]
    ) -> dict[str, Any]:
        assert self.core is not None
        exp = self.core.experiment.model_dump(mode="json", exclude={"salt"})  # the salt stays a secret
        return {
            "experiment": exp,
            "ranges": [{"arm": r.arm, "start": r.start, "end": r.end} for r in self.core.ranges],
            "config_version": self.config_version,
        }

    @api.put(
        "/v1/experiments/{name}", dependencies=BEARER, responses=errors(400, 401, 403, 404, 409, 413, 422, 429, 503)
    )
    async def change_experiment(
        self, name: str, change: ExperimentChange, caller: Annotated[Principal, _needs("admin", "changing experiments")]
    ) -> dict[str, Any]:
        body = change.model_dump(mode="json", exclude_unset=True)
        return _without_salt(await admin.change_experiment(self._context(caller), name, body))

    @api.get("/v1/policy", dependencies=BEARER, responses=errors(401, 403, 429))
    async def policy(self, caller: Annotated[Principal, _needs("admin", "reading the policy")]) -> dict[str, Any]:
        assert self.core is not None
        return {"policy": self.core.policy.model_dump(mode="json"), "config_version": self.config_version}

    @api.put("/v1/policy", dependencies=BEARER, responses=errors(400, 401, 403, 409, 413, 422, 429, 503))
    async def change_policy(
        self, change: PolicyChange, caller: Annotated[Principal, _needs("admin", "changing the decision policy")]
    ) -> dict[str, Any]:
        body = change.model_dump(mode="json", exclude_unset=True)
        return await admin.change_policy(self._context(caller), body, self.queues.names)

    @api.get("/v1/rollout", dependencies=BEARER, responses=errors(401, 403, 429, 503))
    async def rollout(self, caller: Annotated[Principal, _needs("admin", "reading the rollout")]) -> dict[str, Any]:
        return _without_salt(await admin.rollout_status(self._context(caller)))

    @api.post("/v1/rollout", dependencies=BEARER, responses=errors(400, 401, 403, 404, 409, 413, 422, 429, 503))
    async def start_rollout(
        self, start: RolloutStart, caller: Annotated[Principal, _needs("admin", "starting a rollout")]
    ) -> dict[str, Any]:
        body = start.model_dump(mode="json", exclude_unset=True)
        return _without_salt(await admin.start_rollout(self._context(caller), body))

    @api.post("/v1/rollback", dependencies=BEARER, responses=errors(400, 401, 403, 404, 409, 413, 422, 429, 503))
    async def rollback(
        self, caller: Annotated[Principal, _needs("admin", "a rollback")], body: RollbackRequest | None = None
    ) -> dict[str, Any]:
        arm = {} if body is None else body.model_dump(mode="json", exclude_unset=True)
        return _without_salt(await admin.rollback(self._context(caller), arm))

    def config_version_of_replica(self) -> int:
        return int(self.config_version)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        responses={
            503: {
                "description": "Not ready: an arm does not answer, or the event log fails "
                "while on_store_failure is refuse."
            }
        },
    )
    async def readyz(self) -> JSONResponse:
        assert self.core is not None
        loaded: dict[str, str] = {}
        arms = [*self.core.experiment.arms, *([SHADOW] if self.core.experiment.shadow else [])]
        for arm in arms:
            if in_router(self.serving, arm):
                local = self.local.get(arm)
                if local is None or arm in self._local_failed:
                    detail = f"arm {arm} (inside the router): {self._local_failed.get(arm, 'no version loaded')}"
                    return JSONResponse({"status": "not ready", "detail": detail}, 503, {"Retry-After": "5"})
                loaded[arm] = local.ready()
                continue
            try:
                loaded[arm] = await asyncio.wait_for(self._handle(arm).ready.remote(), 5.0)
            except Exception as err:  # the details (a Ray error carries pids, addresses, a traceback) to the log only
                log.warning("readyz: arm %s is not answering: %s", arm, _one_line(err))
                detail = f"arm {arm}: not answering ({type(err).__name__})"
                return JSONResponse({"status": "not ready", "detail": detail}, 503, {"Retry-After": "5"})
        stats = self._writer.stats()
        store = {"status": "failing" if stats.failing else "ok", "buffered": stats.pending, "dropped": stats.dropped}
        if stats.failing and self.serving.event_log.on_store_failure == "refuse":
            detail = "the event log is failing and on_store_failure is refuse"
            body = {"status": "not ready", "detail": detail, "event_log": store}
            return JSONResponse(body, 503, {"Retry-After": "5"})
        # buffer mode: still ready (routing goes on, records wait in memory), and says the store is failing
        return JSONResponse({"status": "ready", "arms": loaded, "event_log": store})

    def metrics_snapshot(self) -> dict[str, Any]:
        assert self.core is not None
        return {**self.core.metrics.snapshot(), "writer": asdict(self._writer.stats())}

    @api.get("/metrics", response_class=PlainTextResponse, responses=errors(503))
    async def metrics(self) -> PlainTextResponse:
        assert self.core is not None
        try:
            me = serve.get_deployment_handle("Router", APP_NAME)
            snapshots = await me.broadcast("metrics_snapshot").results_async()
        except Exception as err:
            # During a rolling update some replica may be away. One replica's counts would look like a counter
            # reset to Prometheus; a failed scrape is only a gap.
            log.warning("metrics broadcast failed (%s); answering 503", _one_line(err))
            raise ApiError(503, "not every router replica answered; scrape again", 1) from None
        return PlainTextResponse(render(merge(snapshots), self.core.experiment.name))

    async def __del__(self) -> None:
        if self.core is not None:
            await self.core.close()
        if self.log_handler is not None:
            await asyncio.to_thread(self.log_handler.close)


def _deployment_options(spec: Any, name: str, serving: ServingConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "logging_config": {"enable_access_log": serving.access_log, "encoding": serving.log_encoding},
        "ray_actor_options": {"num_cpus": spec.num_cpus, **({"resources": spec.resources} if spec.resources else {})},
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
    }
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.model_dump()
    else:
        options["num_replicas"] = spec.num_replicas
    return options


def build_app(args: dict[str, Any]) -> serve.Application:
    """Builder for `import_path: serving.app:build_app`, the router. args: home, queues, serving, config_dir.

    No secret travels here: Serve shows an application's args and runtime environment in its config API and
    dashboard. Tokens and the user salt reach the replicas from the secrets file or the environment of the Ray
    processes (`serving.auth`)."""
    serving_cfg = parse_config(args["serving"], ServingConfig, "serving")
    router: Any = serve.deployment(Router)
    options = _deployment_options(serving_cfg.ingress, "Router", serving_cfg)
    return router.options(**options).bind({k: args.get(k) for k in ("home", "queues", "serving", "config_dir")})


def build_arm(args: dict[str, Any]) -> serve.Application:
    """Builder for `import_path: serving.app:build_arm`, one arm's model. args: home, queues, serving, arm, kind."""
    serving_cfg = parse_config(args["serving"], ServingConfig, "serving")
    kind, arm = args["kind"], args["arm"]
    deployment: Any = serve.deployment(ModelServer)
    deployment = deployment.options(
        **_deployment_options(arm_spec(serving_cfg, kind), arm_deployment(arm), serving_cfg)
    )
    return deployment.bind(args["home"], args["queues"], kind in HEAVY_KINDS, args["serving"])
