"""The dashboard's HTTP side: a FastAPI router that the Serve app's ingress and the standalone server both include.

    GET /dashboard                    the page (?q= an id to search; ?component=, ?level= filter the log list)
    GET /dashboard/reports/<path>     a file under <home>/reports (the full Evidently reports); anything else is 404
    POST /dashboard/login             a token from the login form; sets the session cookie
    GET, POST /dashboard/label        the labelling view (monitoring.dashboard.labelling)

Access: the page shows emails' text (as redacted by the text policy) and the audit log, so every dashboard path
needs a token of the agent or admin role (`serving.auth`): an `Authorization: Bearer <token>` header, or the login
form, which sets an HttpOnly, SameSite=Strict cookie holding the holder's name and an HMAC keyed by the token's
digest (never the token itself; revoking the token ends the session). A client token is refused (403). Only when
serving.yaml switches authentication off is the page open, and it says so on every page.

The router reads its `DashboardSources` from `app.state.dashboard`, which the including app sets. The page is
rendered by Jinja2 with autoescaping on, so every text that came from an email (subjects, bodies, the log lines
that quote them) is shown as text. The page carries no script, and its Content-Security-Policy forbids scripts
besides; a report file is served sandboxed (its own scripts run, in an opaque origin).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from datetime import datetime
from functools import cache
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from monitoring.dashboard.data import DashboardSources, gather, report_file
from serving.api import BodyLimit
from serving.auth import ANONYMOUS, Principal, Right
from serving.store.eventlog import MonitorVerdict

PAGE_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
REPORT_CSP = "sandbox allow-scripts allow-popups"
COOKIE = "mailroute_dashboard"
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>mailroute dashboard: sign in</title></head>
<body><h1>mailroute dashboard</h1><p>{message}</p>
<form method="post" action="/dashboard/login"><label>token <input type="password" name="token"
autocomplete="current-password" autofocus></label> <button type="submit">sign in</button></form></body></html>"""
router = APIRouter()


SESSION_S = 12 * 3600  # a sign-in lasts a working day


def session_value(principal: Principal, secret: bytes, issued: int) -> str:
    """What the session cookie holds: the holder, when it signed in, and an HMAC of both keyed by the token's
    digest and a server secret (never the token; the stored digest alone cannot forge one; revoking the token or
    twelve hours end it)."""
    message = f"{principal.holder}|{issued}".encode()
    mac = hmac.new(secret + principal.key.encode(), message, hashlib.sha256).hexdigest()
    return f"{principal.holder}:{issued}:{mac}"


def _secret(request: Request) -> bytes:
    return _sources(request).secret()  # the server-side secret every replica shares


def caller(request: Request) -> Principal | None:
    """Who is asking: by bearer token, else by session cookie; ANONYMOUS when authentication is off."""
    tokens = _sources(request).tokens
    if tokens is None or not tokens.enabled:
        return ANONYMOUS
    header = request.headers.get("authorization")
    if header:
        return tokens.authenticate(header)
    cookie = request.cookies.get(COOKIE, "")
    holder, _, rest = cookie.partition(":")
    issued, _, _ = rest.partition(":")
    if not holder or not issued.isdigit() or not 0 <= time.time() - int(issued) < SESSION_S:
        return None
    principal = tokens.by_holder(holder)
    if principal is not None and hmac.compare_digest(cookie, session_value(principal, _secret(request), int(issued))):
        return principal
    return None


class _SignIn(Exception):
    """Raised by the access check; answered with the login form (401), or a refusal (403) for a known caller."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _need(request: Request, right: Right) -> Principal:
    principal = caller(request)
    if principal is None:
        raise _SignIn("The dashboard shows customers' emails: sign in with an agent's or an admin's token.")
    if not principal.can(right):
        raise _SignIn(f"'{principal.holder}' holds a {principal.role} token, which cannot open this page.", 403)
    return principal


def _require_access(request: Request) -> Principal:
    return _need(request, "dashboard")


def require_labelling(request: Request) -> Principal:
    return _need(request, "label")


Viewer = Annotated[Principal, Depends(_require_access)]
Labeller = Annotated[Principal, Depends(require_labelling)]


def install(app: FastAPI) -> None:
    """Include the dashboard's routes in `app` (which sets `app.state.dashboard`), with its login answer."""
    from monitoring.dashboard.labelling import router as labelling_router  # it imports this module's pieces

    app.include_router(router)
    app.include_router(labelling_router)

    @app.exception_handler(_SignIn)
    async def _sign_in(request: Request, exc: _SignIn) -> HTMLResponse:
        page = LOGIN_PAGE.format(message=html.escape(exc.message, quote=False))
        return HTMLResponse(page, status_code=exc.status, headers={"Content-Security-Policy": PAGE_CSP})


def _when(ts: str | None) -> str:
    if not ts:
        return "—"
    try:
        return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ts


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _verdict(v: MonitorVerdict) -> str:
    if v.alarm:
        return "drift"
    # A check the job could not run (no reference, too few rows) is not a clean bill of health.
    skipped = (v.detail or "").startswith("skipped") or (v.score is None and v.threshold is None and v.detail)
    return "skipped" if skipped else "no drift"


def _verdict_class(v: MonitorVerdict) -> str:
    return {"drift": "alarm", "no drift": "ok"}.get(_verdict(v), "empty")


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("monitoring.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, pct=_pct, num=_num, verdict=_verdict, verdict_class=_verdict_class)
    return env


def render_page(sources: DashboardSources, viewer: Principal = ANONYMOUS, **params: Any) -> str:
    return environment().get_template("dashboard.html").render(page=gather(sources, **params), viewer=viewer)


def _sources(request: Request) -> DashboardSources:
    sources = getattr(request.app.state, "dashboard", None)
    if sources is None:
        raise HTTPException(503, "the dashboard is not configured on this server yet", {"Retry-After": "5"})
    return sources


@router.post("/dashboard/login", include_in_schema=False)
async def login(request: Request) -> Response:
    tokens = _sources(request).tokens
    response = RedirectResponse("/dashboard", status_code=303)
    if tokens is None or not tokens.enabled:
        return response
    given = parse_qs((await request.body())[:4096].decode("utf-8", "replace")).get("token", [""])[0]
    principal = tokens.by_token(given) if given else None
    if principal is None or not principal.can("dashboard"):
        page = LOGIN_PAGE.format(message="That token does not open the dashboard (agents' and admins' tokens do).")
        return HTMLResponse(page, status_code=401, headers={"Content-Security-Policy": PAGE_CSP})
    value = session_value(principal, _secret(request), int(time.time()))
    response.set_cookie(
        COOKIE, value, max_age=SESSION_S, httponly=True, samesite="strict", path="/dashboard",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


# Plain `def`: FastAPI runs these on its thread pool, so the store reads never block an event loop that routes mail.
@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard(
    request: Request,
    viewer: Viewer,
    q: str | None = None,
    component: str | None = None,
    level: str | None = None,
) -> HTMLResponse:
    page = render_page(_sources(request), viewer, query=q, component=component, level=level)
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})


@router.get("/dashboard/reports/{path:path}", include_in_schema=False, dependencies=[Depends(_require_access)])
def report(request: Request, path: str) -> FileResponse:
    target = report_file(_sources(request).home, path)
    if target is None:
        raise HTTPException(404, "no such report")
    return FileResponse(target, headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"})


def standalone_app(sources: DashboardSources) -> FastAPI:
    """The dashboard alone, for `mailroute dashboard`: the same router over the files, no Ray."""
    app = FastAPI(title="mailroute dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = sources
    app.add_middleware(BodyLimit)  # no request body over 1 MB is read (the labelling form is at most 256 KB)
    install(app)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return app


def serve(sources: DashboardSources, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Run the standalone dashboard until Ctrl-C."""
    import uvicorn

    uvicorn.run(standalone_app(sources), host=host, port=port, log_level="warning")
