"""The HTTP contract: request and response models, and turning a request into the text a model reads.

Pure pydantic + stdlib, shared by the Ray Serve app, the Python client and the tests. Every rejection is an
`ApiError` with a status code and a one-line `detail`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from pydantic.config import JsonDict
from starlette.responses import JSONResponse

from serving.mail.emails import Email, EmailParseError, EmailTooLarge, from_fields, parse_raw
from serving.mail.text import model_text


class ApiError(Exception):
    """A request the service refuses; becomes `{"detail": ...}` with `status`."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        # A 503's Retry-After: every 503 carries one (5 s unless the caller knows better).
        self.retry_after_s = retry_after_s if retry_after_s is not None or status != 503 else 5


class _Request(BaseModel):
    # allow_inf_nan=False: JSON's Infinity and NaN (which Starlette's parser takes) are no number a request needs.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_ONE_FORM: JsonDict = {  # the JSON Schema of `_one_form`: raw alone, or subject and/or body without raw
    "oneOf": [
        {"required": ["raw"], "properties": {"raw": {"type": "string"}, "subject": {"type": "null"},
                                             "body": {"type": "null"}}},
        {"properties": {"raw": {"type": "null"}},
         "anyOf": [{"required": ["subject"], "properties": {"subject": {"type": "string"}}},
                   {"required": ["body"], "properties": {"body": {"type": "string"}}}]},
    ]
}  # fmt: skip


class RouteRequest(_Request):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ONE_FORM)

    user_id: StrictStr = Field(min_length=1, max_length=512, description="The sender; decides the A/B arm.")
    subject: StrictStr | None = Field(None, description="Subject line (with `body`).")
    body: StrictStr | None = Field(None, description="Plain-text or HTML body (with `subject`).")
    raw: StrictStr | None = Field(None, description="A whole RFC 822 / MIME message instead of subject + body.")
    email_id: StrictStr | None = Field(
        None, min_length=1, max_length=512, description="Idempotency key: a repeat returns the first answer."
    )
    force_arm: StrictStr | None = Field(None, description="QA only, with the admin token: serve from this arm.")

    @model_validator(mode="after")
    def _one_form(self) -> RouteRequest:
        if self.raw is not None and (self.subject is not None or self.body is not None):
            raise ValueError("send either raw or subject/body, not both")
        if self.raw is None and self.subject is None and self.body is None:
            raise ValueError("send subject and body, or raw")
        return self


class RouteResponse(BaseModel):
    request_id: str
    queue: str
    confidence: float
    secondary_queue: str | None
    arm: str
    model_version: str
    fallback: bool
    reason: str
    latency_ms: float


class BatchItemError(BaseModel):
    status: int = Field(description="The status this email alone would have got (403, 413, 422, 503...).")
    detail: str = Field(description="One line: why this email was not routed.")


class BatchItemFailure(BaseModel):
    """A batch item that was not routed (nothing was logged for it); the other items are unaffected."""

    error: BatchItemError


BatchItem = RouteResponse | BatchItemFailure


class FeedbackRequest(_Request):
    request_id: StrictStr = Field(min_length=1, description="The request_id a route call returned.")
    true_queue: StrictStr = Field(min_length=1, description="Where the email really belonged.")
    handling_seconds: StrictFloat | StrictInt | None = Field(None, ge=0, description="Agent handling time.")
    agent_id: StrictStr | None = Field(None, max_length=256, description="Who corrected it.")
    source: Literal["agent", "audit", "labelling"] = Field(
        "agent",
        description="agent: an agent handling the email (corrections outnumber confirmations); audit: a random "
        "audit sample of routed emails, every sampled email reviewed (the unbiased accuracy estimate); labelling: "
        "the labelling view.",
    )


class FeedbackResponse(BaseModel):
    request_id: str
    created: bool  # False: feedback for this request was already recorded; the first one stands
    true_queue: str


def email_from_request(req: RouteRequest, max_bytes: int) -> Email:
    """Parse the email; refuse oversize and empty ones. The size counts UTF-8 bytes of what the client sent, and
    the text it decodes to (MIME parts, HTML) may not pass `max_bytes` characters either: 413 for both."""
    # A JSON string may hold a lone surrogate ("\ud800"); it counts as the 3 bytes UTF-8 would give it.
    size = sum(len(field.encode("utf-8", "surrogatepass")) for field in (req.raw, req.subject, req.body) if field)
    if size > max_bytes:
        raise ApiError(413, f"email is {size} bytes; the limit is {max_bytes}")
    try:
        if req.raw is not None:
            email = parse_raw(req.raw, max_text_chars=max_bytes)
        else:
            email = from_fields(req.subject or "", req.body or "", max_text_chars=max_bytes)
    except EmailTooLarge as err:
        raise ApiError(413, str(err)) from None
    except EmailParseError as err:
        raise ApiError(422, f"raw: {err}") from None
    if not (email.subject.strip() or email.body.strip()):
        raise ApiError(422, "the email is empty: subject and body have no text")
    return email


def text_for_model(email: Email) -> str:
    text = model_text(email.subject, email.body)
    if not text.strip():
        raise ApiError(422, "the email has no text left after removing quotes and signatures")
    return text


class ErrorBody(BaseModel):
    """Every refusal: a status code and one line saying why."""

    detail: str


ERROR_TEXT = {
    400: "The body is not JSON.",
    401: "No token, or one that is not valid (see WWW-Authenticate).",
    403: "The token's role may not do this.",
    404: "No such experiment, request_id or rollout.",
    409: "Conflicts with the running state (a change under way, a rollout running).",
    413: "The request, an email or a batch is over its limit.",
    422: "A field is missing, of the wrong type or out of range; the detail names it.",
    429: "This token's rate limit is reached; wait Retry-After seconds.",
    503: "Unavailable for a moment (load shedding, the event log behind or failing, a change not confirmed); "
    "retry after Retry-After seconds.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation: each refusal it can answer, with the error body."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


class ArmChange(_Request):
    model: StrictStr | None = Field(None, min_length=1, description="Model name in the registry.")
    version: StrictStr | None = Field(None, min_length=1, description="'champion', 'latest' or a version id.")
    weight: StrictFloat | StrictInt | None = Field(None, ge=0, le=1, description="Share of the covered users.")


class ShadowChange(_Request):
    model: StrictStr = Field(min_length=1, description="Model name in the registry.")
    version: StrictStr = Field("latest", min_length=1, description="'champion', 'latest' or a version id.")
    sample_rate: StrictFloat | StrictInt = Field(ge=0, le=1, description="Share of requests also sent to it.")


class ExperimentChange(_Request):
    """PUT /v1/experiments/{name}: the fields to change (arms are added and removed by a rollout)."""

    arms: dict[str, ArmChange | Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="Arm -> a weight, or the arm fields to change."
    )
    coverage: StrictFloat | StrictInt | None = Field(None, ge=0, le=1, description="Share of users in the experiment.")
    active: StrictBool | None = Field(None, description="False stops the experiment: everyone gets the holdout arm.")
    fallback_order: list[StrictStr] | None = Field(None, description="Arms tried, in order, when an arm fails.")
    shadow: ShadowChange | None = Field(None, description="A model that sees a sample of traffic, answers logged.")
    holdout_arm: StrictStr | None = Field(None, min_length=1, description="The arm users outside coverage get.")


class PolicyChange(_Request):
    """PUT /v1/policy: the decision policy's fields to change."""

    confidence_threshold: StrictFloat | StrictInt | None = Field(None, ge=0, le=1)
    secondary_margin: StrictFloat | StrictInt | None = Field(None, ge=0, le=1)
    queue_thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] | None = None


class RolloutStart(_Request):
    version: StrictStr = Field(min_length=1, description="The candidate, name:vN.")
    canary_percent: StrictFloat | StrictInt | None = Field(None, gt=0, lt=100, description="Its first share.")
    arm: StrictStr | None = Field(None, min_length=1, description="The arm it replaces (when the model serves two).")


class RollbackRequest(_Request):
    arm: StrictStr | None = Field(None, min_length=1, description="Restore this arm's previous champion.")


class BodyLimit:
    """ASGI middleware: no request body over `max_request_bytes` (the app's state; 1 MB unless set) is read. One
    whose declared length is over it is answered 413 at once; one sent without a length (chunked) is read up to the
    limit and answered 413 past it, before any route (or the token check) sees it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The app Serve runs is a copy of `api` (serve.ingress freezes one): read what Router set on the one called.
        app = scope.get("app")
        limit = int(getattr(app.state, "max_request_bytes", 2**20)) if app is not None else 2**20
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit():
            if int(declared) > limit:
                await _too_large(
                    scope, receive, send, f"the request body is {int(declared)} bytes; the limit is {limit}"
                )
                return
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:  # no declared length: read it here, bounded, then hand it on
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(scope, receive, send, f"the request body is over the limit of {limit} bytes")
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(scope: dict[str, Any], receive: Any, send: Any, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
