"""The dashboard's labelling view: the emails the router was unsure of, labelled with plain HTML forms.

    GET  /dashboard/label?q=TEXT   the triage queue's unlabelled emails and the least sure routed ones (searchable)
    POST /dashboard/label          label one email (its row's queue and "assign") or the ticked ones ("assign
                                   selected"), as feedback with source "labelling"; answers 303 back to the list

The lists and the writes are `training.labels.labelling`'s (imported in the handlers, so a router replica loads
them only when someone labels), the same the `mailroute label` commands use. It needs the label right (an agent's
or an admin's token, `routes.require_labelling`), and the feedback it writes names the token's holder as the agent.
The page has no script (its CSP forbids them), so a POST is a form submission, and because it writes, it is
guarded against cross-site requests twice over: a hidden token, an HMAC of a fixed string keyed by the signed-in
token's digest (the home's user salt when authentication is off), compared in constant time; and a request whose
Origin (or Sec-Fetch-Site) says it came from another site is refused. The one-line result travels back in the redirect's
query string with an HMAC of its own, so a crafted link cannot put words on the page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from monitoring.dashboard.data import DashboardSources
from monitoring.dashboard.routes import PAGE_CSP, Labeller, _sources, environment
from serving import clock
from serving.auth import Principal
from serving.config import ConfigError, QueuesConfig, config_dir, load_queues
from serving.store.eventlog import EventLog, EventLogError, utc_now

if TYPE_CHECKING:
    from training.labels.labelling import LabelQueue

PATH = "/dashboard/label"
CSRF_MESSAGE = b"mailroute-dashboard-labelling-csrf"
RESULT_MESSAGE = b"mailroute-dashboard-labelling-result\x00"
MAX_FORM_BYTES = 256 * 1024  # two lists of at most PAGE_ROWS rows, each with its ids and a select
MAX_RESULT_CHARS = 500
PAGE_ROWS = 100
SINCE_DAYS = 7  # emails routed this recently are listed
MAX_AGENT_CHARS = 100  # as training.labels.labelling's, which refuses a longer name
MAX_QUERY_CHARS = 200
DEFAULT_AGENT = "dashboard"
router = APIRouter()


@dataclass(frozen=True)
class LabellingPage:
    generated: str
    home: str
    store: str
    query: str
    agent: str
    batch: LabelQueue | None  # None: no store, or it could not be read (`note` says which)
    queues: list[str]  # the taxonomy, offered in every select
    triage_queue: str
    csrf: str | None  # the form's token; None when there is no form
    result: str | None  # the last POST's result, when its signature holds
    note: str | None


def _key(sources: DashboardSources, viewer: Principal) -> bytes:
    return viewer.key.encode() if viewer.key else sources.secret()


def csrf_token(sources: DashboardSources, viewer: Principal) -> str:
    """The hidden token every labelling form carries: HMAC-SHA256 of a fixed string, keyed by the viewer's token."""
    return hmac.new(_key(sources, viewer), CSRF_MESSAGE, hashlib.sha256).hexdigest()


def _result_signature(sources: DashboardSources, viewer: Principal, text: str) -> str:
    return hmac.new(_key(sources, viewer), RESULT_MESSAGE + text.encode(), hashlib.sha256).hexdigest()


def _queues(sources: DashboardSources) -> QueuesConfig:
    return sources.queues or load_queues((sources.config_dir or config_dir()) / "queues.yaml")


def gather_labelling(
    sources: DashboardSources,
    viewer: Principal,
    *,
    query: str | None = None,
    agent: str | None = None,
    result: str | None = None,
) -> LabellingPage:
    """What the labelling page shows; a part that cannot be read becomes the page's note."""
    from training.labels.labelling import LabellingError, next_batch

    batch, names, triage, note = None, [], "triage", None
    store = sources.event_log
    try:
        queues = _queues(sources)
        names, triage = queues.names, queues.triage_queue
        if store is None:
            note = f"No event log yet at {sources.store_label}: nothing has been routed, so there is nothing to label."
        else:
            # Bounded like the rest of the dashboard: the newest week, so a big log is never scanned whole.
            since = (clock.now() - timedelta(days=SINCE_DAYS)).isoformat()
            batch = next_batch(store, queues, n=PAGE_ROWS, query=query, since=since)
    except (ConfigError, OSError) as err:
        note = f"The queues could not be read: {err}"
    except LabellingError as err:
        note = str(err)
    except EventLogError as err:
        note = f"Could not read the event log: {err}"
    return LabellingPage(
        generated=utc_now(),
        home=str(sources.home.root),
        store=sources.store_label,
        query=(query or "").strip(),
        agent=agent or DEFAULT_AGENT,
        batch=batch,
        queues=names,
        triage_queue=triage,
        csrf=csrf_token(sources, viewer) if batch is not None else None,
        result=result,
        note=note,
    )


@router.get(PATH, response_class=HTMLResponse, include_in_schema=False)
def labelling_page(
    request: Request,
    viewer: Labeller,
    q: str | None = None,
    agent: str | None = None,
    result: str | None = None,
    sig: str = "",
) -> HTMLResponse:
    sources = _sources(request)
    shown = None
    if result and sources.event_log is not None and len(result) <= MAX_RESULT_CHARS:
        expected = _result_signature(sources, viewer, result)
        shown = result if hmac.compare_digest(sig.encode(), expected.encode()) else None
    agent = _agent(viewer, agent)
    page = gather_labelling(sources, viewer, query=q, agent=agent, result=shown)
    html = environment().get_template("labelling.html").render(page=page, viewer=viewer)
    return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})


def _cross_site(request: Request) -> bool:
    """Whether the browser says the request came from another site: Origin naming another host, or Sec-Fetch-Site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:  # not every client sends one; the token still has to match
        return False
    netloc = urlsplit(origin).netloc
    return not netloc or netloc.lower() != request.headers.get("host", "").lower()


def _refuse(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message, status_code=status, headers={"Content-Security-Policy": PAGE_CSP})


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The url-encoded form, or None when the body is over MAX_FORM_BYTES."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _assignments(form: dict[str, list[str]]) -> list[tuple[str, str]] | str:
    """The (request_id, queue) pairs the pressed button asks for, or why there are none."""
    first = {name: values[0] for name, values in form.items()}
    if "assign" in first:  # one row's button: its value is the row's request_id
        request_id = first["assign"]
        return [(request_id, first.get(f"queue:{request_id}", ""))]
    if "assign_selected" in first:
        picked = list(dict.fromkeys(form.get("pick", [])))
        if not picked:
            return "nothing labelled: no email was ticked"
        if len(picked) > 2 * PAGE_ROWS:
            return f"nothing labelled: at most {2 * PAGE_ROWS} emails at once"
        return [(request_id, first.get("bulk_queue", "")) for request_id in picked]
    return "nothing labelled: no assign button was pressed"


def _label(sources: DashboardSources, store: EventLog, pairs: list[tuple[str, str]], agent: str) -> str:
    from training.labels.labelling import LabellingError, assign

    try:
        if any(not queue for _, queue in pairs):
            raise LabellingError("choose a queue first; nothing labelled")
        return assign(store, _queues(sources), pairs, agent_id=agent).summary()
    except (LabellingError, ConfigError, EventLogError) as err:
        return f"not labelled: {err}"


def _agent(viewer: Principal, named: str | None) -> str:
    """Who the labels are recorded as: the token's holder; only with authentication off, the name typed in."""
    if viewer.key:
        return viewer.holder[:MAX_AGENT_CHARS]
    return (named or "").strip()[:MAX_AGENT_CHARS] or DEFAULT_AGENT


@router.post(PATH, include_in_schema=False)
async def label(request: Request, viewer: Labeller) -> Response:
    sources = _sources(request)
    store = sources.event_log
    if _cross_site(request):
        return _refuse(403, "refused: this form may only be sent from the dashboard's own pages")
    if store is None:
        return _refuse(409, "nothing has been routed yet: there is nothing to label")
    form = await _form(request)
    if form is None:
        return _refuse(413, f"refused: the form is over {MAX_FORM_BYTES} bytes")
    token = await asyncio.to_thread(csrf_token, sources, viewer)
    if not hmac.compare_digest(form.get("csrf", [""])[0].encode(), token.encode()):
        return _refuse(403, "refused: the form's token is missing or wrong; reload the labelling page and try again")
    agent = _agent(viewer, form.get("agent", [""])[0])
    pairs = _assignments(form)
    # A plain thread for the store writes, as the GET handlers run on FastAPI's pool: never block the event loop.
    result = pairs if isinstance(pairs, str) else await asyncio.to_thread(_label, sources, store, pairs, agent)
    result = " ".join(result.split())[:MAX_RESULT_CHARS]
    back = {"q": form.get("q", [""])[0][:MAX_QUERY_CHARS], "agent": agent[:MAX_AGENT_CHARS], "result": result}
    back["sig"] = await asyncio.to_thread(_result_signature, sources, viewer, result)
    return RedirectResponse(f"{PATH}?{urlencode({k: v for k, v in back.items() if v})}", status_code=303)
