"""One gossip peer cannot end the node (issue 12), on real loopback sockets: a node starts
from whatever incarnation it persisted, a datagram that passes the HMAC but names a host
the resolver chokes on is dropped, and a flood of push-pull connections is cut off at a
bound while the node goes on."""

from __future__ import annotations

import functools
import logging
import random
import socket
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from kvs.clock import system_wall_ms
from kvs.config import Config, project
from kvs.net.codec import derive_key
from kvs.net.membership import MAX_PUSH_PULL_CONNECTIONS, Membership
from kvs.net.messages import MAX_INCARNATION, Ack, Alive, MemberInfo, Ping, Suspect
from kvs.net.swim_settings import SwimSettings
from kvs.net.transport import RealTransport, expected_error
from kvs.node import Node
from kvs.testing.ports import free_ports
from tests.support.config import make_config
from tests.support.wire import StampedCodec, seal_payload

SECRET = "membership-isolation-secret"
KEY = derive_key(SECRET, "gossip")
CODEC = StampedCodec(KEY, clock=system_wall_ms)
DEADLINE = 30  # seconds of real time for any test here


def seal(payload: bytes) -> bytes:
    """A datagram around any payload, sealed with the cluster's key (kvs.net.datagrams)."""
    assert KEY is not None
    return seal_payload(payload, KEY, system_wall_ms())


async def ask(sock: trio.socket.SocketType, data: bytes, to: tuple[str, int]) -> list[object]:
    """Send a datagram and return the messages of the first answer."""
    await sock.sendto(data, to)
    with trio.fail_after(5):
        answer, _ = await sock.recvfrom(2048)
    # A fresh replay window: nodes here draw nonces from the same seeded rng, test after test.
    return list(StampedCodec(KEY, clock=system_wall_ms).decode(answer))


@pytest.mark.parametrize("stored", [2**63 - 1, MAX_INCARNATION, -1, "x"])
async def test_a_node_starts_from_any_incarnation_it_persisted(
    tmp_path: Path, stored: object, caplog: pytest.LogCaptureFixture
) -> None:
    """2**63 - 1 is what a forged "dead" claim left persisted before the fix: start-up added
    one, and the node's first datagram to anyone failed to encode, at every restart. The
    known peers' addresses are read as warily."""
    http, gossip, sync = free_ports(3)
    config = make_config(
        tmp_path,
        node_id="n1",
        cluster_secret=SECRET,
        clustering_enabled=True,
        port=http,
        gossip_port=gossip,
        sync_port=sync,
    )
    node = Node(config, rng=random.Random(1))
    node.store = node.open_store()
    node.store.set_system_now("incarnation", stored)
    # Known peers from the last run, as no run of this version writes them (an old version
    # might have: it took any host a peer named).
    node.store.set_system_now("peers", ["x", ["a" * 64, 7946], ["127.0.0.1", 2**40], [1, 2]])
    with trio.fail_after(DEADLINE), caplog.at_level(logging.WARNING, logger="kvs.node"):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(node.run, http=False))
            assert node.membership is not None
            assert node.membership.core.me_info.incarnation == 1
            assert node.store.get_system("incarnation") == 1
            assert "starting again from 1" in caplog.text
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                answer = await ask(
                    sock, CODEC.encode([Ping(7, "peer", "n1")]), ("127.0.0.1", gossip)
                )
            assert Ack(7, "n1") in answer
            assert any(isinstance(m, Alive) and m.member.incarnation == 1 for m in answer)
            node.request_shutdown()


def me(name: str, port: int) -> MemberInfo:
    return MemberInfo(name, 1, 1, ("127.0.0.1", port), ("127.0.0.1", 1), ("127.0.0.1", 2))


async def start_membership(
    nursery: trio.Nursery, name: str = "m1", **kwargs: Any
) -> tuple[Membership, tuple[str, int]]:
    (port,) = free_ports(1)
    rng = random.Random(name)
    membership = Membership(
        me=me(name, port),
        config=project(SwimSettings, Config()),
        transport=RealTransport(),
        bind=("127.0.0.1", port),
        cluster_secret=SECRET,
        rng=rng,
        nonce=lambda: rng.randbytes(16),
        wall_ms=system_wall_ms,
        **kwargs,
    )
    address = await nursery.start(membership.run)
    return membership, address


HOSTILE_HOSTS = ["a" * 64, "a..b", "b.", "fe80::1%lo"]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
async def test_a_host_the_resolver_chokes_on_is_dropped_at_the_wire(host: str) -> None:
    """A ping-req (or an alive member) naming such a host made the node send to it: the
    resolver raised UnicodeError, not OSError, out of sendto, and the node exited."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            membership, address = await start_membership(nursery)
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                ping_req = msgpack.packb([[3, 5, "peer", "m2", [host, 7946]]])
                alive = msgpack.packb(
                    [[5, ["m3", 1, 1, [host, 1], ["127.0.0.1", 1], ["127.0.0.1", 1]]]]
                )
                for payload in (ping_req, alive):
                    await sock.sendto(seal(payload), address)
                answer = await ask(sock, CODEC.encode([Ping(8, "peer", "m1")]), address)
            assert Ack(8, "m1") in answer
            assert membership.counters["dropped_shape"] == 2
            assert set(membership.core.members) == {"m1"}
            nursery.cancel_scope.cancel()


async def test_a_flood_of_push_pull_connections_is_cut_off_at_a_bound() -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            membership, address = await start_membership(nursery)
            flood = [
                socket.create_connection(address) for _ in range(MAX_PUSH_PULL_CONNECTIONS + 8)
            ]
            try:
                while membership.counters["stream_dropped_refused"] < 8:
                    await trio.sleep(0.01)
                assert membership._serving == MAX_PUSH_PULL_CONNECTIONS
            finally:
                for conn in flood:
                    conn.close()
            while membership._serving:
                await trio.sleep(0.01)
            # ... and push-pulls are served again.
            other, _ = await start_membership(nursery, "m2")
            remote = await other.exchange(address)
            assert remote.source == "m1"
            assert membership.counters["push_pulls_served"] == 1
            nursery.cancel_scope.cancel()


async def test_refutations_are_persisted_latest_first_and_a_store_failure_is_fatal() -> None:
    """A burst of claims to refute costs a write or two, not one per datagram (no datagram
    waits for the disk); the store failing to persist ends the membership, on purpose."""
    written: list[int] = []
    release = trio.Event()

    async def persist(value: int) -> None:
        await release.wait()  # a slow disk
        written.append(value)
        if value > 20:
            raise RuntimeError("the store failed")

    with trio.fail_after(DEADLINE), pytest.raises(BaseException) as caught:
        async with trio.open_nursery() as nursery:
            membership, address = await start_membership(nursery, persist_incarnation=persist)
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                for incarnation in range(1, 11):
                    claim = CODEC.encode(
                        [Suspect("m1", incarnation, "peer"), Ping(incarnation, "peer", "m1")]
                    )
                    assert Ack(incarnation, "m1") in await ask(sock, claim, address)
                assert membership.core.me_info.incarnation == 11
                release.set()
                while not written or written[-1] != 11:
                    await trio.sleep(0.01)
                assert len(written) <= 2
                for incarnation in range(11, 30):
                    await sock.sendto(CODEC.encode([Suspect("m1", incarnation, "peer")]), address)
                await trio.sleep_forever()
    assert expected_error(caught.value, (RuntimeError,)) is not None


async def test_replayed_stale_and_old_layout_datagrams_are_dropped_and_counted() -> None:
    """A captured datagram sent again, one stamped outside the time window, and one in the
    previous (HMAC, clear text) layout: each is refused, counted by reason, and the node
    goes on answering."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            membership, address = await start_membership(nursery)
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                ping = CODEC.encode([Ping(9, "peer", "m1")])
                assert Ack(9, "m1") in await ask(sock, ping, address)
                await sock.sendto(ping, address)  # the capture, replayed
                await sock.sendto(ping, address)
                stale = CODEC.encode([Ping(10, "peer", "m1")], sent_ms=system_wall_ms() - 61_000)
                await sock.sendto(stale, address)
                await sock.sendto(b"KV\x81" + bytes(16) + msgpack.packb([[2, 1, "a"]]), address)
                assert Ack(11, "m1") in await ask(
                    sock, CODEC.encode([Ping(11, "p", "m1")]), address
                )
            counters = membership.stats()["counters"]
            assert isinstance(counters, dict)
            assert counters["dropped_replay"] == 2
            assert counters["dropped_stale"] == 1
            assert counters["dropped_version"] == 1
            nursery.cancel_scope.cancel()
