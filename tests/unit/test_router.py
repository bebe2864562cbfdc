"""RouterCore without Ray: assignment, fallbacks, idempotency, shadow, feedback, metrics, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.config import ExperimentConfig
from serving.api import ApiError, FeedbackRequest, RouteRequest
from serving.auth import Principal
from serving.config import ServingConfig, load_queues
from serving.metrics import merge, render
from serving.policy import NO_RULE
from serving.router import SHADOW, ArmAnswer, RouterCore
from serving.store.memory import MemoryEventLog
from serving.store.writer import BufferedWriter

pytestmark = pytest.mark.unit
GATEWAY = Principal("gateway", "client", "k1")
OTHER_GATEWAY = Principal("other-gateway", "client", "k2")
ADMIN = Principal("ops", "admin", "k3")
AGENT = Principal("ana", "agent", "k4")
QUEUES = load_queues(Path(__file__).resolve().parents[2] / "configs" / "queues.yaml")
LABELS = tuple(QUEUES.names)


def experiment(**extra: Any) -> ExperimentConfig:
    data = {
        "name": "exp",
        "salt": "s1",
        "arms": {"linear": {"model": "linear", "weight": 0.5}, "transformer": {"model": "transformer", "weight": 0.5}},
        "holdout_arm": "linear",
        **extra,
    }
    return ExperimentConfig.model_validate(data)


class FakeArms:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, str] = {}
        self.proba = {q: 0.0 for q in LABELS} | {"billing": 0.9, "technical": 0.1}
        self.note: str | None = None

    async def __call__(self, arm: str, text: str) -> ArmAnswer:
        self.calls.append(arm)
        if self.fail.get(arm) == "error":
            raise RuntimeError("boom")
        if self.fail.get(arm) == "hang":
            await asyncio.sleep(10)
        proba = tuple(float("nan") if self.fail.get(arm) == "nan" else self.proba[q] for q in LABELS)
        return ArmAnswer(LABELS, proba, arm if arm != SHADOW else "shadowmodel", "v1", self.note)


@pytest.fixture
def setup() -> Iterator[tuple[RouterCore, FakeArms, MemoryEventLog]]:
    log = MemoryEventLog()
    writer = BufferedWriter(log, flush_interval_ms=5)
    arms = FakeArms()
    core = RouterCore(
        queues=QUEUES,
        serving=ServingConfig.model_validate({"model_timeout_s": 0.2}),
        experiment=experiment(),
        event_log=log,
        writer=writer,
        call_arm=arms,
        user_salt="salt",
    )
    yield core, arms, log
    writer.close()


def route(core: RouterCore, admin: bool = False, caller: Principal = GATEWAY, **fields: Any) -> Any:
    req = RouteRequest.model_validate({"user_id": "u1", "subject": "Refund", "body": "charged twice", **fields})
    return asyncio.run(core.route(req, ADMIN if admin else caller))


def test_route_logs_one_event_with_a_pseudonym(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, log = setup
    answer = route(core)
    assert answer.queue == "billing" and answer.reason == "confident" and not answer.fallback
    core.writer.flush()
    event = log.get_prediction(answer.request_id)
    assert event is not None and event.arm == answer.arm and event.in_experiment
    assert "u1" not in event.user_key
    assert event.body == "charged twice"  # redacted policy leaves plain text alone


def test_same_user_same_arm_and_holdout(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, log = setup
    assert len({route(core, user_id="user-7").arm for _ in range(5)}) == 1
    assert {route(core, user_id=f"user-{i}").arm for i in range(40)} == {"linear", "transformer"}
    core.set_experiment(experiment(coverage=0.01))
    answers = [route(core, user_id=f"h-{i}") for i in range(50)]
    core.writer.flush()
    events = [log.get_prediction(a.request_id) for a in answers]
    held = [e for e in events if e is not None and not e.in_experiment]
    assert len(held) >= 45  # ~99% are holdout ...
    assert {e.arm for e in held} == {"linear"}  # ... served by the holdout arm


def test_repeated_email_id_returns_the_first_answer(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, arms, log = setup
    first = route(core, email_id="mail-1")
    second = route(core, email_id="mail-1", body="something else entirely")
    assert second == first
    core.writer.flush()
    assert log.stats().predictions == 1
    assert len(arms.calls) == 1


@pytest.mark.parametrize("fault", ["error", "hang", "nan"])  # nan: a model answering NaN probabilities
def test_failed_arm_falls_back_then_triage(setup: tuple[RouterCore, FakeArms, MemoryEventLog], fault: str) -> None:
    core, arms, _ = setup
    arms.fail = {"transformer": fault}
    answer = route(core, force_arm="transformer", admin=True)
    kind = "timeout" if fault == "hang" else "error"
    assert answer.fallback and answer.queue == "billing"
    assert answer.reason == f"fallback_to_linear:transformer_{kind}"
    arms.fail = {"transformer": fault, "linear": "error"}
    answer = route(core, force_arm="transformer", admin=True)
    assert answer.queue == "triage" and answer.fallback and answer.reason.startswith("all_arms_failed:")
    assert core.metrics.arm_errors[("transformer", kind)] == 2


def test_low_confidence_goes_to_triage(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, arms, _ = setup
    arms.proba = {q: 1 / len(LABELS) for q in LABELS}
    answer = route(core)
    assert answer.queue == "triage" and answer.reason == "low_confidence"


def test_the_reason_names_what_answered_inside_the_arm(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    """A rules arm's answer names its rule; below the threshold it is low confidence, with the rule; no rule matched
    is triage even where the probabilities would pass the threshold."""
    core, arms, _ = setup
    arms.note = "rule:refund"
    confident = route(core)
    assert (confident.queue, confident.reason) == ("billing", "rule:refund")
    arms.proba = {q: 1 / len(LABELS) for q in LABELS}
    unsure = route(core)
    assert (unsure.queue, unsure.reason) == ("triage", "low_confidence:rule:refund")
    arms.proba = {q: 0.0 for q in LABELS} | {"billing": 0.99, "technical": 0.01}
    arms.note = NO_RULE
    none = route(core)
    assert (none.queue, none.reason) == ("triage", NO_RULE)


def test_force_arm_rules(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, _ = setup
    with pytest.raises(ApiError) as err:
        route(core, force_arm="transformer")
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:
        route(core, force_arm="gpt", admin=True)
    assert err.value.status == 422 and "unknown arm 'gpt'" in err.value.detail
    assert route(core, force_arm="transformer", admin=True).arm == "transformer"


def test_shadow_is_logged_never_returned(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, arms, log = setup
    core.set_experiment(experiment(shadow={"model": "transformer", "sample_rate": 1.0}))

    async def run() -> Any:
        answer = await core.route(RouteRequest(user_id="u9", subject="s", body="invoice copy please"))
        await asyncio.gather(*core._shadow_tasks)
        return answer

    answer = asyncio.run(run())
    assert "shadow" not in answer.model_dump_json()
    core.writer.flush()
    event = log.get_prediction(answer.request_id)
    assert event is not None and event.shadow is not None
    assert event.shadow["model"] == "shadowmodel" and event.shadow["queue"] == "billing"
    assert SHADOW in arms.calls


def test_feedback(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, log = setup
    answer = route(core)  # still in the write buffer: feedback must find it anyway
    first = asyncio.run(core.feedback(FeedbackRequest(request_id=answer.request_id, true_queue="technical")))
    again = asyncio.run(core.feedback(FeedbackRequest(request_id=answer.request_id, true_queue="billing")))
    assert first.created and not again.created and again.true_queue == "technical"
    with pytest.raises(ApiError) as err:
        asyncio.run(core.feedback(FeedbackRequest(request_id=answer.request_id, true_queue="refunds")))
    assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        asyncio.run(core.feedback(FeedbackRequest(request_id="nope", true_queue="billing")))
    assert err.value.status == 404
    assert log.joined_frame()["true_queue"].tolist() == ["technical"]
    audited = route(core)
    asyncio.run(core.feedback(FeedbackRequest(request_id=audited.request_id, true_queue="billing", source="audit")))
    assert log.joined_frame()["feedback_source"].tolist() == ["agent", "audit"]


@pytest.mark.parametrize(
    "fields, status",
    [
        ({"body": "x" * 300_000}, 413),
        ({"subject": "  ", "body": ""}, 422),
        ({"subject": None, "body": None, "raw": "\x00\x01garbage"}, 422),
    ],
)
def test_bad_emails(setup: tuple[RouterCore, FakeArms, MemoryEventLog], fields: dict[str, Any], status: int) -> None:
    core, arms, log = setup
    with pytest.raises(ApiError) as err:
        route(core, **fields)
    assert err.value.status == status and "\n" not in err.value.detail
    core.writer.flush()
    assert log.stats().predictions == 0 and not arms.calls


def test_metrics_render(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, _ = setup
    for i in range(4):
        route(core, user_id=f"m{i}")
    text = render(merge([core.metrics.snapshot(), core.metrics.snapshot()]), "exp")
    total = sum(
        int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("mailroute_requests_total{")
    )
    assert total == 8
    assert 'mailroute_latency_ms_bucket{experiment="exp",arm=' in text
    assert "# TYPE mailroute_latency_ms histogram" in text


# --- defects of issue 9: each of these failed on the code before it ---


def test_an_email_id_is_scoped_to_its_client(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, arms, log = setup
    mine = route(core, email_id="mail-1")
    theirs = route(core, email_id="mail-1", caller=OTHER_GATEWAY)  # the same key from another client: its own email
    assert theirs.request_id != mine.request_id and len(arms.calls) == 2
    assert route(core, email_id="mail-1") == mine  # a retry of my own still gets my first answer
    core.writer.flush()
    stored = log.get_prediction(theirs.request_id)
    assert stored is not None and stored.client == "other-gateway"


def test_a_repeated_email_id_does_not_skip_the_force_arm_check(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog],
) -> None:
    core, _, _ = setup
    route(core, email_id="mail-1")
    with pytest.raises(ApiError) as err:
        route(core, email_id="mail-1", force_arm="transformer")
    assert err.value.status == 403


def test_racing_requests_with_one_email_id_run_the_model_once(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog],
) -> None:
    core, arms, log = setup

    async def race() -> list[Any]:
        req = RouteRequest(user_id="u1", subject="Refund", body="charged twice", email_id="mail-9")
        return list(await asyncio.gather(*(core.route(req, GATEWAY) for _ in range(5))))

    answers = asyncio.run(race())
    assert len({a.request_id for a in answers}) == 1 and len(arms.calls) == 1
    assert sum(core.metrics.requests.values()) == 1
    core.writer.flush()
    assert log.stats().predictions == 1


def test_the_loser_of_a_race_between_replicas_counts_nothing(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog],
) -> None:
    core, _, log = setup
    other = route(core, email_id="mail-7")  # "another replica" answered first and wrote its record
    core.writer.flush()
    core.metrics.requests.clear()
    core.writer.find_by_email_id = lambda *_: None  # type: ignore[method-assign]  # not visible when we looked
    loser = route(core, email_id="mail-7")
    assert loser.request_id == other.request_id  # answered with the record that won
    assert sum(core.metrics.requests.values()) == 0  # and nothing of ours reached the metrics
    assert log.stats().predictions == 1


def test_a_full_write_buffer_answers_503_instead_of_losing_the_record() -> None:
    log = GatedLog()
    writer = BufferedWriter(log, flush_interval_ms=1, max_pending=2)
    core = _core(log, writer)
    for i in range(2):
        route(core, user_id=f"u{i}")
    with pytest.raises(ApiError) as err:
        route(core, user_id="u3")
    assert err.value.status == 503 and err.value.retry_after_s and "write buffer is full" in err.value.detail
    log.gate.set()
    assert writer.close(timeout=10) and log.stats().predictions == 2  # every answer given has its record


def test_a_closed_writer_answers_503() -> None:
    log = MemoryEventLog()
    writer = BufferedWriter(log, flush_interval_ms=1)
    core = _core(log, writer)
    writer.close()
    with pytest.raises(ApiError) as err:
        route(core)
    assert err.value.status == 503 and err.value.retry_after_s


def test_a_store_error_on_the_email_id_path_is_retried_then_503() -> None:
    log = FlakyLog(failures=1)
    writer = BufferedWriter(log, flush_interval_ms=1)
    core = _core(log, writer)
    answer = route(core, email_id="m1")  # one failure: retried
    assert log.get_prediction(answer.request_id) is not None
    log.failures = 10_000
    with pytest.raises(ApiError) as err:
        route(core, email_id="m2")
    assert err.value.status == 503 and err.value.retry_after_s
    writer.close()


def test_refuse_mode_answers_503_while_the_store_fails() -> None:
    log = FlakyLog(failures=10_000)
    writer = BufferedWriter(log, flush_interval_ms=1, retry_backoff_s=0.01)
    serving = ServingConfig.model_validate({"model_timeout_s": 0.2, "event_log": {"on_store_failure": "refuse"}})
    core = _core(log, writer, serving)
    route(core)  # accepted into the buffer; its write starts failing
    deadline = asyncio.run(_wait(lambda: writer.stats().failing))
    assert deadline
    with pytest.raises(ApiError) as err:
        route(core)
    assert err.value.status == 503
    log.failures = 0
    assert writer.close(timeout=10) and log.stats().predictions == 1


def test_feedback_identity_and_request_ids(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    core, _, log = setup
    answer = route(core)
    assert core.issued_recently(answer.request_id) and not core.issued_recently("0" * 32)
    done = asyncio.run(core.feedback(FeedbackRequest(request_id=answer.request_id, true_queue="technical"), AGENT))
    assert done.created
    stored = log.get_feedback(answer.request_id)
    assert stored is not None and stored.agent_id == "ana"  # from the token, not from the body
    with pytest.raises(ApiError) as err:
        request = FeedbackRequest(request_id=answer.request_id, true_queue="billing", agent_id="bob")
        asyncio.run(core.feedback(request, AGENT))
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:  # an id this service never issued
        asyncio.run(core.feedback(FeedbackRequest(request_id="f" * 32, true_queue="billing"), AGENT))
    assert err.value.status == 404


def test_feedback_for_an_issued_id_still_in_another_buffer_is_503_not_404(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog],
) -> None:
    core, _, _ = setup
    elsewhere = core.new_request_id()  # issued by a replica whose buffer has not reached the log yet
    with pytest.raises(ApiError) as err:
        asyncio.run(core.feedback(FeedbackRequest(request_id=elsewhere, true_queue="billing"), AGENT))
    assert err.value.status == 503 and err.value.retry_after_s


def test_feedback_for_an_old_id_not_in_the_log_is_404(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    core, _, _ = setup
    issued = core.new_request_id()  # say its record was deleted on a user's request, or never reached any buffer
    monkeypatch.setattr("serving.router.PENDING_S", 0)  # older than any buffer holds
    with pytest.raises(ApiError) as err:
        asyncio.run(core.feedback(FeedbackRequest(request_id=issued, true_queue="billing"), AGENT))
    assert err.value.status == 404


class GatedLog(MemoryEventLog):
    """Writes wait until `gate` is set (a hung store)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def record_predictions(self, events: Any) -> None:
        self.gate.wait(timeout=10)
        super().record_predictions(events)


class FlakyLog(MemoryEventLog):
    """The first `failures` writes fail as a locked SQLite file does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def record_predictions(self, events: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        super().record_predictions(events)


def _core(log: MemoryEventLog, writer: BufferedWriter, serving: ServingConfig | None = None) -> RouterCore:
    return RouterCore(
        queues=QUEUES,
        serving=serving or ServingConfig.model_validate({"model_timeout_s": 0.2}),
        experiment=experiment(),
        event_log=log,
        writer=writer,
        call_arm=FakeArms(),
        user_salt="salt",
    )


async def _wait(ok: Any, timeout_s: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not ok() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return bool(ok())


def test_a_hung_arm_is_skipped_at_once_until_it_recovers(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before issue 9 every request to a hung arm waited the full model timeout before falling back, so a hung arm
    # under load filled the router's slots. Now the arm's circuit opens after a few failures and is skipped at once.
    core, arms, _ = setup
    arms.fail = {"transformer": "hang"}
    answers = [route(core, force_arm="transformer", admin=True, user_id=f"h{i}") for i in range(30)]
    assert all(a.fallback and a.queue == "billing" for a in answers)  # every one answered by the fallback arm
    timeouts = core.metrics.arm_errors[("transformer", "timeout")]
    assert timeouts <= core.serving.circuit_breaker.failures  # only until the circuit opened
    assert core.metrics.arm_errors[("transformer", "open")] == 30 - timeouts
    assert answers[-1].reason == "fallback_to_linear:transformer_open"
    # Once the arm answers again, the next call after the pause closes the circuit.
    arms.fail = {}
    monkeypatch.setattr("circuitbreaker.monotonic", lambda: time.monotonic() + 3600)
    assert not route(core, force_arm="transformer", admin=True).fallback
    assert not route(core, force_arm="transformer", admin=True).fallback


def test_a_new_arm_or_version_starts_with_a_closed_circuit(setup: tuple[RouterCore, FakeArms, MemoryEventLog]) -> None:
    # Found by the rollout tests: a canary started again under the name of one that had failed was skipped (its
    # circuit still open) and rolled back by the job for the fallbacks.
    core, arms, _ = setup
    arms.fail = {"transformer": "error"}
    for i in range(core.serving.circuit_breaker.failures):
        route(core, force_arm="transformer", admin=True, user_id=f"f{i}")
    assert route(core, force_arm="transformer", admin=True).reason.endswith("transformer_open")
    arms.fail = {}
    same = experiment()
    core.set_experiment(same)  # the same arms and versions: the circuit stays open
    assert route(core, force_arm="transformer", admin=True).reason.endswith("transformer_open")
    data = same.model_dump()
    data["arms"]["transformer"]["version"] = "v2"
    core.set_experiment(ExperimentConfig.model_validate(data))  # a new version: a fresh circuit
    assert not route(core, force_arm="transformer", admin=True).fallback


def test_after_the_pause_one_call_tries_the_arm_while_the_others_skip_it(
    setup: tuple[RouterCore, FakeArms, MemoryEventLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found while writing the hung-arm throughput test: once an open circuit's pause was over, every concurrent
    # request went to the hung arm and waited its full timeout, until one of them failed.
    core, arms, _ = setup
    arms.fail = {"transformer": "hang"}
    for i in range(core.serving.circuit_breaker.failures):
        route(core, force_arm="transformer", admin=True, user_id=f"h{i}")
    monkeypatch.setattr("circuitbreaker.monotonic", lambda: time.monotonic() + 3600)  # the pause is over
    arms.calls.clear()

    async def burst() -> list[Any]:
        req = RouteRequest(user_id="u", subject="Refund", body="charged twice", force_arm="transformer")
        return list(await asyncio.gather(*(core.route(req, ADMIN) for _ in range(6))))

    answers = asyncio.run(burst())
    assert arms.calls.count("transformer") == 1  # the one trial call
    assert sum(a.reason.endswith("transformer_open") for a in answers) == 5


class HungReadLog(MemoryEventLog):
    """Lookups hang until `gate` is set (a database that accepts the connection and never answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def find_by_email_id(self, email_id: str, client: str | None = None) -> Any:
        self.gate.wait(timeout=30)
        return super().find_by_email_id(email_id, client)


def test_a_hung_store_lookup_answers_503_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serving.router.STORE_CALL_S", 0.3)
    log = HungReadLog()
    writer = BufferedWriter(log, flush_interval_ms=1)
    core = _core(log, writer)
    req = RouteRequest.model_validate({"user_id": "u1", "subject": "Refund", "body": "charged twice", "email_id": "m1"})

    async def answer() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            await core.route(req, GATEWAY)
        except ApiError as err:
            return err, time.monotonic() - started
        return None, time.monotonic() - started

    threading.Timer(2.0, log.gate.set).start()  # asyncio.run waits for the hung thread when it closes
    err, waited = asyncio.run(answer())
    assert isinstance(err, ApiError) and err.status == 503 and err.retry_after_s
    assert waited < 10  # not the 30 s the lookup hangs
    log.gate.set()
    writer.close()
