"""CallBatcher: coalescing concurrent calls per arm, without Ray."""

from __future__ import annotations

import asyncio

import pytest

from serving.batcher import CallBatcher

pytestmark = pytest.mark.unit


class FakeArm:
    """Answers `item.upper()` after `delay_s`; records every batch it was sent."""

    def __init__(self, delay_s: float = 0.01, fail: str | None = None) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.batches: list[tuple[str, list[str]]] = []

    async def __call__(self, key: str, items: list[str]) -> list[str]:
        self.batches.append((key, items))
        fail = self.fail  # as it was when the batch arrived
        await asyncio.sleep(self.delay_s)
        if fail == "error":
            raise RuntimeError("model down")
        if fail == "short":
            return items[:-1]
        return [item.upper() for item in items]


def batcher(arm: FakeArm, max_batch: int = 32, max_in_flight: int = 1, timeout_s: float = 5.0) -> CallBatcher[str]:
    return CallBatcher(arm, max_batch=max_batch, max_in_flight=max_in_flight, timeout_s=timeout_s)


def test_an_idle_arm_gets_each_call_at_once() -> None:
    arm = FakeArm()
    calls = batcher(arm)

    async def run() -> list[str]:
        return [await calls.call("linear", f"e{i}") for i in range(3)]

    assert asyncio.run(run()) == ["E0", "E1", "E2"]
    assert [items for _, items in arm.batches] == [["e0"], ["e1"], ["e2"]]


def test_calls_that_arrive_while_one_is_in_flight_go_out_together_in_order() -> None:
    arm = FakeArm(delay_s=0.05)
    calls = batcher(arm, max_batch=4)

    async def run() -> list[str]:
        return list(await asyncio.gather(*(calls.call("linear", f"e{i}") for i in range(10))))

    assert asyncio.run(run()) == [f"E{i}" for i in range(10)]
    assert [items for _, items in arm.batches] == [["e0"], ["e1", "e2", "e3", "e4"], ["e5", "e6", "e7", "e8"], ["e9"]]
    assert (calls.batches, calls.items) == (4, 10)


def test_arms_are_batched_separately_and_run_concurrently() -> None:
    arm = FakeArm(delay_s=0.05)
    calls = batcher(arm)

    async def run() -> list[str]:
        keys = ["linear", "transformer"] * 3
        return list(await asyncio.gather(*(calls.call(k, f"{k}{i}") for i, k in enumerate(keys))))

    assert asyncio.run(run()) == ["LINEAR0", "TRANSFORMER1", "LINEAR2", "TRANSFORMER3", "LINEAR4", "TRANSFORMER5"]
    assert arm.batches[:2] == [("linear", ["linear0"]), ("transformer", ["transformer1"])]  # neither waited
    assert sorted(arm.batches[2:]) == [
        ("linear", ["linear2", "linear4"]),
        ("transformer", ["transformer3", "transformer5"]),
    ]


def test_max_in_flight_bounds_concurrent_batches() -> None:
    arm = FakeArm(delay_s=0.05)
    calls = batcher(arm, max_in_flight=2)

    async def run() -> None:
        await asyncio.gather(*(calls.call("linear", f"e{i}") for i in range(6)))

    asyncio.run(run())
    assert [items for _, items in arm.batches] == [["e0"], ["e1"], ["e2", "e3", "e4", "e5"]]


@pytest.mark.parametrize(("fail", "error"), [("error", "model down"), ("short", "returned 2 results for 3 items")])
def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs(fail: str, error: str) -> None:
    arm = FakeArm(delay_s=0.05)
    calls = batcher(arm)

    async def run() -> list[str | BaseException]:
        first = asyncio.ensure_future(calls.call("linear", "ok"))
        await asyncio.sleep(0.01)  # the first batch is at the arm
        arm.fail = fail
        failed = await asyncio.gather(*(calls.call("linear", f"e{i}") for i in range(3)), return_exceptions=True)
        arm.fail = None
        return [await first, *failed, await calls.call("linear", "after")]

    results = asyncio.run(run())
    assert results[0] == "OK" and results[-1] == "AFTER"
    assert all(isinstance(r, RuntimeError) and error in str(r) for r in results[1:4])


def test_a_hung_arm_times_out_and_frees_its_slot() -> None:
    arm = FakeArm(delay_s=3600)
    calls = batcher(arm, timeout_s=0.05)

    async def run() -> tuple[BaseException | str, str]:
        hung = await asyncio.gather(calls.call("transformer", "e0"), return_exceptions=True)
        arm.delay_s = 0.0
        return hung[0], await calls.call("transformer", "e1")

    hung, after = asyncio.run(run())
    assert isinstance(hung, TimeoutError) and after == "E1"


def test_a_caller_that_gave_up_is_not_sent() -> None:
    arm = FakeArm(delay_s=0.05)
    calls = batcher(arm)

    async def run() -> list[str]:
        first = asyncio.ensure_future(calls.call("linear", "e0"))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(calls.call("linear", "gave-up"))
        kept = asyncio.ensure_future(calls.call("linear", "e2"))
        await asyncio.sleep(0)
        waiting.cancel()
        return [await first, await kept]

    assert asyncio.run(run()) == ["E0", "E2"]
    assert [items for _, items in arm.batches] == [["e0"], ["e2"]]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        batcher(FakeArm(), max_batch=0)
