"""The one place that makes a simulation replay exactly: a seed in, the same run out.

Three things must be pinned for a seed to replay: the network's faults (`SimNetwork` draws
them from a `random.Random(seed)`), time (`SimClock`: time moves only when every task waits,
straight to the next deadline or arrival), and Trio's scheduler, which on purpose
runs each batch of runnable tasks in a random order. Trio has a private switch for the last one
(used for Hypothesis; see python-trio/trio#2675): with `_ALLOW_DETERMINISTIC_SCHEDULING` set,
each batch is sorted by task creation order and then shuffled with the module RNG `_r`, so
seeding `_r` fixes the order. Those are private names of `trio._core._run` (checked against
Trio 0.35); they are touched here and nowhere else, and always restored.

Every run has three limits, and each ends it with `SimulationTimeout` naming the seed:
- a limit in simulated time (`time_limit`): a deadline on the mock clock, so a run in which
  every task waits for ever still has a timer to jump to, and ends at once;
- a stall limit (`stall_limit`): a simulation can stop the simulated clock -- tasks that
  stay runnable without ever sleeping (a timer re-armed at "now", a retry loop without a
  delay) never let the mock clock jump, so no deadline in simulated time can fire and the
  run would spin until killed. A watchdog thread samples the mock clock; when it has not
  moved for `stall_limit` real seconds, the run is aborted with "the simulated clock
  stopped at T s";
- a limit in real time (`wall_limit`) for a run that advances, but too slowly.
The watchdog cancels the run from outside through its Trio token; should the run not even
reach a checkpoint within `WATCHDOG_GRACE`, it raises the timeout into the simulation's
thread. Neither needs signals, so it works in any thread and under pytest-xdist.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
from trio._core import _run as trio_run_internals

from kvs.testing.network import SimNetwork
from kvs.testing.simclock import SimClock

__all__ = [
    "SEED_ENV",
    "STALL_LIMIT",
    "TIME_LIMIT",
    "WALL_LIMIT",
    "SimulationTimeout",
    "deterministic_scheduler",
    "reported_seed",
    "run_simulation",
    "seed_from_env",
    "seeds_from_env",
]

T = TypeVar("T")

SEED_ENV = "KVS_SIM_SEED"
TIME_LIMIT = 3600.0
"""Simulated seconds a run may last. The longest test scenario takes a few simulated minutes."""
WALL_LIMIT = 240.0
"""Real seconds a run may last: under pytest-timeout's 300 s, so the harness speaks first."""
STALL_LIMIT = 30.0
"""Real seconds the simulated clock may stand still before the run is aborted. A long stretch
of work at one instant (thousands of writes in one call) takes a few seconds at most."""
WATCHDOG_GRACE = 10.0
"""Real seconds the cancelled run has to end before the timeout is raised into its thread."""


class SimulationTimeout(Exception):
    """A simulation ran past its limit in simulated or in real time (it never converged, or
    its clock stopped); the message says which, with the seed and the simulated time."""


def _parse_seed(raw: str) -> int:
    try:
        return int(raw, 0)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, not {raw!r}") from None


def seed_from_env(default: int) -> int:
    """`KVS_SIM_SEED` if set (to replay a failure), else `default`."""
    raw = os.environ.get(SEED_ENV, "").strip()
    return _parse_seed(raw) if raw else default


def seeds_from_env(defaults: Iterable[int]) -> list[int]:
    """For `pytest.mark.parametrize("seed", seeds_from_env([1, 2, 3]))`: the CI seeds, or just
    the one in `KVS_SIM_SEED` when replaying."""
    raw = os.environ.get(SEED_ENV, "").strip()
    return [_parse_seed(raw)] if raw else list(defaults)


@contextmanager
def deterministic_scheduler(seed: int | str) -> Iterator[None]:
    """Pin the order in which Trio runs runnable tasks, for the duration of the block."""
    saved_flag = trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = trio_run_internals._r.getstate()
    trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run_internals._r.seed(seed)
    try:
        yield
    finally:
        trio_run_internals._r.setstate(saved_state)
        trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]


@contextmanager
def reported_seed(seed: int) -> Iterator[None]:
    """Attach the seed to whatever escapes, so a failing test says how to replay it. The
    exception keeps its type (pytest.raises still matches); the seed is an exception note."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"simulation failed with seed {seed}; rerun with {SEED_ENV}={seed}")
        raise


def run_simulation(
    main: Callable[[SimNetwork], Awaitable[T]],
    seed: int,
    *,
    scheduler_seed: int | None = None,
    time_limit: float | None = TIME_LIMIT,
    wall_limit: float | None = WALL_LIMIT,
    stall_limit: float | None = STALL_LIMIT,
    **network: Any,
) -> T:
    """Run `await main(net)` in a fresh `trio.run` on a running `SimNetwork`, deterministically.

    `net` draws from `random.Random(seed)` (nodes should take `net.fork_rng()`), `network`
    holds its settings (latency, jitter, loss, duplicate, queue_size, connect_timeout, trace).
    The scheduler is seeded from `seed` too unless `scheduler_seed` is given (to ask whether a
    failure depends on task interleaving alone). The run ends with `SimulationTimeout` after
    `time_limit` simulated or `wall_limit` real seconds, or once the simulated clock has
    stood still for `stall_limit` real seconds (None: no such limit). Any exception carries
    the seed as a note.
    """
    sched: int | str = f"kvs-sim-scheduler/{seed}" if scheduler_seed is None else scheduler_seed
    with reported_seed(seed), deterministic_scheduler(sched):
        clock = SimClock()
        net = SimNetwork(random.Random(seed), **network)
        watchdog = _Watchdog(seed, wall_limit, stall_limit, clock)

        async def root() -> T:
            failure: Exception | None = None
            deadline = math.inf if time_limit is None else trio.current_time() + time_limit
            with watchdog.armed() as stopped, trio.move_on_at(deadline) as limited:
                async with net.running():
                    try:
                        return await main(net)
                    except Exception as exc:  # raise it below, not wrapped in the wire's nursery
                        failure = exc
            if stopped.cancel_called:
                raise SimulationTimeout(watchdog.message) from failure
            if limited.cancel_called:
                raise SimulationTimeout(
                    f"simulation with seed {seed} still running after its limit of"
                    f" {time_limit:g} simulated seconds: it never finished (did it converge?)"
                ) from failure
            assert failure is not None
            raise failure

        try:
            return trio.run(root, clock=clock)
        except BaseException as exc:
            # Raised into the thread as a bare class, or wrapped by Trio: give it its message.
            if watchdog.fired and not (isinstance(exc, SimulationTimeout) and exc.args):
                raise SimulationTimeout(watchdog.message) from exc
            raise
        finally:
            watchdog.disarm()


class _Watchdog:
    """Ends a `trio.run` that has used up `limit` real seconds, whatever its clock does: a
    thread waits for the limit, then cancels the run's scope through its Trio token (that
    works while tasks spin at one simulated instant, as their checkpoints run the callback);
    if that callback has still not run `WATCHDOG_GRACE` seconds later (code that never
    reaches a checkpoint), it raises SimulationTimeout into the run's thread, as a last
    resort. A run that was cancelled and is unwinding is left to finish."""

    def __init__(
        self,
        seed: int,
        limit: float | None,
        stall_limit: float | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.seed = seed
        self.limit = limit
        self.stall_limit = stall_limit if clock is not None else None
        self.clock = clock
        self.fired = False
        self.message = ""
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def armed(self) -> Iterator[trio.CancelScope]:
        """Inside `trio.run`: a cancel scope the watchdog cancels when the limit is up."""
        scope = trio.CancelScope()
        if self.limit is not None or self.stall_limit is not None:
            token = trio.lowlevel.current_trio_token()
            target = threading.get_ident()
            self._thread = threading.Thread(
                target=self._watch,
                args=(token, scope, target),
                name=f"kvs-sim-watchdog-{self.seed}",
                daemon=True,
            )
            self._thread.start()
        with scope:
            yield scope

    def disarm(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _wait_for_trouble(self) -> str | None:
        """Block until a limit is up (its message) or the run has ended (None)."""
        started = time.monotonic()
        last_sim = self._sim_now()
        moved_at = started
        poll = 0.25 if self.stall_limit is None else min(0.25, self.stall_limit / 4)
        while not self._done.wait(poll):
            now = time.monotonic()
            sim = self._sim_now()
            if sim != last_sim:
                last_sim, moved_at = sim, now
            elif self.stall_limit is not None and now - moved_at >= self.stall_limit:
                return (
                    f"simulation with seed {self.seed}: the simulated clock stopped at"
                    f" {sim:.3f} s and stood still for {self.stall_limit:g} real seconds (tasks"
                    " keep running without sleeping: a timer re-armed at now, a loop without"
                    " a delay); aborted"
                )
            if self.limit is not None and now - started >= self.limit:
                return (
                    f"simulation with seed {self.seed} still running after {self.limit:g} real"
                    f" seconds, at {sim:.3f} simulated seconds (if that stays put from run to"
                    " run, tasks keep running without sleeping: the simulated clock has"
                    " stopped)"
                )
        return None

    def _sim_now(self) -> float:
        return 0.0 if self.clock is None else self.clock.current_time()

    def _watch(self, token: trio.lowlevel.TrioToken, scope: trio.CancelScope, target: int) -> None:
        message = self._wait_for_trouble()
        if message is None:
            return

        def expire() -> None:
            if not self.fired:
                self.fired = True
                self.message = message
            scope.cancel()

        try:
            token.run_sync_soon(expire)
        except trio.RunFinishedError:
            return
        if self._done.wait(WATCHDOG_GRACE) or self.fired:
            return  # ended, or cancelled and unwinding (its checkpoints ran `expire`)
        # The run never reached a checkpoint: raise into its thread (a bare class, which
        # run_simulation replaces by one with this message).
        self.fired = True
        self.message = (
            f"{message}; it reached no checkpoint for {WATCHDOG_GRACE:g} s more: interrupted"
        )
        if not self._done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(target), ctypes.py_object(SimulationTimeout)
            )
