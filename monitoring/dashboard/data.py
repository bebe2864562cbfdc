"""What the dashboard shows, gathered from the files alone: the home folder, the event log and the configs.

Every read is bounded so the page stays fast on a big log: log lines, flagged emails and verdicts are read newest
first with a LIMIT along an index, the audit log from the tail of its file, and a search is two primary-key lookups
plus one indexed log query. Nothing here loads the whole log. A part that cannot be read (no event log yet, a
broken config, a model missing from the registry) becomes a sentence on the page, never an error page.

Where each part comes from:
- experiment: the running app's live config when served by the app; else the running layout `serving.ops.state`
  saves in the event store, when it is the configured experiment, else `configs/experiments.yaml`; the model
  versions from the registry; changes (the audit log) and the rollout from the event store
  (`monitoring.dashboard.changes`);
- experiment report: `experiments.analysis.report` (KPIs, intervals, SRM, guardrails, recommendation);
- drift: the store's monitoring verdict rows, with links to the report files under `<home>/reports`;
- logs: the store's `logs` table (every component's warnings, kept there by `serving.store.loghandler`), and the
  predictions table for fallbacks and low-confidence emails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from experiments.config import ExperimentConfig, load_experiments
from experiments.rollout.state import RolloutState
from monitoring.dashboard.changes import AuditEntry, read_audit, read_rollout
from serving import clock
from serving.auth import TokenStore, resolve_user_salt
from serving.config import ConfigError, Home, QueuesConfig, ServingConfig, config_dir, load_queues, load_serving
from serving.ops.state import load_state
from serving.policy import LOW_CONFIDENCE, NO_RULE
from serving.store.eventlog import (
    EventLog,
    EventLogError,
    FeedbackEvent,
    LogRecord,
    MonitorVerdict,
    PredictionEvent,
    open_event_log,
    url_label,
    utc_now,
)
from serving.store.location import event_log_url, is_shared, sqlite_path

log = logging.getLogger(__name__)

LOG_LIMIT = 200  # recent warnings and errors shown
FLAGGED_LIMIT = 50  # fallbacks and low-confidence emails shown
FLAGGED_DAYS = 7  # ... from this many days back: bounds the index scan when flagged emails are rare
SEARCH_LOG_LIMIT = 500  # log lines shown for one email
VERDICT_LIMIT = 500  # verdict rows read (latest per check + history)
HISTORY_LIMIT = 60  # verdict rows listed in the history table
MAX_QUERY_CHARS = 200
LOG_LEVEL_CHOICES = ("WARNING", "ERROR", "INFO")
REPORTS_URL = "/dashboard/reports/"
REPORT_TTL_S = 60.0  # the experiment report aggregates the whole window in SQL: build it at most once a minute


# ---- values the template renders ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmView:
    name: str
    weight: float
    share: float  # of all users, from the bucket ranges (weight x coverage unless the layout was pinned)
    model: str
    version: str  # as configured: champion, latest or a version id
    resolved: str | None  # "linear:v3 (champion)", from the registry
    problem: str | None = None


@dataclass(frozen=True)
class ExperimentView:
    name: str
    source: str  # where the config was read
    active: bool
    coverage: float
    holdout_arm: str
    fallback_order: list[str] | None
    shadow: str | None
    arms: list[ArmView]


@dataclass(frozen=True)
class VerdictRow:
    verdict: MonitorVerdict
    report_url: str | None  # a link under /dashboard/reports/, or None when the file is not there


@dataclass(frozen=True)
class DriftView:
    latest: list[VerdictRow]  # the newest run's row of every (job, scope, check)
    history: list[VerdictRow]
    plot: str | None  # data: URI of a PNG
    last_run: str | None


@dataclass(frozen=True)
class SearchView:
    query: str
    prediction: PredictionEvent | None = None
    feedback: FeedbackEvent | None = None
    logs: list[LogRecord] = field(default_factory=list)
    message: str | None = None  # why nothing (or not everything) was found


@dataclass(frozen=True)
class ReportView:
    report: Any  # experiments.analysis.report.ExperimentReport
    trends: str | None  # data: URI of the daily trend plots
    built: str  # when it was built (it is cached for REPORT_TTL_S)


@dataclass(frozen=True)
class LogFilter:
    level: str = "WARNING"
    component: str | None = None


@dataclass(frozen=True)
class Page:
    generated: str
    home: str
    store: str
    experiment: ExperimentView | None
    experiment_note: str | None
    audit: list[AuditEntry]
    rollout: RolloutState | None  # the last rollout, running or finished
    rollout_note: str | None  # why the rollout file could not be read
    report: ReportView | None
    report_note: str | None
    drift: DriftView
    logs: list[LogRecord]
    log_filter: LogFilter
    components: list[str]
    flagged: list[PredictionEvent]
    search: SearchView | None
    notes: list[str]  # parts that could not be read, in words


# ---- sources --------------------------------------------------------------------------------------------------------
@dataclass
class DashboardSources:
    """Where the page reads from. The Serve app hands in its own event log and its live experiment."""

    home: Home
    event_log: EventLog | None  # None: no event log has been written yet
    store_label: str
    config_dir: Path | None = None
    live_experiment: Callable[[], ExperimentConfig | None] | None = None
    queues: QueuesConfig | None = None
    report_ttl_s: float = REPORT_TTL_S
    # Who may open which page (monitoring.dashboard.routes). None only in tests that build sources by hand: the page
    # is then open, as with authentication off; the Serve app and `mailroute dashboard` always set one.
    tokens: TokenStore | None = None
    # False inside the Serve app: the page shows the scheduled KPI job's latest report instead of building one in
    # a router replica (a build reads the whole log: seconds of CPU beside the routing path).
    build_report: bool = True
    # The server-side secret of session cookies and labelling forms: the user salt, resolved as the router resolves
    # it (environment, secrets file, the home's file unless the store is shared); None: resolved on first use, with
    # `serving`'s settings.
    server_secret: str | None = field(default=None, repr=False)
    serving: ServingConfig | None = None
    _report_cache: dict[str, tuple[float, ReportView]] = field(default_factory=dict, repr=False)
    _report_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.store_label = url_label(self.store_label)  # a PostgreSQL URL may carry a password: never show it

    @classmethod
    def from_files(cls, home: Home, configs: Path | None = None) -> DashboardSources:
        """For `mailroute dashboard`: no Ray, no server, the files only. A missing SQLite file is not created."""
        configs = configs or config_dir()
        serving = ServingConfig()
        try:
            serving = load_serving(configs / "serving.yaml")
        except (ConfigError, OSError) as err:
            log.warning("dashboard: using the default event log (%s)", err)
        tokens = TokenStore(serving, home)  # a secrets file that does not parse is a ConfigError, not an open page
        url = event_log_url(serving, home)
        path = sqlite_path(url)
        if path is not None and not path.exists():
            return cls(home, None, f"{path} (not created yet)", configs, tokens=tokens, serving=serving)
        return cls(home, open_event_log(url), url, configs, tokens=tokens, serving=serving)

    def secret(self) -> bytes:
        if self.server_secret is None:
            shared = self.event_log is not None and is_shared(self.event_log, 1)
            serving = self.serving or ServingConfig()
            self.server_secret = resolve_user_salt(serving, self.home, self.tokens, shared=shared)
        return self.server_secret.encode()


# ---- the page -------------------------------------------------------------------------------------------------------
def gather(
    sources: DashboardSources, *, query: str | None = None, level: str | None = None, component: str | None = None
) -> Page:
    notes: list[str] = []
    config, experiment_source, experiment_note = _experiment_config(sources)
    experiment = None if config is None else _experiment_view(sources.home, config, experiment_source)
    log_filter = LogFilter(level if level in LOG_LEVEL_CHOICES else "WARNING", component or None)
    report, report_note = _report(sources, config)
    rollout, rollout_note = read_rollout(sources.event_log)
    store = sources.event_log
    logs: list[LogRecord] = []
    flagged: list[PredictionEvent] = []
    audit: list[AuditEntry] = []
    drift = DriftView([], [], None, None)
    if store is None:
        notes.append(f"No event log yet at {sources.store_label}: nothing has been routed.")
    else:
        try:
            since = (clock.now() - timedelta(days=FLAGGED_DAYS)).isoformat()
            # Bounded in time like the flagged emails, so a filter that matches little never scans the whole table.
            logs = store.logs(since=since, min_level=log_filter.level, component=log_filter.component, limit=LOG_LIMIT)
            flagged = store.flagged_predictions(since=since, reasons=(LOW_CONFIDENCE, NO_RULE), limit=FLAGGED_LIMIT)
            drift = _drift(sources.home, store.verdicts(limit=VERDICT_LIMIT))
            audit = read_audit(store)
        except (EventLogError, OSError) as err:  # a store that went away: say so on the page
            notes.append(f"Could not read the event log: {err}")
    return Page(
        generated=utc_now(),
        home=str(sources.home.root),
        store=sources.store_label,
        experiment=experiment,
        experiment_note=experiment_note,
        audit=audit,
        rollout=rollout,
        rollout_note=rollout_note,
        report=report,
        report_note=report_note,
        drift=drift,
        logs=logs,
        log_filter=log_filter,
        components=_components(experiment),
        flagged=flagged,
        search=search(store, query) if query is not None and query.strip() else None,
        notes=notes,
    )


def search(store: EventLog | None, query: str) -> SearchView:
    """One email by its request_id or email_id: its prediction, its feedback and every component's lines about it."""
    q = query.strip()
    if len(q) > MAX_QUERY_CHARS:
        return SearchView(q[:MAX_QUERY_CHARS] + "…", message=f"An id is at most {MAX_QUERY_CHARS} characters.")
    if store is None:
        return SearchView(q, message="There is no event log yet, so no email can be found.")
    prediction = store.get_prediction(q) or store.find_by_email_id(q)
    if prediction is None:
        # Lines may name an email whose record never arrived (a crash lost the buffer): show them anyway.
        lines = store.logs(min_level="DEBUG", request_id=q, email_id=q, limit=SEARCH_LOG_LIMIT)
        found = f" {len(lines)} log line(s) mention it." if lines else ""
        return SearchView(q, logs=lines, message=f"No email has request_id or email_id '{q}'.{found}")
    lines = store.logs(
        min_level="DEBUG", request_id=prediction.request_id, email_id=prediction.email_id, limit=SEARCH_LOG_LIMIT
    )
    return SearchView(q, prediction, store.get_feedback(prediction.request_id), lines)


def _components(experiment: ExperimentView | None) -> list[str]:
    arms = [f"arm-{a.name}" for a in experiment.arms] if experiment else []
    shadow = ["shadow"] if experiment and experiment.shadow else []
    return ["router", *arms, *shadow, "event-writer", "monitor"]


# ---- the experiment -------------------------------------------------------------------------------------------------
def _configs(sources: DashboardSources) -> Path:
    return sources.config_dir or config_dir()


def _experiment_config(sources: DashboardSources) -> tuple[ExperimentConfig | None, str, str | None]:
    """The running experiment, where it was read, and why none could be read."""
    config, source, problem = None, "", None
    if sources.live_experiment is not None:
        config, source = sources.live_experiment(), "the running app"
    if config is None:
        configs = _configs(sources)
        try:
            configured = load_experiments(configs / "experiments.yaml").experiment
        except (ConfigError, OSError) as err:
            configured, problem = None, f"experiments.yaml: {err}"
        saved = None
        if configured is not None and sources.event_log is not None:
            try:
                saved = load_state(sources.event_log, configured)
            except EventLogError as err:  # the store went away: the file's layout, said to be only that
                problem = f"the saved layout could not be read ({' '.join(str(err).split())[:200]})"
        if saved is not None:
            config = saved
            source = "the saved layout (event store)" if config is not configured else str(configs / "experiments.yaml")
        elif configured is not None:
            config, source = configured, str(configs / "experiments.yaml")
            if problem:  # the page must not pass the file's layout off as what runs
                source = f"{source}; {problem}"
    if config is None:
        return None, "", f"No experiment could be read ({problem or 'no config'})."
    return config, source, None


def _experiment_view(home: Home, config: ExperimentConfig, source: str) -> ExperimentView:
    from serving.models.registry import RegistryError, open_registry

    registry = open_registry(home)
    shares: dict[str, float] = {}
    for r in config.ranges():
        shares[r.arm] = shares.get(r.arm, 0.0) + (r.end - r.start)
    arms = []
    for name, spec in config.arms.items():
        resolved, problem = None, None
        try:
            info = registry.get(f"{spec.model}:{spec.version}", verify=False)
            resolved = f"{info.meta.name}:{info.meta.version} ({info.stage})"
        except (RegistryError, OSError) as err:
            problem = f"not in the registry: {' '.join(str(err).split())[:200]}"
        arms.append(ArmView(name, spec.weight, shares.get(name, 0.0), spec.model, spec.version, resolved, problem))
    shadow = config.shadow
    return ExperimentView(
        name=config.name,
        source=source,
        active=config.active,
        coverage=config.coverage,
        holdout_arm=config.holdout_arm,
        fallback_order=config.fallback_order,
        shadow=None if shadow is None else f"{shadow.model}:{shadow.version} on {shadow.sample_rate:.0%} of requests",
        arms=arms,
    )


# ---- the experiment report -------------------------------------------------------------------------------------
def _report(sources: DashboardSources, experiment: ExperimentConfig | None) -> tuple[ReportView | None, str | None]:
    """`experiments.analysis.report.build_report` over the whole log, cached for `report_ttl_s`; else a sentence
    saying why."""
    try:
        from experiments.analysis.report import build_report
    except ImportError:
        return None, "No experiment report yet: the experiment analysis is not installed."
    store = sources.event_log
    if store is None:
        return None, "No experiment report yet: nothing has been routed."
    url = store.sql_url
    if url is None:
        return None, "No experiment report for an event log without SQL (the memory store)."
    if experiment is None:
        return None, "No experiment report: no experiment could be read."
    if not sources.build_report:
        return _stored_report(sources)
    key = experiment.model_dump_json()
    with sources._report_lock:  # one build at a time; the others wait for it and read the cache
        cached = sources._report_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < sources.report_ttl_s:
            return cached[1], None
        try:
            analysis = _analysis(sources)
            queues = sources.queues or load_queues(_configs(sources) / "queues.yaml")
            report = build_report(
                url,
                experiment=experiment,
                analysis=analysis,
                queues=queues,
            )
        except Exception as err:  # the rest of the page must render whatever the analysis does
            log.warning("dashboard: the experiment report failed: %s: %s", type(err).__name__, err)
            return None, f"The experiment report could not be built: {' '.join(str(err).split())[:300]}"
        from monitoring.dashboard.plots import daily_trends

        view = ReportView(report, daily_trends(report), utc_now())
        sources._report_cache.clear()
        sources._report_cache[key] = (time.monotonic(), view)
        return view, None


def _stored_report(sources: DashboardSources) -> tuple[ReportView | None, str | None]:
    """The newest report of the scheduled KPI job (monitoring.kpi_job), read once per file."""
    from experiments.analysis.report import ExperimentReport
    from monitoring.kpi_job import latest_report_file

    path = latest_report_file(sources.home)
    if path is None:
        return None, (
            "No experiment report yet: the scheduled KPI job writes one (monitoring.yaml: schedule.kpi_report_every, "
            "first run schedule.first_run_after the server starts); `mailroute experiment report` prints one now."
        )
    key = str(path)
    with sources._report_lock:
        cached = sources._report_cache.get(key)
        if cached is not None:
            return cached[1], None
        try:
            report = ExperimentReport.from_json(path.read_bytes())
        except (OSError, ValueError) as err:
            return (
                None,
                f"The latest experiment report ({path.name}) could not be read: {' '.join(str(err).split())[:200]}",
            )
        from monitoring.dashboard.plots import daily_trends

        view = ReportView(report, daily_trends(report), report.as_of)
        sources._report_cache.clear()
        sources._report_cache[key] = (time.monotonic(), view)
        return view, None


def _analysis(sources: DashboardSources) -> Any:
    from experiments.analysis.config import AnalysisConfig

    try:
        file = load_experiments(_configs(sources) / "experiments.yaml")
    except (ConfigError, OSError):
        return AnalysisConfig()
    return getattr(file, "analysis", None) or AnalysisConfig()


# ---- drift --------------------------------------------------------------------------------------------------------
def _drift(home: Home, verdicts: list[MonitorVerdict]) -> DriftView:
    from monitoring.dashboard.plots import score_history

    rows = [VerdictRow(v, report_url(home, v.report)) for v in verdicts]
    latest: dict[tuple[str, str, str], VerdictRow] = {}
    for row in rows:  # newest run first: the first row of a check is its latest
        v = row.verdict
        latest.setdefault((v.job, v.scope, v.check), row)
    ordered = sorted(latest.values(), key=lambda r: (not r.verdict.alarm, r.verdict.scope, r.verdict.check))
    return DriftView(
        latest=ordered,
        history=rows[:HISTORY_LIMIT],
        plot=score_history(verdicts) if verdicts else None,
        last_run=verdicts[0].ts if verdicts else None,
    )


def report_url(home: Home, path: str | None) -> str | None:
    """The dashboard link of a report file, if it lies under `<home>/reports` and exists; else None."""
    if not path or "\x00" in path:  # a path no file can have (and that the os module refuses with an error)
        return None
    candidate = Path(path)
    base = home.reports.resolve()
    for full in [candidate] if candidate.is_absolute() else [home.reports / candidate, home.root / candidate]:
        resolved = full.resolve()
        if resolved.is_relative_to(base) and resolved.is_file():
            return REPORTS_URL + quote(resolved.relative_to(base).as_posix())
    return None


def report_file(home: Home, relative: str) -> Path | None:
    """The file under `<home>/reports` a dashboard link names; None for anything outside it or missing."""
    base = home.reports.resolve()
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        return None
    target = (base / relative).resolve()  # resolves `..` and symlinks before the check
    return target if target.is_relative_to(base) and target.is_file() else None
