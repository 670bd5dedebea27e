"""kvs.clock: the hybrid logical clock never runs backwards, whatever the wall clock does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.model import HLC_LOGICAL_MASK, hlc_ms, hlc_pack
from tests.support.config import ManualWallClock

T0 = 1_700_000_000_000


def test_readings_follow_the_wall_clock() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    assert clock.last == 0
    first = clock.now()
    assert first == hlc_pack(T0)
    assert clock.last == first
    wall.advance(0.25)
    assert clock.now() == hlc_pack(T0 + 250)
    assert clock.wall_ms() == T0 + 250


def test_same_millisecond_increments_the_logical_counter() -> None:
    clock = HybridLogicalClock(ManualWallClock(T0))
    readings = [clock.now() for _ in range(5)]
    assert readings == [hlc_pack(T0, n) for n in range(5)]
    assert all(hlc_ms(r) == T0 for r in readings)


def test_reserve_gives_what_as_many_readings_in_one_millisecond_would() -> None:
    wall = ManualWallClock(T0)
    clock, twin = HybridLogicalClock(wall), HybridLogicalClock(wall)
    clock.now(), twin.now()
    first = clock.reserve(4)
    assert [first + i for i in range(4)] == [twin.now() for _ in range(4)]
    assert clock.last == twin.last == first + 3
    assert clock.now() == first + 4
    wall.advance(1)
    assert clock.reserve(1) == hlc_pack(T0 + 1000)


def test_wall_clock_going_backwards_never_yields_a_smaller_reading() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    before = clock.now()
    wall.advance(-3600)  # NTP steps the clock back an hour
    after = [clock.now() for _ in range(3)]
    assert after == [before + 1, before + 2, before + 3]
    assert hlc_ms(after[-1]) == T0  # still in the newest millisecond seen
    wall.advance(3600 + 0.001)  # the wall clock catches up and passes
    assert clock.now() == hlc_pack(T0 + 1)


def test_observe_a_reading_ahead_moves_the_clock_past_it() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    clock.now()
    remote = hlc_pack(T0 + 5000, 7)  # a peer 5 s ahead
    lead = clock.observe(remote)
    assert lead == 5000
    assert clock.max_offset_seen_ms == 5000
    assert clock.last == remote
    nxt = clock.now()
    assert nxt > remote
    assert nxt == remote + 1


def test_observe_a_reading_behind_changes_nothing_but_reports_it() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    current = clock.now()
    lead = clock.observe(hlc_pack(T0 - 2000))
    assert lead == -2000
    assert clock.max_offset_seen_ms == 0  # only leads are tracked
    assert clock.last == current
    assert clock.now() == current + 1


def test_max_offset_seen_keeps_the_largest_lead() -> None:
    clock = HybridLogicalClock(ManualWallClock(T0))
    clock.observe(hlc_pack(T0 + 100))
    clock.observe(hlc_pack(T0 + 900))
    clock.observe(hlc_pack(T0 + 300))
    assert clock.max_offset_seen_ms == 900


def test_logical_overflow_carries_into_the_milliseconds_and_stays_monotonic() -> None:
    clock = HybridLogicalClock(ManualWallClock(T0))
    clock.observe(hlc_pack(T0, HLC_LOGICAL_MASK - 1))
    a = clock.now()
    b = clock.now()
    c = clock.now()
    assert a == hlc_pack(T0, HLC_LOGICAL_MASK)
    assert b == hlc_pack(T0 + 1, 0)
    assert c == hlc_pack(T0 + 1, 1)
    assert a < b < c


def test_many_readings_in_one_millisecond_stay_unique_and_ordered() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    readings = [clock.now() for _ in range(HLC_LOGICAL_MASK + 10)]
    assert all(x < y for x, y in zip(readings, readings[1:], strict=False))
    assert hlc_ms(readings[-1]) == T0 + 1
    # the wall clock reaching the carried millisecond does not go backwards either
    wall.now_ms = T0 + 1
    assert clock.now() > readings[-1]


def test_persisted_last_restores_the_floor() -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    for _ in range(3):
        clock.now()
    saved = clock.last
    # restart on a machine whose clock is a minute behind
    restarted = HybridLogicalClock(ManualWallClock(T0 - 60_000), last=saved)
    assert restarted.last == saved
    assert restarted.now() > saved


def test_system_wall_clock_is_milliseconds_since_the_epoch() -> None:
    a = system_wall_ms()
    clock = HybridLogicalClock()
    assert abs(hlc_ms(clock.now()) - a) < 60_000
    assert 1_600_000_000_000 < a < 10_000_000_000_000


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.integers(-5000, 5000)),
            st.tuples(st.just("now"), st.integers(1, 5)),
            st.tuples(st.just("observe"), st.integers(-10_000, 10_000), st.integers(0, 3)),
        ),
        max_size=60,
    )
)
def test_readings_are_strictly_monotonic_and_pass_everything_observed(
    steps: list[tuple[str, ...]],
) -> None:
    wall = ManualWallClock(T0)
    clock = HybridLogicalClock(wall)
    issued: list[int] = []
    highest_seen = 0
    for step in steps:
        if step[0] == "tick":
            wall.now_ms += step[1]
        elif step[0] == "now":
            for _ in range(step[1]):
                reading = clock.now()
                assert reading > highest_seen
                assert reading >= hlc_pack(wall.now_ms)
                issued.append(reading)
                highest_seen = reading
        else:
            remote = hlc_pack(wall.now_ms + step[1], step[2])
            clock.observe(remote)
            highest_seen = max(highest_seen, remote)
        assert clock.last == highest_seen
    assert issued == sorted(set(issued))
