"""kvs.testing.harness: a simulation that never finishes fails with its seed, quickly, both
when it waits for ever (the clock jumps to the limit in simulated time) and when its
simulated clock stops (tasks spin at one instant, so only the real-time watchdog can end it;
the issue: a planted "suspicion never declares dead" bug hung a test until it was killed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from kvs.net.messages import State
from kvs.net.swim import Swim
from kvs.testing import harness
from kvs.testing.cluster import SimCluster
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


def test_a_stalled_clock_is_aborted_after_the_stall_limit_not_the_wall_limit() -> None:
    async def spinning(net: SimNetwork) -> None:
        await trio.sleep(2.5)
        while True:
            await trio.sleep(0)  # runnable for ever: the mock clock never jumps again

    started = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"clock stopped at 2\.500 s") as caught:
        run_simulation(spinning, 5, stall_limit=1.0, wall_limit=200)
    assert time.monotonic() - started < 20
    assert "aborted" in str(caught.value)
    assert any("KVS_SIM_SEED=5" in note for note in caught.value.__notes__)


def test_a_planted_suspicion_that_never_declares_dead_is_aborted_not_hung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's hang, planted in the real SWIM core: a suspicion whose time is up is never
    ended, so its deadline stays in the past, the membership driver sleeps until it (that is,
    not at all) and the mock clock stops. The stall limit ends the run with a clear error."""
    monkeypatch.setattr(Swim, "_declare_dead", lambda self, node_id, incarnation, now: None)

    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(3)
            await cluster.wait_for(cluster.converged, timeout=30)
            cluster.crash(names[2])
            await cluster.wait_for(lambda: cluster.all_see(names[2], State.DEAD), timeout=60)

    started = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"simulated clock stopped at") as caught:
        run_simulation(scenario, 9, stall_limit=2.0, latency=0.0005)
    assert time.monotonic() - started < 60
    assert any("KVS_SIM_SEED=9" in note for note in caught.value.__notes__)
