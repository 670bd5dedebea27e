"""The one place that makes a simulation replay exactly: a seed in, the same run out.

Three things must be pinned for a seed to replay: the network's faults (`SimNetwork` draws
them from a `random.Random(seed)`), time (`MockClock(autojump_threshold=0)`: time moves only
when every task waits, straight to the next deadline), and Trio's scheduler, which on purpose
runs each batch of runnable tasks in a random order. Trio has a private switch for the last one
(used for Hypothesis; see python-trio/trio#2675): with `_ALLOW_DETERMINISTIC_SCHEDULING` set,
each batch is sorted by task creation order and then shuffled with the module RNG `_r`, so
seeding `_r` fixes the order. Those are private names of `trio._core._run` (checked against
Trio 0.35); they are touched here and nowhere else, and always restored.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing
from trio._core import _run as trio_run_internals

from kvs.testing.network import SimNetwork

__all__ = [
    "SEED_ENV",
    "deterministic_scheduler",
    "reported_seed",
    "run_simulation",
    "seed_from_env",
    "seeds_from_env",
]

T = TypeVar("T")

SEED_ENV = "KVS_SIM_SEED"


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
    **network: Any,
) -> T:
    """Run `await main(net)` in a fresh `trio.run` on a running `SimNetwork`, deterministically.

    `net` draws from `random.Random(seed)` (nodes should take `net.fork_rng()`), `network`
    holds its settings (latency, jitter, loss, duplicate, queue_size, connect_timeout, trace).
    The scheduler is seeded from `seed` too unless `scheduler_seed` is given (to ask whether a
    failure depends on task interleaving alone). Any exception carries the seed as a note.
    """
    sched: int | str = f"kvs-sim-scheduler/{seed}" if scheduler_seed is None else scheduler_seed
    with reported_seed(seed), deterministic_scheduler(sched):
        # Seed first, then make the clock: Trio clocks may draw their offset from `_r`.
        clock = trio.testing.MockClock(autojump_threshold=0)
        net = SimNetwork(random.Random(seed), **network)

        async def root() -> T:
            failure: Exception | None = None
            async with net.running():
                try:
                    return await main(net)
                except Exception as exc:  # raise it below, not wrapped in the wire's nursery
                    failure = exc
            assert failure is not None
            raise failure

        return trio.run(root, clock=clock)
