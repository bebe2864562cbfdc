"""Who may call what: bearer tokens, each naming its holder and role, from a secrets file or the environment.

Roles and their rights:

    client   route (POST /v1/route, /v1/route/batch)
    agent    feedback, labelling, the dashboard
    admin    all of the above, and the experiment, the decision policy, rollouts, rollbacks and `force_arm`

Where tokens come from (never from the configs, the logs or Serve's application config):

- the secrets file: `auth.secrets_file` in serving.yaml, else `$MAILROUTE_SECRETS_FILE`, else `<home>/secrets.yaml`,
  kept 0600 (`mailroute tokens add|revoke|list` edit it)::

      tokens:
        gateway-eu: {role: client, sha256: 5e88...}   # the SHA-256 of the token (what `tokens add` writes)
        alice:      {role: agent, token: s3cret}      # or the token itself
      user_salt: 9f2c...                              # optional: the user-pseudonym salt

  It is read again when it changes (looked at no more than once a second), so adding, rotating or revoking a
  token needs no restart. A file that stops parsing keeps the last good tokens and logs an error each time.
- the environment, read when a replica starts: `MAILROUTE_TOKEN_<HOLDER>=<role>:<token>` (the holder is the
  suffix, lower-cased), and the admin token variable of serving.yaml (`admin_token_env`; holder "admin").

A presented token is hashed (SHA-256) and looked up by its digest, then compared with `hmac.compare_digest`; the
token itself is never kept. A missing or unknown token is 401, a known one without the right 403; neither says which
tokens exist. Authentication is off only when serving.yaml says `auth: {enabled: false}`: every caller is then
"anonymous" with every right, and every start warns so.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from serving.config import ConfigError, Home, ServingConfig, StrictModel, parse_config

log = logging.getLogger(__name__)
Role = Literal["client", "agent", "admin"]
Right = Literal["route", "feedback", "label", "dashboard", "admin"]
RIGHTS: dict[str, frozenset[str]] = {
    "client": frozenset({"route"}),
    "agent": frozenset({"feedback", "label", "dashboard"}),
    "admin": frozenset({"route", "feedback", "label", "dashboard", "admin"}),
}
HOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
SECRETS_ENV = "MAILROUTE_SECRETS_FILE"
RECHECK_S = 1.0
AUTH_OFF_WARNING = (
    "AUTHENTICATION IS OFF (serving.yaml auth.enabled: false): anyone who reaches this server can route, label, "
    "change the experiment and read customers' emails"
)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenSpec(StrictModel):
    role: Role = Field(description="client, agent or admin.")
    token: str | None = Field(None, min_length=16, description="The token itself (prefer sha256).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="The SHA-256 hex digest of the token.")

    @model_validator(mode="after")
    def _one_form(self) -> TokenSpec:
        if (self.token is None) == (self.sha256 is None):
            raise ValueError("give either token or sha256")
        return self

    @property
    def digest(self) -> str:
        return self.sha256 or digest(self.token or "")


class SecretsFile(StrictModel):
    """The secrets file: tokens by holder, and optionally the user-pseudonym salt."""

    tokens: dict[str, TokenSpec] = Field(default_factory=dict, description="Tokens by holder name.")
    user_salt: str | None = Field(None, min_length=16, description="Salt of the user pseudonyms in the event log.")
    event_log_url: str | None = Field(
        None, description="The event log's URL when it carries a password (postgresql://user:pw@host:port/db)."
    )

    @field_validator("tokens")
    @classmethod
    def _holders(cls, value: dict[str, TokenSpec]) -> dict[str, TokenSpec]:
        bad = [h for h in value if not HOLDER.fullmatch(h)]
        if bad:
            raise ValueError(f"tokens: holder name '{bad[0][:40]}' must be letters, digits and . _ @ - (at most 100)")
        return value


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's holder and role. `key` is the token's digest: it keys the dashboard session and
    its form tokens, so revoking a token ends its sessions."""

    holder: str
    role: Role
    key: str

    def can(self, right: Right) -> bool:
        return right in RIGHTS[self.role]


ANONYMOUS = Principal("anonymous", "admin", "")


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def secrets_path(serving: ServingConfig, home: Home) -> Path:
    return Path(serving.auth.secrets_file or os.environ.get(SECRETS_ENV) or home.root / "secrets.yaml")


def read_secrets(path: Path) -> SecretsFile:
    """The secrets file (an empty one when it does not exist); a ConfigError naming the problem otherwise."""
    return parse_secrets(_secrets_bytes(path), path)


def _secrets_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the secrets file ({err})") from None


def parse_secrets(raw: bytes | None, path: Path) -> SecretsFile:
    """The secrets file's content (None: there is no file) as a SecretsFile; a ConfigError naming the problem."""
    if raw is None:
        return SecretsFile()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read the secrets file ({err})") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: YAML syntax error in the secrets file") from None  # no excerpt: it holds secrets
    return parse_config(data or {}, SecretsFile, str(path))


def env_tokens(environ: Mapping[str, str], prefix: str, admin_env: str) -> dict[str, TokenSpec]:
    """Tokens from the environment: `<prefix><HOLDER>=<role>:<token>`, and the admin token variable."""
    tokens: dict[str, TokenSpec] = {}
    for name, value in environ.items():
        if not name.startswith(prefix) or not value:
            continue
        holder = name.removeprefix(prefix).lower().replace("_", "-")
        role, _, token = value.partition(":")
        if role not in RIGHTS or not token or not HOLDER.fullmatch(holder):
            raise ConfigError(f"{name}: expected <role>:<token> with role client, agent or admin")
        if len(token) < 16:  # said without the value: an error message must never carry a secret
            raise ConfigError(f"{name}: the token must be at least 16 characters")
        tokens[holder] = TokenSpec.model_validate({"role": role, "token": token})
    admin = environ.get(admin_env)
    if admin:
        if len(admin) < 16:
            raise ConfigError(f"{admin_env}: the admin token must be at least 16 characters")
        tokens["admin"] = TokenSpec(role="admin", token=admin)
    return tokens


class TokenStore:
    """The tokens in force, by digest: the environment's (fixed at start) and the secrets file's (re-read when it
    changes; the file wins for a holder named in both)."""

    def __init__(self, serving: ServingConfig, home: Home, environ: Mapping[str, str] | None = None) -> None:
        self.enabled = serving.auth.enabled
        self.path = secrets_path(serving, home)
        environ = os.environ if environ is None else environ
        self._env = env_tokens(environ, serving.auth.token_env_prefix, serving.admin_token_env)
        self._lock = threading.Lock()
        self._checked = 0.0
        # What the file said when last parsed, compared byte for byte (size, mtime and inode can all stay the same
        # across an edit). A broken file at start is an error, not an empty token list.
        self._raw = _secrets_bytes(self.path)
        self._file = parse_secrets(self._raw, self.path)
        self._by_digest = self._index()

    def _index(self) -> dict[str, Principal]:
        merged = {**self._env, **self._file.tokens}
        return {spec.digest: Principal(holder, spec.role, spec.digest) for holder, spec in merged.items()}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                raw = _secrets_bytes(self.path)
                if raw == self._raw:
                    return
                self._raw = raw  # a broken version is reported once, not at every check
                self._file = parse_secrets(raw, self.path)
            except ConfigError as err:
                log.error("keeping the previous tokens: %s", err)
                return
            self._by_digest = self._index()
            log.warning("tokens reloaded from %s: %d in force", self.path, len(self._by_digest))

    @property
    def count(self) -> int:
        self._refresh()
        return len(self._by_digest)

    def user_salt(self) -> str | None:
        return self._file.user_salt

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <token>` header; None when absent or unknown."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self.by_token(token)

    def by_token(self, token: str) -> Principal | None:
        self._refresh()
        wanted = digest(token)
        found = self._by_digest.get(wanted)
        return found if found is not None and hmac.compare_digest(found.key, wanted) else None

    def by_holder(self, holder: str) -> Principal | None:
        self._refresh()
        return next((p for p in self._by_digest.values() if p.holder == holder), None)

    def require(self, authorization: str | None, right: Right, what: str) -> Principal:
        """The caller's principal if it has `right`; AuthError 401 (no or unknown token) or 403 otherwise."""
        principal = self.authenticate(authorization)
        if principal is None:
            problem = "a token" if not authorization else "a valid token"
            raise AuthError(401, f"{what} needs {problem} (Authorization: Bearer <token>)")
        if not principal.can(right):
            raise AuthError(403, f"{what} is not allowed for the {principal.role} role")
        return principal


def resolve_user_salt(
    serving: ServingConfig, home: Home, tokens: TokenStore | None = None, *, shared: bool = False
) -> str:
    """The user-pseudonym salt: the environment's, else the secrets file's, else `<home>/user_salt` (made once).
    `shared` (replicas on several machines, or a store they all share): the home's file would be one machine's
    salt, so a ConfigError says where to put it instead."""
    from serving.ops.state import user_salt

    from_env = os.environ.get(serving.user_salt_env)
    if from_env:
        return from_env
    from_file = (tokens or TokenStore(serving, home)).user_salt()
    if from_file:
        return from_file
    if shared:
        raise ConfigError(
            f"on a cluster (or with a shared event store) the user salt must be the same secret on every node: set "
            f"{serving.user_salt_env} or user_salt in the secrets file ({secrets_path(serving, home)}), e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`; keep the one in use if there is one "
            f"({home.root / 'user_salt'})"
        )
    return user_salt(home)


def _write_secrets(path: Path, secrets_file: SecretsFile) -> None:
    """Replace the secrets file atomically, 0600 (a reader sees the old file or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets_file.model_dump(mode="json", exclude_none=True)
    data["tokens"] = {h: {k: v for k, v in t.items() if v is not None} for h, t in data.get("tokens", {}).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def add_token(path: Path, holder: str, role: Role) -> str:
    """A new random token for `holder` (replacing its old one: a rotation); the file keeps only its digest. Returns
    the token, to be shown once."""
    from filelock import FileLock

    if not HOLDER.fullmatch(holder):
        raise ConfigError(f"holder '{holder[:40]}': use letters, digits and . _ @ - (at most 100 characters)")
    token = secrets.token_urlsafe(32)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        current = read_secrets(path)
        tokens = {**current.tokens, holder: TokenSpec(role=role, sha256=digest(token))}
        _write_secrets(path, current.model_copy(update={"tokens": tokens}))
    return token


def revoke_token(path: Path, holder: str) -> bool:
    """Remove `holder`'s token from the file; False when the file has none."""
    from filelock import FileLock

    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        current = read_secrets(path)
        if holder not in current.tokens:
            return False
        tokens = {h: t for h, t in current.tokens.items() if h != holder}
        _write_secrets(path, current.model_copy(update={"tokens": tokens}))
    return True


class RateLimits:
    """Calls per token and minute on one router replica: its share of `rate_limit.per_token_per_minute` (a moving
    window, from the `limits` library), so that every replica together never exceed the limit."""

    def __init__(self, serving: ServingConfig) -> None:
        from limits import RateLimitItemPerMinute, storage, strategies

        limit = serving.rate_limit.per_token_per_minute
        ingress = serving.ingress
        replicas = ingress.num_replicas if ingress.autoscaling is None else ingress.autoscaling.max_replicas
        self.share = None if limit is None else max(1, limit // max(1, replicas))
        self._item = None if self.share is None else RateLimitItemPerMinute(self.share)
        self._window = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def check(self, holder: str, cost: int = 1) -> int | None:
        """None when `holder` may make `cost` more calls now; else the seconds until it may (for Retry-After)."""
        if self._item is None or self._window.hit(self._item, holder, cost=cost):
            return None
        reset = self._window.get_window_stats(self._item, holder).reset_time
        return max(1, int(reset - time.time()) + 1)
