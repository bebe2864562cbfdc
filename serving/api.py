"""The HTTP contract: request and response models, and turning a request into the text a model reads.

Pure pydantic + stdlib, shared by the Ray Serve app, the Python client and the tests. Every rejection is an
`ApiError` with a status code and a one-line `detail`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

from serving.mail.emails import Email, EmailParseError, from_fields, parse_raw
from serving.mail.text import model_text


class ApiError(Exception):
    """A request the service refuses; becomes `{"detail": ...}` with `status`."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s  # a 503's Retry-After


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteRequest(_Request):
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
    """Parse the email; refuse oversize and empty ones. The size counts UTF-8 bytes of what the client sent."""
    size = len((req.raw or "").encode()) + len((req.subject or "").encode()) + len((req.body or "").encode())
    if size > max_bytes:
        raise ApiError(413, f"email is {size} bytes; the limit is {max_bytes}")
    try:
        email = parse_raw(req.raw) if req.raw is not None else from_fields(req.subject or "", req.body or "")
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
