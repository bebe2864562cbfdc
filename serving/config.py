"""Config files: one strict pydantic model per YAML file, loaded in one place.

Every loader turns whatever goes wrong (missing file, YAML syntax, unknown key, wrong type, a missing queue)
into a `ConfigError` whose message is one line naming the file, the key and the problem; the CLI prints it and
exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_DIR = Path("configs")
M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line meant for a person."""


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueSpec(StrictModel):
    description: str = Field("", description="What lands in this queue, for people reading the config.")
    manual_triage_minutes: float = Field(
        gt=0, description="Minutes an agent spends fishing one email of this queue out of the inbox by hand."
    )
    misroute_cost: float = Field(ge=0, description="Cost of sending an email of this queue to a wrong queue.")


class QueuesConfig(StrictModel):
    """`configs/queues.yaml`: the taxonomy and the cost figures the KPIs use."""

    currency: str = Field("EUR", description="Currency of every cost figure.")
    triage_queue: str = Field("triage", description="The human triage queue for emails the router is unsure of.")
    triage_minutes: float = Field(3.0, gt=0, description="Minutes a triage agent spends on one unsure email.")
    agent_cost_per_hour: float = Field(36.0, gt=0, description="Loaded cost of one agent hour.")
    queues: dict[str, QueueSpec] = Field(description="Specialist queues by name.")

    @model_validator(mode="after")
    def _check(self) -> QueuesConfig:
        if len(self.queues) < 2:
            raise ValueError("queues: at least two specialist queues are needed")
        if self.triage_queue in self.queues:
            raise ValueError(f"triage_queue: '{self.triage_queue}' must not also be a specialist queue")
        return self

    @property
    def names(self) -> list[str]:
        return list(self.queues)


def config_dir() -> Path:
    """Where configs are read from: `MAILROUTE_CONFIG_DIR`, else `./configs`."""
    return Path(os.environ.get("MAILROUTE_CONFIG_DIR", DEFAULT_CONFIG_DIR))


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    if first["type"] == "missing":
        return f"missing key '{loc}'"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and msg.split(":", 1)[0] in [*loc.split("."), ""]:
        return msg
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"key '{loc}': {msg}{more}"


def parse_config(data: Any, model: type[M], source: str) -> M:
    """Validate already-parsed data (a dict from YAML or JSON) into `model`, with one-line errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read one YAML file into `model`; every failure is a one-line `ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_config(data, model, str(path))


def load_queues(path: str | Path | None = None) -> QueuesConfig:
    return load_config(path or config_dir() / "queues.yaml", QueuesConfig)


class PolicyConfig(StrictModel):
    """The decision policy: when to trust the model and when to hand an email to a person."""

    confidence_threshold: float = Field(
        0.6, ge=0, le=1, description="Below this top-class probability the email goes to the triage queue."
    )
    secondary_margin: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A second queue is returned when the runner-up is within this probability of the top class.",
    )
    queue_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-queue thresholds that replace confidence_threshold when that queue is the model's top "
        "choice (`mailroute analyze apply-thresholds` sets them from the threshold what-if).",
    )

    @field_validator("queue_thresholds")
    @classmethod
    def _thresholds_are_probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {q: t for q, t in value.items() if not 0 <= t <= 1}
        if bad:
            queue, threshold = next(iter(bad.items()))
            raise ValueError(f"queue_thresholds: {queue}'s threshold {threshold} is not in [0, 1]")
        return value

    def threshold(self, queue: str) -> float:
        """The confidence an email whose top queue is `queue` needs to be routed there."""
        return self.queue_thresholds.get(queue, self.confidence_threshold)

    def check_queues(self, names: Sequence[str]) -> None:
        """Raise ValueError when a per-queue threshold names a queue that is not in the taxonomy."""
        unknown = sorted(set(self.queue_thresholds) - set(names))
        if unknown:
            raise ValueError(f"queue_thresholds: {', '.join(unknown)} not a queue of the taxonomy ({', '.join(names)})")


class AutoscalingSpec(StrictModel):
    """Ray Serve autoscaling for one deployment (replaces a fixed replica count)."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept.")
    max_replicas: int = Field(2, ge=1, description="Most replicas started.")
    target_ongoing_requests: float = Field(8, gt=0, description="Requests per replica the autoscaler aims at.")


class DeploymentSpec(StrictModel):
    """Resources of one Ray Serve deployment."""

    num_replicas: int = Field(1, ge=1, description="Replicas (ignored when autoscaling is set).")
    num_cpus: float = Field(0.5, gt=0, description="Logical CPUs each replica reserves.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Concurrent requests per replica; Serve's default of 5 collapses throughput."
    )
    max_queued_requests: int = Field(
        1000, ge=-1, description="Requests waiting for a replica before Serve sheds load with 503 (-1: no cap)."
    )
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscaling instead of a fixed count.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources each replica reserves, to place it on the nodes that offer them (a "
        "cluster: e.g. {arm_node: 1} with `ray start --resources '{\"arm_node\": 4}'` on the model nodes).",
    )

    @field_validator("resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not v > 0 or k in ("CPU", "GPU", "memory")]
        if bad:
            raise ValueError(f"resources: {', '.join(bad)}: a custom resource needs a positive amount (CPUs: num_cpus)")
        return value


class ModelServerSpec(DeploymentSpec):
    """A model arm's deployment: resources plus inference settings."""

    threads: int = Field(1, ge=1, description="torch threads per replica (Ray sets 1 inside actors).")
    max_batch_size: int = Field(16, ge=1, description="Largest dynamic batch (transformer arms).")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="How long a batch waits to fill.")
    quantize: bool = Field(False, description="Dynamic int8 quantisation of the transformer's linear layers.")


class ArmCallSpec(StrictModel):
    """How a router replica calls the arms: the single-email calls that arrive while earlier ones are in flight
    go out together as one batch call (no wait is added when the arm is idle)."""

    max_batch_size: int = Field(32, ge=1, description="Most emails in one call from a router replica to an arm.")
    max_in_flight: int = Field(2, ge=1, description="Concurrent calls from one router replica to one arm.")


class CircuitBreakerSpec(StrictModel):
    """Per arm and router replica: after `failures` failed calls in a row (errors, timeouts, non-finite answers) the
    arm is skipped at once, straight to the fallback, for `reset_after_s`; then one call tries it again."""

    failures: int = Field(5, ge=1, description="Failed calls in a row that open the arm's circuit.")
    reset_after_s: float = Field(10.0, gt=0, description="How long an open circuit skips the arm.")


EVENT_LOG_URL_ENV = "MAILROUTE_EVENT_LOG_URL"


class EventLogSpec(StrictModel):
    url: str | None = Field(
        None,
        description="Store URL without a password (sqlite:///path.db, postgresql://user@host:port/db); default "
        "sqlite:///<home>/events.db. A URL with a password goes in $MAILROUTE_EVENT_LOG_URL or the secrets file.",
    )
    text_policy: Literal["full", "redacted", "none"] = Field(
        "redacted", description="Email text kept in the log: full, redacted (addresses, phones, cards masked) or none."
    )
    flush_interval_ms: int = Field(100, ge=1, description="Longest time an event waits in a replica's buffer.")
    on_store_failure: Literal["buffer", "refuse"] = Field(
        "buffer",
        description="While the store fails: buffer (keep routing; records wait in memory, up to max_pending, and "
        "are written when the store is back; past that 503) or refuse (503 with Retry-After at once).",
    )
    max_pending: int = Field(
        100_000, ge=1, description="Most records a router replica holds while the store is slow or failing."
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        le=36_500,
        description="Days the email text (subject, body) is kept; `mailroute privacy retain` blanks older text and "
        "keeps every other field (docs/privacy.md). None: kept forever.",
    )

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        from serving.store.eventlog import url_has_password

        # Said without the URL: an error message must never carry a secret.
        if value and url_has_password(value):
            raise ValueError(
                f"the URL carries a password: put it in ${EVENT_LOG_URL_ENV} or the secrets file "
                "(event_log_url), never in a config file"
            )
        return value


class AuthConfig(StrictModel):
    """Access by role (`serving.auth`): tokens come from a secrets file or the environment, never from this file."""

    enabled: bool = Field(
        True,
        description="Require a token on every call but /healthz, /readyz, /metrics, /openapi.json and /docs; off "
        "warns loudly at every start.",
    )
    secrets_file: str | None = Field(
        None,
        description="The secrets file (tokens, user salt); default $MAILROUTE_SECRETS_FILE, else <home>/secrets.yaml.",
    )
    token_env_prefix: str = Field(
        "MAILROUTE_TOKEN_", description="Environment variables <prefix><HOLDER>=<role>:<token> add tokens."
    )


class RateLimitSpec(StrictModel):
    """Per token, across all router replicas: each replica allows its share (the limit over the most replicas the
    ingress may run), so the sum never exceeds the limit; over it, 429 with Retry-After."""

    per_token_per_minute: int | None = Field(
        None,
        ge=1,
        description="Most emails routed or other calls one token makes per minute (a batch counts each "
        "email); null: no limit.",
    )


class ServingConfig(StrictModel):
    """`configs/serving.yaml`."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Decision policy.")
    host: str = Field("127.0.0.1", description="HTTP host the proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        "HeadOnly",
        description="Where Serve runs its HTTP proxy: the head node only (one address; two nodes on one machine never "
        "bind one port) or every node (behind a load balancer of your own).",
    )
    fast_proxy: bool = Field(
        True, description="Use Ray Serve's HAProxy ingress when a haproxy binary is usable (falls back, saying so)."
    )
    access_log: bool = Field(
        False,
        description="Ray Serve's own per-request access log lines; the router writes one structured record per "
        "routed email regardless, and the extra line costs throughput.",
    )
    log_encoding: Literal["JSON", "TEXT"] = Field(
        "JSON", description="Format of the replicas' log files; JSON puts each routed email's fields in its record."
    )
    max_body_bytes: int = Field(262_144, ge=1024, description="Largest accepted email (subject + body, or raw).")
    max_request_bytes: int = Field(
        4 * 2**20, ge=1024, description="Largest request body (a batch of emails); larger ones are refused unread."
    )
    max_batch_items: int = Field(1000, ge=1, description="Most emails in one POST /v1/route/batch.")
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec, description="Calls per token and minute.")
    model_timeout_s: float = Field(2.0, gt=0, description="An arm slower than this counts as failed; fallback.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Access by role.")
    admin_token_env: str = Field(
        "MAILROUTE_ADMIN_TOKEN", description="Env var holding a token of the admin role (holder 'admin')."
    )
    user_salt_env: str = Field(
        "MAILROUTE_USER_SALT", description="Env var holding the salt of the stored user pseudonyms."
    )
    ingress: DeploymentSpec = Field(default_factory=DeploymentSpec, description="The FastAPI router deployment.")
    linear: ModelServerSpec = Field(default_factory=ModelServerSpec, description="Deployments of linear arms.")
    transformer: ModelServerSpec = Field(
        default_factory=ModelServerSpec, description="Deployments of transformer (and cascade) arms."
    )
    in_router_arms: tuple[str, ...] = Field(
        (),
        description="Arms whose model (linear or rules only) runs inside each router replica rather than in a "
        "deployment of its own: no second replica hop per email; the router replicas' CPUs do the model's work.",
    )
    arm_calls: ArmCallSpec = Field(default_factory=ArmCallSpec, description="Batching of the calls to the arms.")
    circuit_breaker: CircuitBreakerSpec = Field(
        default_factory=CircuitBreakerSpec, description="Skipping a failing arm until it recovers."
    )
    event_log: EventLogSpec = Field(default_factory=EventLogSpec, description="Where decisions are logged.")


def load_serving(path: str | Path | None = None) -> ServingConfig:
    return load_config(path or config_dir() / "serving.yaml", ServingConfig)


@dataclass(frozen=True)
class Home:
    """The one folder holding all state mailroute writes: registry, event log, reports, training runs."""

    root: Path

    @classmethod
    def resolve(cls, explicit: str | Path | None = None) -> Home:
        """`--home`, else `MAILROUTE_HOME`, else `./.mailroute`. Nothing is created until something is written."""
        return cls(Path(explicit or os.environ.get("MAILROUTE_HOME") or ".mailroute").absolute())

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def event_log(self) -> Path:
        return self.root / "events.db"
