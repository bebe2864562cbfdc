"""The experiment report on real SQLite event logs: KPI arithmetic worked by hand, counts that add up to the
emails clients sent (through a real RouterCore), days cut in a time zone across DST, time-weighted SRM from the
audit log, and every empty or bad input as words rather than a crash or a NaN."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from experiments.analysis.config import AnalysisConfig
from experiments.analysis.days import ReportInputError, local_days, parse_time
from experiments.analysis.render import counts_csv, plot_daily, render_html, render_text
from experiments.analysis.report import ExperimentReport, build_report
from experiments.analysis.stats import srm_test
from experiments.analysis.weights_history import expected_shares, read_changes, segments
from experiments.config import ExperimentConfig
from serving.api import RouteRequest
from serving.config import ConfigError, Home, ServingConfig, load_queues, parse_config
from serving.router import ArmAnswer, RouterCore
from serving.store.eventlog import EventLog, FeedbackEvent, PredictionEvent
from serving.store.postgres import PostgresEventLog
from serving.store.sqlite import SQLiteEventLog
from serving.store.writer import BufferedWriter

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
QUEUES = load_queues(ROOT / "configs" / "queues.yaml")
AS_OF = datetime(2026, 3, 10, 12, tzinfo=UTC)  # implicit cut-off (48 h): 2026-03-08T12:00Z


def experiment(**extra: Any) -> ExperimentConfig:
    data = {
        "name": "exp",
        "salt": "s1",
        "arms": {"linear": {"model": "linear", "weight": 0.5}, "transformer": {"model": "transformer", "weight": 0.5}},
        "holdout_arm": "linear",
        "control": "linear",
        **extra,
    }
    return ExperimentConfig.model_validate(data)


_n = 0


def pred(ts: str, user: str, arm: str, queue: str, **kw: Any) -> PredictionEvent:
    global _n
    _n += 1
    fields: dict[str, Any] = {
        "request_id": f"r{_n}", "ts": ts, "user_key": user, "arm": arm, "model_name": arm, "model_version": "v1",
        "queue": queue, "confidence": 0.9, "fallback": False, "reason": "confident", "latency_ms": 10.0,
        "experiment": "exp", "in_experiment": True,
    } | kw  # fmt: skip
    return PredictionEvent(**fields)


def report(log: EventLog, exp: ExperimentConfig | None = None, **kw: Any) -> ExperimentReport:
    args: dict[str, Any] = {"experiment": exp or experiment(), "analysis": AnalysisConfig(), "queues": QUEUES,
                            "as_of": AS_OF} | kw  # fmt: skip
    url = log.sql_url
    assert url is not None
    return build_report(url, **args)


def no_nan(r: ExperimentReport) -> None:
    text = render_text(r)
    assert not re.search(r"\bnan\b", text.lower())
    json.loads(r.to_json())  # allow_nan=False: raises on any NaN
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", render_html(r))
    assert not re.search(r"\bnan\b", page.lower())


@pytest.fixture(params=["sqlite", "postgresql"])
def hand_log(request: pytest.FixtureRequest, tmp_path: Path) -> EventLog:
    """The worked example of experiments.analysis.kpi for the linear arm, plus four correct transformer emails; in
    the SQLite file and in a real PostgreSQL server (the report's SQL aggregates in either)."""
    log: EventLog
    if request.param == "sqlite":
        log = SQLiteEventLog(tmp_path / "events.db")
    else:
        log = PostgresEventLog(request.getfixturevalue("postgres").fresh_url())
    lin = [
        pred("2026-03-01T10:00:00+00:00", "u1", "linear", "billing"),  # agent confirms: correct
        pred("2026-03-01T11:00:00+00:00", "u1", "linear", "billing"),  # old, no feedback: implicitly correct
        pred("2026-03-02T10:00:00+00:00", "u2", "linear", "billing"),  # implicitly correct
        pred("2026-03-02T11:00:00+00:00", "u2", "linear", "billing"),  # corrected to shipping: misroute
        pred("2026-03-09T10:00:00+00:00", "u3", "linear", "technical"),  # younger than 48 h: pending
        pred("2026-03-09T11:00:00+00:00", "u3", "linear", "technical"),  # pending
        pred("2026-03-09T12:00:00+00:00", "u4", "linear", "account"),  # pending
        pred("2026-03-09T13:00:00+00:00", "u4", "linear", "account"),  # pending
        pred(
            "2026-03-03T10:00:00+00:00",
            "u1",
            "linear",
            "triage",
            reason="low_confidence",
            confidence=0.4,
            secondary_queue="billing",
        ),
        pred(
            "2026-03-03T11:00:00+00:00",
            "u4",
            "linear",
            "triage",
            reason="all_arms_failed:linear_error",
            fallback=True,
            confidence=0.0,
            model_name="none",
            model_version="none",
        ),
    ]
    tra = [pred(f"2026-03-0{d}T09:00:00+00:00", f"u{4 + d}", "transformer", "sales") for d in (1, 2, 3, 4)]
    log.record_predictions(lin + tra)
    log.record_feedback(FeedbackEvent(lin[0].request_id, "2026-03-01T12:00:00+00:00", "billing"))
    log.record_feedback(FeedbackEvent(lin[3].request_id, "2026-03-02T12:00:00+00:00", "shipping"))
    log.record_feedback(FeedbackEvent(lin[8].request_id, "2026-03-03T12:00:00+00:00", "billing"))
    # Recorded after the as-of time: ignored (the report is as known at as-of).
    log.record_feedback(FeedbackEvent(lin[1].request_id, "2026-03-11T12:00:00+00:00", "general"))
    return log


def test_kpi_and_saving_arithmetic_on_a_hand_built_log(hand_log: EventLog) -> None:
    r = report(hand_log)
    lin = r.arm("linear")
    assert lin is not None and (lin.emails, lin.users) == (10, 4)
    v = {k: iv.estimate for k, iv in lin.values.items()}
    # 8 auto-routed, 2 to triage; judged: 1 confirmed + 2 implicitly correct + 1 corrected = 4; 4 pending.
    assert v["auto_route_coverage"] == pytest.approx(0.8) and v["triage_rate"] == pytest.approx(0.2)
    assert v["fallback_rate"] == pytest.approx(0.1) and v["error_rate"] == pytest.approx(0.1)
    assert v["accuracy"] == pytest.approx(3 / 4) and v["misroute_rate"] == pytest.approx(1 / 4)
    assert v["judged_share"] == pytest.approx(4 / 8)
    assert v["feedback_coverage"] == pytest.approx(3 / 10)  # the late feedback does not count
    assert v["correction_share"] == pytest.approx(1 / 2)  # auto-routed with feedback: 1 confirmed, 1 corrected
    assert v["triage_guess_accuracy"] == pytest.approx(1.0)  # the triaged email's guess (billing) was right
    # Savings: 3 correct billing x 2.5 min = 7.5 over 4 judged, scaled by 8/10 auto-routed -> 1.5 min per email.
    assert v["minutes_saved"] == pytest.approx(8 / 10 * 7.5 / 4)
    # The misroute's true queue is shipping: 3.5 EUR at 36 EUR/h = 5.8333 min; 8/10 x 5.8333/4 = 1.1667.
    assert v["misroute_minutes"] == pytest.approx(8 / 10 * (3.5 * 60 / 36) / 4)
    assert v["triage_minutes"] == pytest.approx(3.0 * 2 / 10)
    assert v["net_saving"] == pytest.approx(1.5 - 7 / 6 - 0.6)  # -0.2667 min per email
    assert v["net_saving_money"] == pytest.approx((1.5 - 7 / 6 - 0.6) * 36 / 60)  # -0.16 EUR
    assert lin.values["net_saving_total"].estimate == pytest.approx(10 * (1.5 - 7 / 6 - 0.6))
    # Accuracy's interval by hand: users' (correct, judged) = (2,2), (1,2), (0,0), (0,0); r = 3/4;
    # residuals 0.5, -0.5, 0, 0; Var = 4/3 x 0.5 / 4^2 = 1/24.
    assert lin.values["accuracy"].se == pytest.approx((1 / 24) ** 0.5)
    assert lin.latency_ms["p50"] == pytest.approx(10.0, rel=0.01)
    tra = r.arm("transformer")
    assert tra is not None and tra.values["accuracy"].estimate == pytest.approx(1.0)
    comp = r.comparisons[0]
    assert comp.challenger == "transformer" and comp.accuracy.fixed.estimate == pytest.approx(1 / 4)
    # 14 emails, 6 users: far below min_verdicts, so the recommendation says so in words.
    assert r.recommendation.action == "keep running" and "too few emails with a verdict" in r.recommendation.sentence
    no_nan(r)
    assert ExperimentReport.from_json(r.to_json()) == r  # what the dashboard reads back from the KPI job


def test_audit_policy_judges_only_audited_emails(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    ps = [pred(f"2026-03-01T0{h}:00:00+00:00", f"u{h}", "linear", "billing") for h in range(6)]
    log.record_predictions(ps)
    log.record_feedback(FeedbackEvent(ps[0].request_id, "2026-03-01T10:00:00+00:00", "billing", source="audit"))
    log.record_feedback(FeedbackEvent(ps[1].request_id, "2026-03-01T10:00:00+00:00", "sales", source="audit"))
    log.record_feedback(FeedbackEvent(ps[2].request_id, "2026-03-01T10:00:00+00:00", "sales"))  # agent: ignored
    audit = report(log, analysis=AnalysisConfig(feedback_policy="audit")).arm("linear")
    implicit = report(log).arm("linear")
    assert audit is not None and implicit is not None
    assert audit.values["accuracy"].estimate == pytest.approx(1 / 2)  # 2 audited, 1 correct
    assert implicit.values["accuracy"].estimate == pytest.approx(4 / 6)  # 3 explicit (1 right, 2 wrong) + 3 implicit
    assert implicit.values["audit_accuracy"].estimate == pytest.approx(1 / 2)


def _router(log: SQLiteEventLog, arms: Any) -> RouterCore:
    return RouterCore(
        queues=QUEUES,
        serving=ServingConfig.model_validate({"model_timeout_s": 0.2}),
        experiment=experiment(),
        event_log=log,
        writer=BufferedWriter(log, flush_interval_ms=5),
        call_arm=arms,
        user_salt="salt",
    )


def test_daily_total_equals_the_distinct_emails_sent_through_a_real_router(tmp_path: Path) -> None:
    labels = tuple(QUEUES.names)
    state: dict[str, Any] = {"fail": set(), "sure": True}

    async def arms(arm: str, text: str) -> ArmAnswer:
        if arm in state["fail"]:
            raise RuntimeError("model down")
        top = 0.9 if state["sure"] else 0.3
        proba = [top] + [(1 - top) / (len(labels) - 1)] * (len(labels) - 1)
        return ArmAnswer(labels, tuple(proba), arm, "v1")

    log = SQLiteEventLog(tmp_path / "events.db")
    core = _router(log, arms)
    sent: set[str] = set()  # distinct emails: an email_id, or a request without one

    async def run() -> None:
        for i in range(40):
            user = f"user{i % 13}"
            state["fail"] = {"transformer"} if i % 7 == 0 else ({"linear", "transformer"} if i % 11 == 0 else set())
            state["sure"] = i % 5 != 0
            email_id = f"mail-{i % 25}" if i % 2 == 0 else None  # even requests repeat email ids 0..24
            req = RouteRequest.model_validate({"user_id": user, "subject": "s", "body": f"b{i}", "email_id": email_id})
            await core.route(req)
            sent.add(email_id if email_id is not None else f"no-id-{i}")
        await core.close()

    asyncio.run(run())
    now = datetime.now(UTC)
    r = report(log, since=now - timedelta(hours=1), until=now + timedelta(minutes=1), as_of=now + timedelta(minutes=1))
    assert sum(r.daily_totals().values()) == len(sent) == log.stats().predictions
    for row in r.counts:
        assert row.auto_routed + row.sent_to_triage + row.fallback == row.emails
    fallback = sum(row.fallback for row in r.counts)
    assert fallback == log.stats().predictions - sum(row.auto_routed + row.sent_to_triage for row in r.counts) > 0
    assert sum(row.sent_to_triage for row in r.counts) > 0 and sum(row.auto_routed for row in r.counts) > 0
    csv_text = counts_csv(r)
    assert csv_text.splitlines()[0] == "day,partial_day,queue,emails,auto_routed,sent_to_triage,fallback"
    assert sum(int(line.split(",")[3]) for line in csv_text.splitlines()[1:]) == len(sent)
    no_nan(r)


def test_days_in_a_time_zone_are_23_and_25_hours_on_dst_changes() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    spring = local_days(datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC), berlin)
    assert [(d.day, d.full_hours, d.partial) for d in spring] == [("2026-03-29", 23.0, False)]
    assert spring[0].lo == "2026-03-28T23:00:00.000000+00:00" and spring[0].hi == "2026-03-29T22:00:00.000000+00:00"
    autumn = local_days(datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC), berlin)
    assert [(d.day, d.full_hours) for d in autumn] == [("2026-10-25", 25.0)]
    cut = local_days(datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2026, 3, 3, 12, tzinfo=UTC), berlin)
    assert [(d.day, d.partial, round(d.hours, 1)) for d in cut] == [
        ("2026-03-01", True, 17.0), ("2026-03-02", False, 24.0), ("2026-03-03", True, 13.0)
    ]  # fmt: skip
    assert parse_time("2026-03-29", berlin, AS_OF) == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert parse_time("7d", berlin, AS_OF) == AS_OF - timedelta(days=7)


def test_emails_fall_on_their_local_day_and_a_cut_day_is_reported(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    log.record_predictions([
        pred("2026-03-28T22:30:00+00:00", "u1", "linear", "billing"),  # 23:30 CET: the 28th
        pred("2026-03-28T23:30:00+00:00", "u2", "linear", "billing"),  # 00:30 CET: the 29th
        pred("2026-03-29T21:30:00+00:00", "u3", "linear", "billing"),  # 23:30 CEST: still the 29th
        pred("2026-03-29T22:30:00+00:00", "u4", "linear", "billing"),  # 00:30 CEST: the 30th
    ])  # fmt: skip
    since, until = datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC)
    r = report(log, analysis=AnalysisConfig(time_zone="Europe/Berlin"), since=since, until=until, as_of=until)
    assert r.daily_totals() == {"2026-03-28": 1, "2026-03-29": 2, "2026-03-30": 1}
    assert any(n.startswith("first day 2026-03-28 is a partial day") for n in r.notes)
    assert any(n.startswith("last day 2026-03-30 is a partial day") for n in r.notes)
    assert any("transformer has no emails" in n for n in r.notes)  # an arm with no traffic, in words
    assert r.recommendations[0].action == "keep running" and "no emails" in r.recommendations[0].sentence
    no_nan(r)


def test_the_default_window_starts_at_the_first_emails_local_midnight_and_ends_now(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    log.record_predictions([pred("2026-03-09T15:30:00+00:00", "u1", "linear", "billing"),
                            pred("2026-03-10T08:00:00+00:00", "u2", "linear", "billing")])  # fmt: skip
    r = report(log)  # as of 2026-03-10T12:00Z
    assert r.since == "2026-03-09T00:00:00.000000+00:00" and r.until == "2026-03-10T12:00:00.000000+00:00"
    assert not any("partial" in n for n in r.notes)  # the first day is whole
    assert "day 2026-03-10 is today: counted up to now (12.0 of 24 hours)" in r.notes
    quiet = report(log, since=datetime(2026, 3, 1, tzinfo=UTC))  # eight days without email before the first
    text = render_text(quiet)
    assert "2026-03-09" in text and "2026-03-02" not in text and "(8 days without email not shown)" in text


def _audit(log: EventLog, ts: datetime, old: dict[str, float], new: dict[str, float]) -> None:
    def exp(w: dict[str, float]) -> dict[str, Any]:
        return experiment(arms={a: {"model": a, "weight": x} for a, x in w.items()}).model_dump(mode="json")

    log.record_audit({"ts": ts.isoformat(), "actor": "test", "kind": "experiment", "old": exp(old), "new": exp(new),
                      "moved_share": 0.3})  # fmt: skip


def test_srm_expectation_follows_the_weights_in_force_when_users_arrived(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    since = datetime(2026, 3, 1, tzinfo=UTC)
    _audit(log, since - timedelta(days=3), {"linear": 0.5, "transformer": 0.5}, {"linear": 0.5, "transformer": 0.5})
    _audit(log, since + timedelta(hours=12), {"linear": 0.5, "transformer": 0.5}, {"linear": 0.8, "transformer": 0.2})
    records = [json.dumps(r) for r in log.audit_records()] + ["not json"]
    changes, notes = read_changes(records, "exp")
    assert len(changes) == 2 and len(notes) == 1 and notes[0].startswith("audit record 3 skipped (JSONDecodeError")
    current = {"linear": 0.8, "transformer": 0.2}
    pieces, words = segments(changes, current, since, since + timedelta(hours=24))
    assert [p.weights for p in pieces] == [{"linear": 0.5, "transformer": 0.5}, current]
    assert "weights changed" in words[0]
    # 1,000 users first seen before noon, 600 after: (1000 x 0.5 + 600 x 0.8) / 1600 = 0.6125 for linear.
    arrivals = [since + timedelta(hours=1)] * 1000 + [since + timedelta(hours=13)] * 600
    shares = expected_shares(pieces, arrivals)
    assert shares == pytest.approx({"linear": 0.6125, "transformer": 0.3875})
    observed = {"linear": 980, "transformer": 620}
    assert not srm_test(observed, shares, 0.001).alarm
    assert srm_test(observed, current, 0.001).alarm
    # Through the report (which reads the store's audit): 400 users, one email each every 3 minutes (240 before noon,
    # 160 after), split 65/35.
    events = []
    for i in range(400):
        arm = "linear" if i % 20 < 13 else "transformer"
        events.append(pred((since + timedelta(minutes=3 * i)).isoformat(), f"u{i}", arm, "billing"))
    log.record_predictions(events)
    exp80 = experiment(arms={"linear": {"model": "linear", "weight": 0.8},
                             "transformer": {"model": "transformer", "weight": 0.2}})  # fmt: skip
    r = report(log, exp80, since=since, until=since + timedelta(hours=24))
    assert r.srm is not None and not r.srm.alarm
    assert r.srm.expected_share == pytest.approx({"linear": 0.62, "transformer": 0.38})  # (240 x .5 + 160 x .8) / 400
    bare = SQLiteEventLog(tmp_path / "no-audit.db")  # the same emails, no record of the change
    bare.record_predictions(events)
    r_static = report(bare, exp80, since=since, until=since + timedelta(hours=24))
    assert r_static.srm is not None and r_static.srm.alarm  # 260/140 against 80/20: p < 0.001


def test_srm_counts_returning_users_once_across_a_weight_change(tmp_path: Path) -> None:
    """Users who write before and after a 50/50 -> 80/20 change, assigned by the real sticky assignment: the users
    moved by the change are in both arms' logs, yet the split is exactly as planned: no alarm."""
    from experiments.assign import choose_arm

    log = SQLiteEventLog(tmp_path / "events.db")
    since = datetime(2026, 3, 1, tzinfo=UTC)
    change = since + timedelta(hours=12)
    _audit(log, change, {"linear": 0.5, "transformer": 0.5}, {"linear": 0.8, "transformer": 0.2})
    before = experiment()
    arms80 = {"linear": {"model": "linear", "weight": 0.8}, "transformer": {"model": "transformer", "weight": 0.2}}
    after = experiment(arms=arms80).pinned(before.ranges())
    events = []
    for i in range(3000):
        user = f"user-{i}"
        for hour in (1 + i % 11, 13 + i % 11):  # one email in each half of the window
            ranges = before.ranges() if hour < 12 else after.ranges()
            arm = choose_arm(before.salt, user, ranges).arm
            assert arm is not None
            events.append(pred((since + timedelta(hours=hour)).isoformat(), user, arm, "billing"))
    log.record_predictions(events)
    r = report(log, after, since=since, until=since + timedelta(hours=24))
    assert r.srm is not None and not r.srm.alarm, r.srm.note
    assert sum(r.srm.observed.values()) == 3000  # each user once
    assert r.srm.expected_share == pytest.approx({"linear": 0.5, "transformer": 0.5})  # every user first came at 50/50


def test_empty_log_gives_a_report_in_words(tmp_path: Path) -> None:
    r = report(SQLiteEventLog(tmp_path / "events.db"))
    assert r.notes == ("the event log is empty: no email has been routed yet",)
    assert r.recommendation.action == "keep running" and r.arms == () and r.srm is None
    assert "the event log is empty" in render_text(r)
    assert plot_daily(r)[:8] == b"\x89PNG\r\n\x1a\n"
    no_nan(r)


def test_window_without_feedback_and_arm_no_longer_in_config(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    log.record_predictions([
        pred("2026-03-09T10:00:00+00:00", "u1", "linear", "billing"),  # pending: no verdict possible
        pred("2026-03-09T10:00:00+00:00", "u2", "transformer", "billing"),
        pred("2026-03-09T11:00:00+00:00", "u3", "retired", "billing"),
    ])  # fmt: skip
    r = report(log, since=datetime(2026, 3, 9, tzinfo=UTC), until=datetime(2026, 3, 10, tzinfo=UTC))
    assert any(n.startswith("no feedback in this window") for n in r.notes)
    assert any("arm retired is in the log but no longer in the experiment's config" in n for n in r.notes)
    lin = r.arm("linear")
    assert lin is not None and lin.values["accuracy"].estimate is None
    assert "n/a" in render_text(r)
    assert r.srm is not None and "retired" not in r.srm.observed
    no_nan(r)


def test_window_with_no_emails_and_window_before_the_log(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    log.record_predictions([pred("2026-03-09T10:00:00+00:00", "u1", "linear", "billing")])
    r = report(log, since=datetime(2026, 1, 1, tzinfo=UTC), until=datetime(2026, 1, 3, tzinfo=UTC))
    assert "no emails in this window" in r.notes and r.daily_totals() == {"2026-01-01": 0, "2026-01-02": 0}
    no_nan(r)
    with pytest.raises(ReportInputError, match="window is empty"):
        report(log, until=datetime(2026, 1, 3, tzinfo=UTC))  # since defaults to the first email, after until


def test_log_text_is_escaped_in_the_html(tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.db")
    log.record_predictions([
        pred("2026-03-01T10:00:00+00:00", "u1", "<script>alert(1)</script>", "billing",
             subject="<script>alert(2)</script>"),
        pred("2026-03-01T10:00:00+00:00", "u2", "linear", "billing"),
    ])  # fmt: skip
    page = render_html(report(log))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page


def test_bad_since_is_one_line_and_the_report_command_writes_its_files(tmp_path: Path, monkeypatch: Any) -> None:
    from experiments.analysis.command import report_command

    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(ROOT / "configs"))
    home = Home(tmp_path / "home")
    log = SQLiteEventLog(home.event_log)
    log.record_predictions(
        [pred("2026-03-01T10:00:00+00:00", "u1", "linear", "billing", experiment="linear-vs-minilm")]
    )
    with pytest.raises(ReportInputError) as err:
        report_command(home, since="yesterday-ish", now=AS_OF)
    assert "\n" not in str(err.value) and "--since 'yesterday-ish' is not a time" in str(err.value)
    buf = io.StringIO()
    r = report_command(home, since="2026-03-01", as_json=True, html=tmp_path / "r.html", csv=tmp_path / "c.csv",
                       now=AS_OF, out=buf)  # fmt: skip
    assert json.loads(buf.getvalue())["experiment"] == "linear-vs-minilm" and r.arms[0].emails == 1
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert (tmp_path / "c.csv").read_text().count("\n") == 2


def test_analysis_config_is_strict_and_the_runtime_change_path_still_validates() -> None:
    from experiments.assign import arm_ranges
    from serving.ops.admin import merge_change

    with pytest.raises(ConfigError, match=r"unknown key 'guardrails\.max_p99'"):
        parse_config({"guardrails": {"max_p99": 1}}, AnalysisConfig, "analysis")
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        parse_config({"time_zone": "Mars/Olympus"}, AnalysisConfig, "analysis")
    with pytest.raises(ConfigError, match="'nobody' is not one of the arms"):
        parse_config(experiment().model_dump() | {"control": "nobody"}, ExperimentConfig, "experiment")
    current = experiment()
    changed = merge_change(current, "exp", {"arms": {"linear": 0.8, "transformer": 0.2}}, arm_ranges(current.weights))
    assert changed.control == "linear" and changed.weights == pytest.approx({"linear": 0.8, "transformer": 0.2})
    assert experiment(control=None).control_arm == "linear"  # unset: the holdout arm
    assert all(f.description for f in AnalysisConfig.model_fields.values())


def test_cli_bad_since_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    from serving.cli import main

    monkeypatch.setenv("MAILROUTE_CONFIG_DIR", str(ROOT / "configs"))
    SQLiteEventLog(tmp_path / "events.db").record_predictions([pred("2026-03-01T10:00:00+00:00", "u", "linear", "x")])
    assert main(["--home", str(tmp_path), "experiment", "report", "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since 'last tuesday' is not a time" in err
    assert main(["--home", str(tmp_path), "experiment", "report", "--since", "99999999d"]) == 2  # an overflow
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reaches back before the year 1" in err
    assert main(["--home", str(tmp_path), "experiment", "report", "--since", "2026-03-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experiment"] == "linear-vs-minilm"
