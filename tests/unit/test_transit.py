"""Encryption in transit: sealed datagrams against replay, keyrings, sealed frames, and the
keyring setting (issue 14). The wire layouts themselves are in tests/unit/test_wire.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.config import ConfigError, default_config_text, from_mapping, load
from kvs.net.codec import WireError, derive_key, derive_keys
from kvs.net.datagrams import MAX_DATAGRAM_BYTES, SEAL_OVERHEAD
from kvs.net.frames import FrameStream
from kvs.net.messages import Ack, Alive, MemberInfo, Ping
from kvs.net.replay import WINDOW_MS, ReplayWindow
from kvs.net.seeds import auth_header_value, verify_auth
from tests.support.wire import NOW_MS, StampedCodec, fresh_nonce

OLD, NEW, STRANGER = "old-secret-0123456789", "new-secret-9876543210", "stranger-secret-000"
BATCH = [Ping(1, "node-1", "node-2"), Ack(7, "node-3")]


def gossip(*secrets: str) -> StampedCodec:
    return StampedCodec(derive_keys(list(secrets), "gossip"))


def reason_of(call: Any) -> str | None:
    try:
        call()
    except WireError as exc:
        return exc.reason
    return None


# --- datagrams: keyring ---------------------------------------------------------------------------


def test_a_keyring_sends_with_its_first_secret_and_accepts_all() -> None:
    rotating = gossip(NEW, OLD)
    data = rotating.encode(BATCH)
    assert gossip(NEW).decode(data) == BATCH  # sealed with the first
    assert reason_of(lambda: gossip(OLD).decode(data)) == "auth"  # not with the second
    assert rotating.decode(gossip(OLD).encode(BATCH)) == BATCH
    assert rotating.decode(gossip(NEW).encode(BATCH)) == BATCH
    assert reason_of(lambda: rotating.decode(gossip(STRANGER).encode(BATCH))) == "auth"


def test_set_keys_rotates_a_live_codec() -> None:
    codec = gossip(OLD)
    codec.set_keys(derive_keys([NEW, OLD], "gossip"))
    assert gossip(NEW).decode(codec.encode(BATCH)) == BATCH
    assert codec.decode(gossip(OLD).encode(BATCH)) == BATCH
    codec.set_keys(derive_keys([NEW], "gossip"))
    assert reason_of(lambda: codec.decode(gossip(OLD).encode(BATCH))) == "auth"
    with pytest.raises(ValueError):
        codec.set_keys(())  # keyed to unkeyed is no rotation
    with pytest.raises(ValueError):
        codec.set_keys([derive_key(NEW, "gossip")] * 2)  # type: ignore[list-item]


def test_nothing_of_the_payload_is_readable_on_the_wire() -> None:
    marker = "marker-" + "q" * 20
    data = gossip(NEW).encode([Ping(1, marker, "node-2")])
    assert marker.encode() not in data and b"node-2" not in data
    # Unkeyed (no secret) is clear text: what the default config's generated secret avoids.
    assert marker.encode() in StampedCodec(None).encode([Ping(1, marker, "node-2")])


# --- datagrams: replay window -----------------------------------------------------------------------


def test_a_replayed_datagram_is_refused_once_accepted() -> None:
    sender, receiver = gossip(NEW), gossip(NEW)
    data = sender.encode(BATCH)
    assert receiver.decode(data) == BATCH
    assert reason_of(lambda: receiver.decode(data)) == "replay"
    assert reason_of(lambda: receiver.decode(data, now_ms=NOW_MS + WINDOW_MS - 1)) == "replay"
    assert reason_of(lambda: receiver.decode(data, now_ms=NOW_MS + WINDOW_MS + 1)) == "stale"
    # A datagram that failed (bad tag) takes no room: its nonce is not remembered.
    receiver = gossip(NEW)
    forged = sender.encode(BATCH)
    broken = forged[:-1] + bytes([forged[-1] ^ 1])
    assert reason_of(lambda: receiver.decode(broken)) == "auth"
    assert receiver.decode(forged) == BATCH


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (0, None),
        (-WINDOW_MS, None),
        (WINDOW_MS, None),
        (-WINDOW_MS - 1, "stale"),
        (WINDOW_MS + 1, "stale"),
        (-(10**12), "stale"),
    ],
)
def test_the_time_window_is_60_seconds_either_way(offset: int, reason: str | None) -> None:
    data = gossip(NEW).encode(BATCH, sent_ms=NOW_MS + offset)
    assert reason_of(lambda: gossip(NEW).decode(data, now_ms=NOW_MS)) == reason


def test_a_full_window_shrinks_instead_of_forgetting() -> None:
    window = ReplayWindow(capacity=3)
    for i, nonce in enumerate([b"a", b"b", b"c"]):
        window.admit(NOW_MS + i, nonce, NOW_MS)
    window.admit(NOW_MS + 3, b"d", NOW_MS)  # full: "a" is forgotten, the floor rises to it
    assert len(window) == 3 and window.floor_ms == NOW_MS
    assert reason_of(lambda: window.admit(NOW_MS, b"a", NOW_MS)) == "stale"  # not accepted again
    assert reason_of(lambda: window.admit(NOW_MS + 1, b"b", NOW_MS)) == "replay"
    window.admit(NOW_MS + 5, b"e", NOW_MS)
    assert reason_of(lambda: window.admit(NOW_MS + 1, b"z", NOW_MS)) == "stale"  # below floor


def test_the_window_holds_when_the_clock_steps_back() -> None:
    window = ReplayWindow()
    window.admit(NOW_MS, b"n", NOW_MS)
    window.admit(NOW_MS + 2 * WINDOW_MS, b"m", NOW_MS + 2 * WINDOW_MS)  # "n" expires
    assert len(window) == 1
    # The receiver's clock jumps back: "n" would be inside the window again, but not twice.
    assert reason_of(lambda: window.admit(NOW_MS, b"n", NOW_MS)) == "stale"


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.sampled_from([b"a", b"b", b"c", b"d", b"e"])),
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_no_nonce_is_ever_accepted_twice(events: list[tuple[int, bytes]], capacity: int) -> None:
    window = ReplayWindow(window_ms=100, capacity=capacity)
    accepted: list[tuple[int, bytes]] = []  # a replay repeats both: the time is sealed too
    for step, (sent, nonce) in enumerate(events):
        now = sent + (step % 7) * 10
        try:
            window.admit(sent, nonce, now)
        except WireError as exc:
            assert exc.reason in ("stale", "replay")
        else:
            accepted.append((sent, nonce))
        assert len(window) <= capacity
    assert len(accepted) == len(set(accepted))


def test_a_keyed_codec_needs_a_clock_and_a_nonce() -> None:
    codec = gossip(NEW)
    with pytest.raises(ValueError):
        super(StampedCodec, codec).encode(BATCH)  # no nonce
    with pytest.raises(ValueError):
        super(StampedCodec, codec).decode(codec.encode(BATCH))  # no now_ms
    with pytest.raises(ValueError):
        codec.encode(BATCH, nonce=b"short")
    assert fresh_nonce() != fresh_nonce()


# --- frames ---------------------------------------------------------------------------------------


class Tap(trio.abc.Stream):
    """A stream that records every byte sent through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner, self.sent = inner, bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def open_pair(
    client_secrets: list[str], server_secrets: list[str]
) -> tuple[FrameStream | WireError, FrameStream | WireError, Tap, Tap]:
    a, b = trio.testing.memory_stream_pair()
    tap_a, tap_b = Tap(a), Tap(b)
    out: dict[str, FrameStream | WireError] = {}

    async def side(name: str, opener: Any, stream: trio.abc.Stream, secrets: list[str]) -> None:
        keys = derive_keys(secrets, "sync")
        nonce = bytes([len(name)]) * 16
        try:
            out[name] = await opener(stream, keys, purpose="sync", nonce=nonce)
        except WireError as exc:
            out[name] = exc
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "server", FrameStream.server, tap_b, server_secrets)
        nursery.start_soon(side, "client", FrameStream.client, tap_a, client_secrets)
    return out["client"], out["server"], tap_a, tap_b


@pytest.mark.parametrize(
    ("client", "server"),
    [([NEW, OLD], [OLD, NEW]), ([OLD], [NEW, OLD]), ([NEW, OLD], [NEW]), ([OLD, NEW], [OLD])],
)
async def test_streams_between_keyrings_that_share_the_senders_key(
    client: list[str], server: list[str]
) -> None:
    c, s, tap_c, tap_s = await open_pair(client, server)
    assert isinstance(c, FrameStream) and isinstance(s, FrameStream)
    await c.send({"key": "secret-key-name", "value": "secret-value-text"})
    assert await s.receive() == {"key": "secret-key-name", "value": "secret-value-text"}
    await s.send(["token-abcdef"])
    assert await c.receive() == ["token-abcdef"]
    for marker in (b"secret-key-name", b"secret-value-text", b"token-abcdef"):
        assert marker not in tap_c.sent and marker not in tap_s.sent


@pytest.mark.parametrize(("client", "server"), [([NEW, OLD], [OLD]), ([STRANGER], [NEW, OLD])])
async def test_a_client_whose_first_key_the_server_lacks_fails_with_auth(
    client: list[str], server: list[str]
) -> None:
    c, s, _, _ = await open_pair(client, server)
    assert isinstance(c, WireError) and c.reason == "auth"
    assert isinstance(s, WireError) and s.reason == "auth"


async def test_a_version_1_hello_is_refused_as_version() -> None:
    a, b = trio.testing.memory_stream_pair()
    hello = msgpack.packb(["kvs-hello", 1, "sync", bytes(16), True, None], use_bin_type=True)
    await a.send_all(len(hello).to_bytes(4, "big") + hello)
    with pytest.raises(WireError) as err:
        await FrameStream.server(b, derive_keys([NEW], "sync"), purpose="sync", nonce=bytes(16))
    assert err.value.reason == "version"


# --- the seed lookup's header ---------------------------------------------------------------------


def test_the_seed_header_proves_the_first_secret_and_any_is_accepted() -> None:
    value = auth_header_value([NEW, OLD], NOW_MS)
    assert value == auth_header_value(NEW, NOW_MS)
    assert verify_auth([OLD, NEW], value, NOW_MS)
    assert verify_auth([OLD, NEW], auth_header_value(OLD, NOW_MS), NOW_MS)
    assert not verify_auth([OLD], value, NOW_MS)
    assert not verify_auth([OLD, NEW], auth_header_value(STRANGER, NOW_MS), NOW_MS)


# --- the setting ----------------------------------------------------------------------------------


def test_cluster_secret_takes_a_string_or_a_keyring() -> None:
    base = {"node_id": "node-1"}
    assert from_mapping({**base, "cluster_secret": "one"}).cluster_secrets == ("one",)
    assert from_mapping({**base, "cluster_secret": ""}).cluster_secrets == ()
    config = from_mapping({**base, "cluster_secret": [NEW, OLD]})
    assert config.cluster_secrets == (NEW, OLD)
    assert NEW not in repr(config) and OLD not in repr(config)


@pytest.mark.parametrize(
    "value", [[], [NEW, NEW], [NEW, ""], [NEW, 12345], {"a": NEW}, 424242, [[NEW]]]
)
def test_a_bad_keyring_names_the_key_and_never_a_secret(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"node_id": "node-1", "cluster_secret": value})
    message = str(info.value)
    assert "cluster_secret" in message and "\n" not in message
    assert NEW not in message and "12345" not in message and "424242" not in message


def test_sealed_datagrams_keep_the_mtu_budget_with_piggybacking() -> None:
    """The SWIM core packs gossip behind a probe up to the limit: sealed, it stays within
    1400 bytes, and nearly fills it (the seal's 39 bytes come out of the payload)."""
    codec = gossip(NEW)
    more = [
        Alive(MemberInfo(f"node-{i}", i, i, ("10.0.0.1", 1), ("10.0.0.1", 2), ("h", 3)))
        for i in range(80)
    ]
    data, used = codec.pack([Ping(1, "node-1", "node-2")], more)
    assert MAX_DATAGRAM_BYTES - 100 < len(data) <= MAX_DATAGRAM_BYTES and 0 < used < 80
    assert codec.overhead == 3 + SEAL_OVERHEAD == 39
    assert codec.decode(data) == [Ping(1, "node-1", "node-2"), *more[:used]]


def test_a_joiner_config_holds_the_whole_keyring(tmp_path: Path) -> None:
    """`kvs join` mid-rotation writes the keyring the seed answered with (a list)."""
    path = tmp_path / "node.yaml"
    path.write_text(default_config_text(node_id="n4", cluster_secret=[NEW, OLD]))
    assert load(path).cluster_secrets == (NEW, OLD)
