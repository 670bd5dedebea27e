"""kvs.testing.network and kvs.testing.harness: the simulated network does what the faults
say, and a seed replays exactly; plus RealTransport on loopback, the production twin of
SimTransport. (The harness's time limits: test_sim_limits.py.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from trio._core import _run as trio_run_internals

from kvs.net.transport import Address, RealTransport, Transport
from kvs.testing.harness import SEED_ENV, run_simulation, seed_from_env, seeds_from_env
from kvs.testing.network import SimNetwork
from kvs.testing.sockets import SimDatagramEndpoint

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
PORT = 7946
SYNC_PORT = 7947

Log = list[tuple[float, bytes, Address]]


async def bind(net: SimNetwork, host: str, port: int = PORT) -> SimDatagramEndpoint:
    return await net.transport(host).bind_datagram((host, port))


async def drain_into(endpoint: SimDatagramEndpoint, log: Log) -> None:
    """Record (arrival time, data, sender) until cancelled."""
    while True:
        data, src = await endpoint.receive()
        log.append((trio.current_time(), data, src))


async def with_receiver(
    endpoint: SimDatagramEndpoint, body: Callable[[], Awaitable[None]], settle: float = 5.0
) -> Log:
    """Run `body` while `endpoint` is drained, let in-flight traffic land, return the log."""
    log: Log = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_into, endpoint, log)
        await body()
        await trio.sleep(settle)
        nursery.cancel_scope.cancel()
    return log


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


# --- datagrams ----------------------------------------------------------------------------------


def test_datagram_arrives_exactly_after_the_link_latency() -> None:
    async def main(net: SimNetwork) -> list[tuple[float, float, bytes, Address]]:
        a, b = await bind(net, A), await bind(net, B)
        net.set_link(B, A, latency=0.05)  # directed: only B → A is faster
        results = []
        for src, dst in ((a, b), (b, a)):
            await trio.sleep(1.0)
            sent_at = trio.current_time()
            await src.send(b"hello", dst.address)
            data, sender = await dst.receive()
            results.append((sent_at, trio.current_time(), data, sender))
        return results

    there, back = run_simulation(main, seed=1, latency=0.25)
    assert there[1] == pytest.approx(there[0] + 0.25)
    assert there[2:] == (b"hello", (A, PORT))
    assert back[1] == pytest.approx(back[0] + 0.05)
    assert back[2:] == (b"hello", (B, PORT))


def test_loss_rate_matches_the_setting() -> None:
    async def main(net: SimNetwork) -> tuple[int, int, int]:
        a, b = await bind(net, A), await bind(net, B)

        async def send_many() -> None:
            for i in range(2000):
                await a.send(str(i).encode(), b.address)
                await trio.sleep(0.001)

        log = await with_receiver(b, send_many)
        counters = net.counters(A)
        return len(log), counters.datagrams_dropped, net.drops.get("loss", 0)

    delivered, dropped, lost = run_simulation(main, seed=2, loss=0.2)
    assert 0.16 < 1 - delivered / 2000 < 0.24
    assert dropped == lost == 2000 - delivered


@pytest.mark.parametrize(("duplicate", "low", "high"), [(0.0, 500, 500), (1.0, 1000, 1000)])
def test_duplication_delivers_extra_copies(duplicate: float, low: int, high: int) -> None:
    async def main(net: SimNetwork) -> tuple[int, int]:
        a, b = await bind(net, A), await bind(net, B)

        async def send_many() -> None:
            for i in range(500):
                await a.send(str(i).encode(), b.address)

        log = await with_receiver(b, send_many)
        assert {data for _, data, _ in log} == {str(i).encode() for i in range(500)}
        return len(log), net.counters(A).datagrams_duplicated

    delivered, duplicated = run_simulation(main, seed=3, duplicate=duplicate, jitter=0.01)
    assert low <= delivered <= high
    assert duplicated == delivered - 500


def test_partial_duplication_is_roughly_the_probability() -> None:
    async def main(net: SimNetwork) -> int:
        a, b = await bind(net, A), await bind(net, B)

        async def send_many() -> None:
            for i in range(1000):
                await a.send(str(i).encode(), b.address)
                await trio.sleep(0.001)  # all at once would overflow the receive queue

        return len(await with_receiver(b, send_many))

    assert 1230 < run_simulation(main, seed=4, duplicate=0.3) < 1370


@pytest.mark.parametrize("jitter", [0.0, 0.05])
def test_jitter_reorders_datagrams_and_no_jitter_keeps_order(jitter: float) -> None:
    async def main(net: SimNetwork) -> list[int]:
        a, b = await bind(net, A), await bind(net, B)

        async def send_numbered() -> None:
            for i in range(100):
                await a.send(str(i).encode(), b.address)
                await trio.sleep(0.001)

        return [int(data) for _, data, _ in await with_receiver(b, send_numbered)]

    order = run_simulation(main, seed=5, latency=0.01, jitter=jitter)
    assert sorted(order) == list(range(100))
    if jitter:
        assert order != sorted(order)
    else:
        assert order == sorted(order)


def test_full_receive_queue_drops_and_counts() -> None:
    async def main(net: SimNetwork) -> None:
        a, b = await bind(net, A), await bind(net, B)
        for i in range(10):
            await a.send(str(i).encode(), b.address)
        await trio.sleep(1)
        assert net.counters(B).receive_overflows == 6
        assert net.counters(B).datagrams_delivered == 4
        assert net.drops == {"overflow": 6}
        assert [(await b.receive())[0] for _ in range(4)] == [b"0", b"1", b"2", b"3"]

    run_simulation(main, seed=6, queue_size=4)


def test_ports_bind_like_sockets() -> None:
    async def main(net: SimNetwork) -> None:
        transport: Transport = net.transport(A)  # SimTransport satisfies the protocol
        first = await transport.bind_datagram(("0.0.0.0", 0))
        second = await transport.bind_datagram((A, 0))
        assert (first.address, second.address) == ((A, 49152), (A, 49153))
        await transport.bind_datagram((A, PORT))
        with pytest.raises(OSError) as taken:
            await transport.bind_datagram((A, PORT))
        assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as foreign:
            await transport.bind_datagram((B, PORT))
        assert foreign.value.errno == errno.EADDRNOTAVAIL
        first.close()
        with pytest.raises(trio.ClosedResourceError):
            await first.send(b"x", second.address)
        with pytest.raises(OSError):
            await second.send(b"x" * 70_000, first.address)

    run_simulation(main, seed=7)


def test_sending_without_a_running_network_is_an_error() -> None:
    async def main() -> None:
        net = SimNetwork(__import__("random").Random(0))
        a = await bind(net, A)
        with pytest.raises(RuntimeError, match="not running"):
            await a.send(b"x", (B, PORT))

    trio.run(main)


# --- partitions ---------------------------------------------------------------------------------


def test_two_way_partition_blocks_both_directions_until_heal() -> None:
    async def main(net: SimNetwork) -> None:
        ends = {host: await bind(net, host) for host in (A, B, C)}
        logs: dict[str, Log] = {host: [] for host in ends}
        async with trio.open_nursery() as nursery:
            for host, endpoint in ends.items():
                nursery.start_soon(drain_into, endpoint, logs[host])
            net.partition([A], [B, C])
            await ends[A].send(b"a>b", (B, PORT))
            await ends[B].send(b"b>a", (A, PORT))
            await ends[B].send(b"b>c", (C, PORT))  # same side: unaffected
            await trio.sleep(1)
            assert [data for _, data, _ in logs[C]] == [b"b>c"]
            assert logs[A] == logs[B] == []
            assert net.drops == {"partition": 2}
            net.heal()
            await ends[A].send(b"a>b", (B, PORT))
            await ends[B].send(b"b>a", (A, PORT))
            await trio.sleep(1)
            assert [data for _, data, _ in logs[A]] == [b"b>a"]
            assert [data for _, data, _ in logs[B]] == [b"a>b"]
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=8)


def test_one_way_partition_blocks_only_a_to_b() -> None:
    async def main(net: SimNetwork) -> None:
        a, b = await bind(net, A), await bind(net, B)
        net.partition([A], [B], one_way=True)
        await a.send(b"lost", b.address)
        await b.send(b"arrives", a.address)
        with trio.fail_after(1):
            assert await a.receive() == (b"arrives", (B, PORT))
        await trio.sleep(1)
        assert net.drops == {"partition": 1}

    run_simulation(main, seed=9)


def test_partition_drops_datagrams_already_in_flight() -> None:
    async def main(net: SimNetwork) -> None:
        a, b = await bind(net, A), await bind(net, B)
        await a.send(b"in flight", b.address)
        await trio.sleep(0.5)
        net.partition([A], [B])
        await trio.sleep(1)
        assert net.drops == {"partition": 1}
        assert net.counters(B).datagrams_delivered == 0

    run_simulation(main, seed=10, latency=1.0)


# --- crash and restart --------------------------------------------------------------------------


def test_crash_cancels_the_host_and_drops_its_traffic_and_restart_recovers() -> None:
    async def main(net: SimNetwork) -> None:
        a = await bind(net, A)
        received: Log = []
        stopped = trio.Event()

        async def node_b(task_status: trio.TaskStatus[None]) -> None:
            with net.host_scope(B):
                try:
                    endpoint = await bind(net, B)
                    task_status.started()
                    await drain_into(endpoint, received)
                finally:
                    stopped.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(node_b)
            old = net.transport(B)
            await a.send(b"before", (B, PORT))
            await trio.sleep(1)
            net.crash(B)
            await stopped.wait()  # the crash cancelled the node; nothing raised
            await a.send(b"while down", (B, PORT))
            await trio.sleep(1)
            assert [data for _, data, _ in received] == [b"before"]
            assert net.drops == {"host-down": 1}
            assert not net.is_up(B)
            with pytest.raises(RuntimeError):
                net.transport(B)
            net.restart(B)
            with pytest.raises(OSError):
                await old.bind_datagram((B, PORT))  # a transport from before the crash is dead
            stopped = trio.Event()
            await nursery.start(node_b)  # the same port binds again
            await a.send(b"after", (B, PORT))
            await trio.sleep(1)
            assert [data for _, data, _ in received] == [b"before", b"after"]
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=11)


def test_crash_without_a_host_scope_closes_endpoints_and_silences_sends() -> None:
    async def main(net: SimNetwork) -> None:
        a, b = await bind(net, A), await bind(net, B)

        async def crash_soon() -> None:
            await trio.sleep(1)
            net.crash(B)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_soon)
            with pytest.raises(trio.ClosedResourceError):
                await b.receive()
        await b.send(b"from the dead", a.address)  # vanishes, does not raise
        await trio.sleep(1)
        assert net.counters(A).datagrams_delivered == 0
        assert net.drops == {"sender-down": 1}

    run_simulation(main, seed=12)


# --- streams ------------------------------------------------------------------------------------


async def echo(stream: trio.abc.Stream, peer: Address) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data.upper())


def test_stream_connect_and_exchange_take_the_link_latency() -> None:
    async def main(net: SimNetwork) -> None:
        peers: list[Address] = []
        ended = trio.Event()

        async def handler(stream: trio.abc.Stream, peer: Address) -> None:
            peers.append(peer)
            await echo(stream, peer)
            ended.set()

        async with trio.open_nursery() as nursery:
            address = await nursery.start(net.transport(B).serve_stream, (B, SYNC_PORT), handler)
            assert address == (B, SYNC_PORT)
            start = trio.current_time()
            stream = await net.transport(A).connect_stream(address)
            assert trio.current_time() - start == pytest.approx(0.2)  # one round trip
            start = trio.current_time()
            await stream.send_all(b"ping")
            assert await receive_exactly(stream, 4) == b"PING"
            assert trio.current_time() - start == pytest.approx(0.2)
            assert peers == [(A, 49152)]
            await stream.aclose()
            await ended.wait()  # the server saw EOF
            assert net.counters(A).stream_bytes_sent == net.counters(B).stream_bytes_delivered == 4
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=13, latency=0.1)


def test_stream_bytes_stay_in_order_despite_jitter() -> None:
    async def main(net: SimNetwork) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(net.transport(B).serve_stream, (B, SYNC_PORT), echo)
            stream = await net.transport(A).connect_stream(address)
            expected = b"".join(b"%03d," % i for i in range(200))
            for i in range(200):
                await stream.send_all(b"%03d," % i)
            assert await receive_exactly(stream, len(expected)) == expected.upper()
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=14, latency=0.01, jitter=0.05, loss=0.5, duplicate=0.5)


def test_connect_fails_after_the_timeout_when_partitioned_or_down() -> None:
    async def main(net: SimNetwork) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(net.transport(B).serve_stream, (B, SYNC_PORT), echo)
            client = net.transport(A)
            for cut, undo in (
                (lambda: net.partition([A], [B], one_way=True), net.heal),
                (lambda: net.partition([B], [A], one_way=True), net.heal),
                (lambda: net.crash(B), lambda: net.restart(B)),
            ):
                cut()
                start = trio.current_time()
                with pytest.raises(OSError) as failure:
                    await client.connect_stream(address)
                assert failure.value.errno == errno.ETIMEDOUT
                assert trio.current_time() - start == pytest.approx(3.0)
                undo()
            assert net.counters(A).stream_connect_failures == 3
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=15, connect_timeout=3.0)


def test_connect_to_a_closed_port_is_refused_after_a_round_trip() -> None:
    async def main(net: SimNetwork) -> None:
        net.transport(B)
        start = trio.current_time()
        with pytest.raises(ConnectionRefusedError):
            await net.transport(A).connect_stream((B, SYNC_PORT))
        assert trio.current_time() - start == pytest.approx(0.1)

    run_simulation(main, seed=16, latency=0.05)


def test_partition_severs_an_open_stream_silently() -> None:
    async def main(net: SimNetwork) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(net.transport(B).serve_stream, (B, SYNC_PORT), echo)
            stream = await net.transport(A).connect_stream(address)
            await stream.send_all(b"one")
            assert await receive_exactly(stream, 3) == b"ONE"
            net.partition([A], [B], one_way=True)
            net.heal()  # healing does not revive a severed connection
            await stream.send_all(b"two")  # does not raise: the bytes vanish
            with trio.move_on_after(10) as timeout:
                await stream.receive_some()
            assert timeout.cancelled_caught  # the reader's own timeout is what notices
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=17)


def test_crash_severs_streams_and_breaks_the_crashed_side() -> None:
    async def main(net: SimNetwork) -> None:
        errors: list[type[BaseException]] = []

        async def hold(stream: trio.abc.Stream, peer: Address) -> None:
            for operation in (stream.receive_some, lambda: stream.send_all(b"x")):
                try:
                    await operation()
                except trio.BrokenResourceError as exc:
                    errors.append(type(exc))

        async with trio.open_nursery() as nursery:
            # No host_scope: the server keeps running after the crash and sees the breakage.
            address = await nursery.start(net.transport(B).serve_stream, (B, SYNC_PORT), hold)
            stream = await net.transport(A).connect_stream(address)
            await trio.sleep(1)
            net.crash(B)
            await trio.sleep(0.1)
            assert errors == [trio.BrokenResourceError] * 2  # the crashed side's receive, send
            await stream.send_all(b"anyone?")  # the survivor's send vanishes
            with trio.move_on_after(5) as timeout:
                await stream.receive_some()
            assert timeout.cancelled_caught
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=18)


# --- determinism --------------------------------------------------------------------------------


HOSTS = [f"10.0.0.{i}" for i in range(1, 7)]


async def chatter(net: SimNetwork) -> dict[str, Any]:
    """Six nodes, each with a sender and a receiver task, all waking at the same instants: the
    order in which Trio runs them decides which send draws which delay."""
    log: list[tuple[float, str, str, bytes]] = []
    endpoints = {host: await bind(net, host) for host in HOSTS}

    async def receiver(host: str) -> None:
        while True:
            data, src = await endpoints[host].receive()
            log.append((trio.current_time(), host, src[0], data))

    async def sender(host: str, rng: Any) -> None:
        for i in range(40):
            await trio.sleep(0.01)
            dst = rng.choice([h for h in HOSTS if h != host])
            await endpoints[host].send(b"%s/%d" % (host.encode(), i), (dst, PORT))

    async with trio.open_nursery() as nursery:
        for host in HOSTS:
            nursery.start_soon(receiver, host)
        async with trio.open_nursery() as senders:
            for host in HOSTS:
                senders.start_soon(sender, host, net.fork_rng())
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    counters = [net.counters(host) for host in HOSTS]
    assert sum(c.datagrams_sent + c.datagrams_duplicated for c in counters) == sum(
        c.datagrams_delivered + c.datagrams_dropped for c in counters
    )
    return {"log": log, "trace": net.trace, "drops": net.drops}


CHATTER = {"latency": 0.005, "jitter": 0.02, "loss": 0.1, "duplicate": 0.05, "trace": True}


def test_same_seed_replays_the_same_deliveries() -> None:
    first = run_simulation(chatter, seed=42, **CHATTER)
    second = run_simulation(chatter, seed=42, **CHATTER)
    assert len(first["log"]) > 150
    assert first == second


def test_different_seed_gives_a_different_run() -> None:
    assert run_simulation(chatter, seed=42, **CHATTER) != run_simulation(
        chatter, seed=43, **CHATTER
    )


def test_scheduler_order_matters_and_is_pinned_by_the_harness() -> None:
    """Same network seed, another scheduler seed: a different run. So the replay above holds
    only because the harness pins Trio's scheduler."""
    base = run_simulation(chatter, seed=42, **CHATTER)
    assert run_simulation(chatter, seed=42, scheduler_seed=1, **CHATTER) != base
    assert run_simulation(chatter, seed=42, scheduler_seed=1, **CHATTER) == run_simulation(
        chatter, seed=42, scheduler_seed=1, **CHATTER
    )


def test_harness_restores_trio_scheduler_state() -> None:
    flag = trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING
    state = trio_run_internals._r.getstate()

    async def main(net: SimNetwork) -> None:
        assert trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING
        await trio.sleep(1)

    run_simulation(main, seed=1)
    assert trio_run_internals._ALLOW_DETERMINISTIC_SCHEDULING is flag
    assert trio_run_internals._r.getstate() == state


def test_a_failing_simulation_reports_its_seed() -> None:
    async def main(net: SimNetwork) -> None:
        await trio.sleep(1)
        raise AssertionError("replicas diverged")

    with pytest.raises(AssertionError, match="replicas diverged") as failure:
        run_simulation(main, seed=1234)
    assert f"rerun with {SEED_ENV}=1234" in "\n".join(failure.value.__notes__)


def test_seed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert seed_from_env(7) == 7
    assert seeds_from_env([1, 2]) == [1, 2]
    monkeypatch.setenv(SEED_ENV, "99")
    assert seed_from_env(7) == 99
    assert seeds_from_env([1, 2]) == [99]
    monkeypatch.setenv(SEED_ENV, "nope")
    with pytest.raises(ValueError, match=SEED_ENV):
        seed_from_env(7)
    assert os.environ[SEED_ENV] == "nope"


# --- the real thing -----------------------------------------------------------------------------


async def test_real_transport_over_loopback_udp_and_tcp() -> None:
    transport: Transport = RealTransport()
    a = await transport.bind_datagram(("127.0.0.1", 0))
    b = await transport.bind_datagram(("127.0.0.1", 0))
    try:
        assert a.address[1] != 0
        with trio.fail_after(5):
            await a.send(b"hello", b.address)
            assert await b.receive() == (b"hello", a.address)
    finally:
        a.close()
        b.close()

    async with trio.open_nursery() as nursery:
        address = await nursery.start(transport.serve_stream, ("127.0.0.1", 0), echo)
        assert address[1] != 0
        with trio.fail_after(5):
            stream = await transport.connect_stream(address)
            async with stream:
                await stream.send_all(b"ping")
                assert await receive_exactly(stream, 4) == b"PING"
        nursery.cancel_scope.cancel()
