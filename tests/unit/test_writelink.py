"""The write link (kvs/api/writelink.py): an in-process node's end on a real Unix socket, a
worker's end (`WriteLink`) calling it, and hostile frames on the socket. Every outcome must
match what the node's store holds; anything malformed is refused, counted and closes only
its own connection."""

from __future__ import annotations

import contextlib
import errno
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from kvs.api.errors import ApiError
from kvs.api.writelink import (
    LINK_VERSION,
    WRITES_SOCKET,
    BadFrame,
    WriteLink,
    WriteLinkServer,
    decode_write,
    encode_write,
)
from kvs.node import Node
from kvs.server import ApiServer
from kvs.store import Conflict, Delete, NotFound, Put, Unchanged, Written
from kvs.testing.faults import DiskFaults
from tests.support.config import make_config


async def _start(tmp_path: Path, nursery: trio.Nursery, **overrides: Any) -> tuple[Node, Any]:
    node = Node(make_config(tmp_path, **overrides), api=ApiServer(), rng=random.Random(3))
    await nursery.start(lambda task_status: node.run(http=False, task_status=task_status))
    server = WriteLinkServer(node)
    await nursery.start(server.serve)
    return node, server


def _link(node: Node) -> WriteLink:
    return WriteLink(node.config.data_path / WRITES_SOCKET, node.config)


async def test_outcomes_are_what_the_node_stored(tmp_path: Path, nursery: trio.Nursery) -> None:
    node, server = await _start(tmp_path, nursery)
    link = _link(node)
    (put,) = await link.client_write([Put("a/b", b'{"x":1}', None, None, "u1", "g1")], "u1")
    assert isinstance(put, Written)
    stored = node.store.get("a/b")
    assert stored is not None and put.record.version == stored.version
    assert (put.record.owner, put.record.group, put.record.value) == ("u1", "g1", b'{"x":1}')
    assert put.record.created_at == stored.created_at

    stale = Put("a/b", b"2", None, "not-the-uuid")
    (refused,) = await link.client_write([stale], "u1")
    assert refused == Conflict("a/b", stored.version.uuid)
    assert node.store.get("a/b").value == b'{"x":1}'  # type: ignore[union-attr]

    outcomes = await link.client_write(
        [Put("c", b"3", 2**46), Delete("a/b"), Delete("gone", must_exist=False), Delete("gone")],
        "u1",
        "batch",
    )
    assert isinstance(outcomes[0], Written) and outcomes[0].record.expires_at == 2**46
    assert isinstance(outcomes[1], Written) and outcomes[1].record.value is None
    assert outcomes[2:] == [Unchanged("gone"), NotFound("gone")]
    assert node.store.get("a/b").deleted  # type: ignore[union-attr]
    assert server.counters == {"frames": 3, "refused_frames": 0, "errors": 0}
    assert link.counters == {"writes": 3, "failed": 0}
    await link.aclose()


async def test_the_node_refuses_as_it_would_over_http(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A read-only node says so (503 and its mode); a disk that refuses the commit is a 503
    "not made durable" with Retry-After, and nothing is written."""
    node, _ = await _start(tmp_path / "ro", nursery, read_only=True)
    with pytest.raises(ApiError) as refused:
        await _link(node).client_write([Put("k", b"1")], "")
    assert refused.value.status == 503 and refused.value.extra == {"mode": "read-only"}

    disk = DiskFaults(random.Random(0), kinds=(errno.EIO,))
    config = make_config(tmp_path / "disk")
    failing = Node(config, api=ApiServer(), rng=random.Random(4), commit_gate=disk)
    await nursery.start(lambda task_status: failing.run(http=False, task_status=task_status))
    await nursery.start(WriteLinkServer(failing).serve)
    disk.rate = 1.0
    with pytest.raises(ApiError) as failed:
        await _link(failing).client_write([Put("k", b"1")], "")
    assert failed.value.status == 503 and failed.value.headers == {"Retry-After": "1"}
    assert "not made durable" in failed.value.message
    assert failing.store.get("k") is None


async def test_hostile_frames_close_only_their_connection(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, server = await _start(tmp_path, nursery)
    path = str(node.config.data_path / WRITES_SOCKET)
    rng = random.Random(1815)

    def framed(payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + payload

    good = [LINK_VERSION, "u", "", [[0, "k", b"1", None, None, "", ""]]]
    hostile = [
        (2**32 - 1).to_bytes(4, "big"),  # a length over the limit
        framed(b"\xc1\xc1\xc1"),  # not msgpack
        framed(msgpack.packb([LINK_VERSION + 1, "u", "", []])),  # another version
        framed(msgpack.packb({"ops": 1})),
        framed(msgpack.packb([LINK_VERSION, "u", "", []])),  # no op at all
        framed(msgpack.packb([LINK_VERSION, "u", "", [[0, "../x", b"1", None, None, "", ""]]])),
        framed(msgpack.packb([LINK_VERSION, "u", "", [[0, "k", b"1", 2**63, None, "", ""]]])),
        framed(msgpack.packb([LINK_VERSION, "u", "", [[0, "k", b"", None, None, "", ""]]])),
        framed(msgpack.packb([LINK_VERSION, "u", "", [[1, "k", 1]]])),
        framed(msgpack.packb([LINK_VERSION, "u" * 5000, "", [[1, "k", True]]])),
        framed(msgpack.packb(good))[:9],  # cut short, then the end of the stream
    ]
    for _ in range(20):  # seeded mutations of a good frame
        payload = bytearray(msgpack.packb(good))
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        hostile.append(framed(bytes(payload)))
    for data in hostile:
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            with trio.fail_after(10):  # the node answers or closes; it never hangs up on us
                while await stream.receive_some(65536):
                    pass
    assert server.counters["errors"] == 0
    # All refused but the one cut short: a stream that ends inside a frame is a worker that
    # went away (killed mid-request), not a malformed frame.
    assert server.counters["refused_frames"] >= 10
    refused = server.counters["refused_frames"]
    cut = await trio.open_unix_socket(path)
    async with cut:
        await cut.send_all(framed(msgpack.packb(good))[:9])
        await cut.send_eof()
        with trio.fail_after(10):
            assert await cut.receive_some(100) == b""
    assert server.counters["refused_frames"] == refused  # a worker that went away
    # A connection that stalls mid-frame holds nothing but itself.
    stalled = await trio.open_unix_socket(path)
    await stalled.send_all(framed(msgpack.packb(good))[:6])
    link = _link(node)
    (written,) = await link.client_write([Put("after", b"1")], "")
    assert isinstance(written, Written) and node.store.get("after") is not None
    await stalled.aclose()


async def test_a_cut_conversation_is_a_503_and_never_reused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A cancelled call closes its connection (the pool never hands out a half-read one);
    a node that is gone is a 503 with Retry-After: not acknowledged."""
    node, _ = await _start(tmp_path, nursery)
    link = _link(node)
    await link.client_write([Put("k", b"1")], "")
    assert len(link._idle) == 1
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.client_write([Put("k", b"2")], "")
    assert link._idle == []
    assert isinstance((await link.client_write([Put("k", b"3")], ""))[0], Written)

    nowhere = WriteLink(tmp_path / "no.sock", node.config)
    with pytest.raises(ApiError) as gone:
        await nowhere.client_write([Put("k", b"4")], "")
    assert gone.value.status == 503 and gone.value.headers == {"Retry-After": "1"}
    assert nowhere.counters["failed"] == 1


def test_decode_write_refuses_every_shape_but_its_own() -> None:
    """Seeded random structures: `decode_write` returns ops or raises BadFrame, nothing else."""
    ops = [Put("a", b"1", 5, "etag", "o", "g"), Delete("b"), Delete("c", must_exist=False)]
    frame = encode_write(ops, "user", "batch")
    request = msgpack.unpackb(frame[4:], raw=False)
    assert decode_write(request, 100) == (ops, "user", "batch")
    with pytest.raises(BadFrame):
        decode_write(request, 0)  # a value over the size limit
    rng = random.Random(42)

    def anything(depth: int = 0) -> Any:
        pick = rng.randrange(9 if depth < 3 else 6)
        choices: list[Any] = [None, True, rng.randint(-(2**63), 2**64 - 1), "k", b"v", 1.5]
        if pick < 6:
            return choices[pick]
        if pick < 8:
            return [anything(depth + 1) for _ in range(rng.randrange(8))]
        return {str(i): anything(depth + 1) for i in range(rng.randrange(3))}

    for _ in range(3000):
        candidate = anything()
        if rng.random() < 0.5:
            candidate = [LINK_VERSION, "u", "", [anything(1) for _ in range(rng.randrange(3))]]
        with contextlib.suppress(BadFrame):
            decode_write(candidate, 100)


async def test_a_malformed_answer_is_a_503_not_a_crash(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A worker whose node answers nonsense (a bug there, or something else on the socket)
    answers its client 503 and drops that connection; the next call opens a fresh one."""
    path = str(tmp_path / "fake.sock")
    answers = [
        b"\x00\x00\x00\x01\xc1",  # not msgpack
        b"\x00\x00\x00\x02\x92\x00",  # [OK] with no outcomes
        msgpack.packb([0, [[9]]]),  # an unknown outcome
        msgpack.packb([0, [[0, 1]]]),  # a WRITTEN too short
        msgpack.packb([0, [[0], [0]]]),  # two outcomes for one op
        msgpack.packb([1, 503]),  # a refusal too short
        msgpack.packb([1, 200, "fine", {}, {}]),  # a "refusal" that is no error
        msgpack.packb([1, 503, "m", {"key": b"\xff"}, {}]),  # a detail JSON cannot carry
        msgpack.packb([1, 503, "m", {}, [1, 2]]),  # headers that are not a map
        msgpack.packb([1, 503, "m", {"a": 1}, {"Retry-After": 1}]),  # a header that is no text
        msgpack.packb("ok"),
        b"\xff\xff\xff\xff",  # a length over the limit
    ]
    connections = 0

    async def fake_node(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        answer = answers[connections - 1]
        framed = (
            answer if answer[:1] in (b"\x00", b"\xff") else len(answer).to_bytes(4, "big") + answer
        )
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(framed)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.receive_some(65536)  # until the worker hangs up

    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    nursery.start_soon(trio.serve_listeners, fake_node, [trio.SocketListener(sock)])
    link = WriteLink(path, make_config(tmp_path))
    for _ in answers:
        with pytest.raises(ApiError) as refused:
            await link.client_write([Put("k", b"1")], "")
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        assert link._idle == []
    assert connections == len(answers) and link.counters["failed"] == len(answers)
