"""Writes from an HTTP worker process to its node's one writer: the write link.

A worker answers `PUT`/`DELETE /kv/{key}` and `POST /kv/_batch` itself up to the point of
writing: it reads and parses the body, authenticates, checks scopes and permission bits and
builds the store ops, exactly as the node would (the same handlers run). Only the ops travel
to the node, over a private Unix socket (`WRITES_SOCKET` in the data dir, 0600), as
length-prefixed msgpack frames; the node writes them with `client_write` -- its writer,
HLC, group commit, Merkle tree, push replication, watchers, audit chain and If-Match, all in
one place -- and answers with the outcomes. So a worker's write costs the node a frame and
a transaction instead of a whole HTTP request.

Frames: a 4-byte big-endian length, then msgpack. One request at a time per connection; a
worker keeps a pool of connections. Why not the project's `FrameStream` (kvs/net/frames.py),
which frames the same way: its handshake, locks and per-frame deadlines are for peers on a
network, and cost a write ~100 µs more per round trip here (measured, both ends in one
process: 246 against 147 µs), on the path of every write a worker answers; this link's
other end is a process of the same user on the same host.

    request  [LINK_VERSION, user, detail, [op, ...]]
             op: [PUT, key, value, expires_at, if_match, owner, group] | [DELETE, key, must_exist]
    answer   [OK, [outcome, ...]]   outcome: [WRITTEN, hlc, origin_joined, origin, uuid,
                                              expires_at, owner, group, permissions, created_at]
                                             | [CONFLICT, current_uuid] | [NOT_FOUND] | [UNCHANGED]
             [REFUSED, status, message, extra, headers]   (the node's ApiError: 503 read-only,
                                                           syncing or stale; 503 not durable)

Trust: only processes of the node's user can reach the socket, the same processes that could
open its LMDB files. The node still checks every frame's shape and every key, size and
number (a worker's bug must not reach the store), and refuses, counts and closes what does
not fit; it does not parse the JSON values again (the worker did).

Rule: a write whose answer does not come back (the node stopped, the connection broke) is
answered 503 -- "not acknowledged", never retried by the worker: it may or may not have
been applied, as with any client whose connection breaks mid-request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import trio
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from kvs.api.batch import MAX_BATCH_OPS, batch_body_limit
from kvs.api.errors import ApiError, not_durable
from kvs.api.guard import require_writable
from kvs.logs import LogLimiter
from kvs.model import InvalidKey, Record, Version, validate_key
from kvs.store import (
    Conflict,
    Delete,
    NotFound,
    Outcome,
    Put,
    StoreError,
    Unchanged,
    Written,
)

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.config import Config

log = logging.getLogger("kvs.http")

WRITES_SOCKET = "writes.sock"  # in data_dir, 0600: the node's writer, for its workers only
LINK_VERSION = 1
PUT, DELETE = 0, 1
OK, REFUSED = 0, 1
WRITTEN, CONFLICT, NOT_FOUND, UNCHANGED = 0, 1, 2, 3
_LENGTH = 4
MAX_EXPIRES_AT = 2**47  # ms: the expiry index's range (kvs/api/batch.py checks the same)
MAX_NAME = 1024  # users, groups, UUIDs, audit details: far under this
CONNECT_TIMEOUT = 5.0
_NOT_ANSWERING = "the node is not answering; the write was not acknowledged (retry shortly)"


class BadFrame(Exception):
    """A frame that is not a worker's write: refused and counted, its connection closed."""


class StreamCut(BadFrame):
    """The stream ended inside a frame: the other process went away (killed, say)."""


def max_frame(config: Config) -> int:
    """The largest frame either side accepts: a whole `_batch` with room for its values
    re-encoded (canonical JSON can be longer than the client's text: `1e9` is `1000000000.0`)."""
    return 8 * batch_body_limit(config) + (1 << 20)


def _frame(message: Any) -> bytes:
    payload = msgpack.packb(message, use_bin_type=True)
    return len(payload).to_bytes(_LENGTH, "big") + payload


class _Frames:
    """Reads whole frames from one stream (a buffer of what has arrived)."""

    def __init__(self, stream: trio.SocketStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self._buffer = bytearray()

    async def receive(self) -> Any | None:
        """The next frame's message, or None at a clean end of stream (between frames)."""
        if not await self._fill(_LENGTH, eof_ok=True):
            return None
        size = int.from_bytes(self._buffer[:_LENGTH], "big")
        if size > self.limit:
            raise BadFrame(f"a frame of {size} bytes (the limit is {self.limit})")
        await self._fill(_LENGTH + size, eof_ok=False)
        payload = bytes(self._buffer[_LENGTH : _LENGTH + size])
        del self._buffer[: _LENGTH + size]
        try:
            return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise BadFrame(f"not msgpack: {type(exc).__name__}") from None

    async def _fill(self, size: int, *, eof_ok: bool) -> bool:
        while len(self._buffer) < size:
            chunk = await self.stream.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                if eof_ok and not self._buffer:
                    return False
                raise StreamCut("the stream ended inside a frame")
            self._buffer += chunk
        return True


# --- the worker's side ---------------------------------------------------------------------


def encode_write(ops: list[Put | Delete], user: str, detail: str) -> bytes:
    wire: list[list[Any]] = []
    for op in ops:
        if isinstance(op, Put):
            assert op.meta is None, "metadata writes are the node's own"
            wire.append([PUT, op.key, op.value, op.expires_at, op.if_match, op.owner, op.group])
        else:
            wire.append([DELETE, op.key, op.must_exist])
    return _frame([LINK_VERSION, user, detail, wire])


def decode_answer(answer: Any, ops: list[Put | Delete]) -> list[Outcome]:
    """The node's answer as outcomes (one per op), or its refusal raised as the ApiError
    the node would have answered with."""
    kind, *rest = answer
    if kind == REFUSED:
        status, message, extra, headers = rest
        if not (
            type(status) is int
            and 400 <= status <= 599
            and isinstance(message, str)
            and isinstance(extra, dict)
            and all(
                isinstance(k, str) and isinstance(v, str | int | None) for k, v in extra.items()
            )
            and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ValueError("a refusal of the wrong shape")
        raise ApiError(status, message, headers, **extra)
    (wire,) = rest
    if len(wire) != len(ops):
        raise ValueError("an answer with the wrong number of outcomes")
    return [_outcome(op, item) for op, item in zip(ops, wire, strict=True)]


def _outcome(op: Put | Delete, item: list[Any]) -> Outcome:
    kind = item[0]
    if kind == WRITTEN:
        _, hlc, joined, origin, uuid, expires_at, owner, group, permissions, created = item
        value = op.value if isinstance(op, Put) else None
        version = Version(hlc, joined, origin, uuid)
        record = Record(op.key, value, version, expires_at, owner, group, permissions, created)
        return Written(record)
    if kind == CONFLICT:
        return Conflict(op.key, item[1])
    if kind == NOT_FOUND:
        return NotFound(op.key)
    if kind == UNCHANGED:
        return Unchanged(op.key)
    raise ValueError(f"an unknown outcome {kind!r}")


class WriteLink:
    """A worker's end: `client_write` as the node's own, over a pool of connections."""

    def __init__(self, socket_path: str | Path, config: Config) -> None:
        self.socket_path = str(socket_path)
        self.limit = max_frame(config)
        self._idle: list[_Frames] = []
        self.counters = {"writes": 0, "failed": 0}
        self._limiter = LogLimiter(log, burst=5)  # a node that is down fails every write

    async def client_write(
        self, ops: list[Put | Delete], user: str, detail: str = ""
    ) -> list[Outcome]:
        frame = encode_write(ops, user, detail)
        if len(frame) > self.limit:
            raise ApiError(413, f"the batch is too large once encoded (limit {self.limit} bytes)")
        self.counters["writes"] += 1
        conn: _Frames | None = None
        kept = False
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            await conn.stream.send_all(frame)
            answer = await conn.receive()
            if answer is None:
                raise BadFrame("the node closed the connection")
            outcomes = decode_answer(answer, ops)
            kept = True
            return outcomes
        except (
            OSError,
            BadFrame,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            ValueError,  # an answer of the wrong shape (so is a TypeError)
            TypeError,
        ) as exc:
            self._failed(exc)
            raise ApiError(503, _NOT_ANSWERING, {"Retry-After": "1"}) from None
        finally:
            if conn is not None:
                if kept:
                    self._idle.append(conn)
                else:  # a conversation cut anywhere (a cancel, too) cannot be resumed
                    conn.stream.socket.close()

    def _failed(self, exc: Exception) -> None:
        self.counters["failed"] += 1
        self._limiter.log(
            logging.WARNING, "link", "a write to the node failed: %s", type(exc).__name__
        )

    async def _connect(self) -> _Frames:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_unix_socket(self.socket_path)
        return _Frames(stream, self.limit)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().stream.socket.close()


# --- the node's side ---------------------------------------------------------------------------


class WriteLinkServer(Collector):
    """The node's end: serves `WRITES_SOCKET` until cancelled (see the module's rules).
    Its counters are in the node's /metrics (`kvs_write_link_*`)."""

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.counters = {"frames": 0, "refused_frames": 0, "errors": 0}
        self._limiter = LogLimiter(log, burst=5)
        self._limit = max_frame(node.config)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield CounterMetricFamily(
            "kvs_write_link_frames", "Write requests from HTTP workers", c["frames"]
        )
        yield CounterMetricFamily(
            "kvs_write_link_refused_frames",
            "Write-link frames refused as malformed or oversize (connection closed)",
            c["refused_frames"],
        )
        yield CounterMetricFamily(
            "kvs_write_link_errors", "Write-link connections ended by an error", c["errors"]
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.node.config.data_path / WRITES_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a node that was killed
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(128)
            listener = trio.SocketListener(sock)
            await trio.serve_listeners(self._connection, [listener], task_status=task_status)
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One worker connection: its requests in turn. Anything wrong closes this one
        connection (logged and counted), never the node."""
        frames = _Frames(stream, self._limit)
        try:
            async with stream:
                while (request := await frames.receive()) is not None:
                    self.counters["frames"] += 1
                    await stream.send_all(await self.answer(request))
        except StreamCut:
            pass  # the worker went away mid-request (killed): nothing was written
        except BadFrame as exc:
            self.counters["refused_frames"] += 1
            self._limiter.log(logging.WARNING, "bad", "refused a write-link frame: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the worker went away (stopped, or killed mid-request)
        except Exception:  # a bug: this connection ends, the node goes on
            self.counters["errors"] += 1
            log.exception("write link: error on a worker's connection")

    async def answer(self, request: Any) -> bytes:
        """One decoded request's answer frame (BadFrame for a request of the wrong shape)."""
        ops, user, detail = decode_write(request, self.node.config.max_json_size)
        try:
            require_writable(self.node)
            try:
                outcomes = await self.node.client_write(ops, user, detail)
            except StoreError as failed:
                raise not_durable(failed) from None
        except ApiError as exc:
            return _frame([REFUSED, exc.status, exc.message, exc.extra, exc.headers])
        return _frame([OK, [_wire_outcome(outcome) for outcome in outcomes]])


def _wire_outcome(outcome: Outcome) -> list[Any]:
    if isinstance(outcome, Written):
        r = outcome.record
        v = r.version
        return [
            WRITTEN,
            v.hlc,
            v.origin_joined,
            v.origin,
            v.uuid,
            r.expires_at,
            r.owner,
            r.group,
            r.permissions,
            r.created_at,
        ]
    if isinstance(outcome, Conflict):
        return [CONFLICT, outcome.current_uuid]
    if isinstance(outcome, NotFound):
        return [NOT_FOUND]
    return [UNCHANGED]


def decode_write(request: Any, max_value: int) -> tuple[list[Put | Delete], str, str]:
    """A worker's request as store ops, every field checked (BadFrame otherwise)."""
    if not (isinstance(request, list) and len(request) == 4 and request[0] == LINK_VERSION):
        raise BadFrame("not a write request of this version")
    _, user, detail, wire = request
    if not (_name(user) and _name(detail) and isinstance(wire, list)):
        raise BadFrame("bad user, detail or ops")
    if not 0 < len(wire) <= MAX_BATCH_OPS:
        raise BadFrame(f"{len(wire)} ops (1 to {MAX_BATCH_OPS})")
    return [_op(item, max_value) for item in wire], user, detail


def _op(item: Any, max_value: int) -> Put | Delete:
    if not isinstance(item, list) or not item:
        raise BadFrame("an op that is not a list")
    kind = item[0]
    if kind == PUT and len(item) == 7:
        _, key, value, expires_at, if_match, owner, group = item
        if type(value) is not bytes or not 0 < len(value) <= max_value:
            raise BadFrame("a put's value is not bytes of an allowed size")
        if expires_at is not None and (
            type(expires_at) is not int or not 0 < expires_at < MAX_EXPIRES_AT
        ):
            raise BadFrame("a put's expires_at is out of range")
        if type(owner) is not str or type(group) is not str or len(owner) + len(group) > MAX_NAME:
            raise BadFrame("a put's owner or group is not a short string")
        if if_match is not None and not _name(if_match):
            raise BadFrame("a put's if_match is not a short string")
        return Put(_key(key), value, expires_at, if_match, owner, group)
    if kind == DELETE and len(item) == 3 and isinstance(item[2], bool):
        return Delete(_key(item[1]), must_exist=item[2])
    raise BadFrame("an op that is neither a put nor a delete")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise BadFrame("a key that is not a string")
    try:
        return validate_key(key)
    except InvalidKey as exc:
        raise BadFrame(f"an invalid key: {exc}") from None


def _name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME
