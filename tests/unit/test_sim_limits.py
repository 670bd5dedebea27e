"""kvs.testing.harness: a simulation that never finishes fails with its seed, quickly, both
when it waits for ever (the clock jumps to the limit in simulated time) and when its
simulated clock stops (tasks spin at one instant, so only the real-time watchdog can end it;
the issue: a planted "suspicion never declares dead" bug hung a test until it was killed)."""

from __future__ import annotations

import time

import pytest
import trio

from kvs.testing import harness
from kvs.testing.harness import SimulationTimeout, run_simulation
from kvs.testing.network import SimNetwork


def test_a_run_that_waits_for_ever_ends_at_its_simulated_time_limit() -> None:
    async def stuck(net: SimNetwork) -> None:
        await trio.sleep_forever()  # no timer anywhere: nothing would wake it

    started = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"seed 7 .*limit of 600 simulated") as caught:
        run_simulation(stuck, 7, time_limit=600)
    assert time.monotonic() - started < 10
    assert any("KVS_SIM_SEED=7" in note for note in caught.value.__notes__)


def test_a_run_whose_clock_stops_is_ended_by_the_real_time_watchdog() -> None:
    """A timer re-armed at "now" keeps a task runnable: the mock clock never jumps, so the
    scenario's own `fail_after(60)` (simulated) and the harness's simulated limit never
    fire. The watchdog does, after `wall_limit` real seconds."""
    reached: list[float] = []

    async def frozen(net: SimNetwork) -> None:
        async def suspicion_timer() -> None:
            while True:  # the planted bug: the timeout computed as 0, re-armed for ever
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(suspicion_timer)
            with trio.fail_after(60):
                await trio.sleep(1)  # never returns: time stays at 0
            reached.append(trio.current_time())

    started = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"seed 11 .*at 0\.000 simulated") as caught:
        run_simulation(frozen, 11, wall_limit=1.0)
    assert 1.0 <= time.monotonic() - started < 30
    assert reached == []
    assert "clock has stopped" in str(caught.value)
    assert any("KVS_SIM_SEED=11" in note for note in caught.value.__notes__)


def test_code_that_never_reaches_a_checkpoint_is_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last resort: no Trio callback can run, so the watchdog raises into the thread."""
    monkeypatch.setattr(harness, "WATCHDOG_GRACE", 0.5)

    async def busy(net: SimNetwork) -> None:
        await trio.sleep(1)
        spins = 0
        while True:  # pure Python, never yields to Trio
            spins += 1

    started = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"seed 3 .*interrupted"):
        run_simulation(busy, 3, wall_limit=0.5)
    assert time.monotonic() - started < 30


def test_limits_change_nothing_in_a_run_that_finishes() -> None:
    async def short(net: SimNetwork) -> float:
        await trio.sleep(5)
        return trio.current_time()

    assert run_simulation(short, 1) == run_simulation(short, 1, time_limit=None, wall_limit=None)
