"""Length-prefixed msgpack frames over a byte stream (TCP), sealed per session.

Push-pull (`kvs.net.membership`) and sync (`kvs.sync`) sessions speak this. Stream layout:
frames of `length (4, big-endian) | body`. A session starts with a handshake in clear text
(see `FrameStream`: nonces, a key id, proofs; never user data); once keyed, each body is
AES-256-GCM(frame_key, nonce = direction (1) | 0 0 0 | seq (8, big-endian), msgpack payload)
followed by its 16-byte tag, so a frame cannot be read, forged, replayed, reordered, or
reflected back to its sender: each of those makes the tag fail ("auth").

Refusals raise `WireError` (`kvs.net.codec`). Nothing here reads a clock (beyond Trio's
deadlines) or an entropy source: nonces are passed in, so the deterministic simulator
controls every byte.
"""

from __future__ import annotations

import hmac
import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

import trio

from kvs.net.codec import (
    AEAD_TAG_BYTES,
    KEY_ID_BYTES,
    TAG_BYTES,
    VERSION,
    Aead,
    WireError,
    auth_tag,
    check_purpose,
    key_id,
    keyring_keys,
    pack,
    shape,
    unpack,
)

__all__ = ["FRAME_TIMEOUT", "MAX_FRAME_BYTES", "NONCE_BYTES", "FrameStream"]

NONCE_BYTES: Final = 16
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
FRAME_TIMEOUT: Final = 10.0  # seconds to read or write one frame

_LENGTH = struct.Struct(">I")
_SEQ = struct.Struct(">Q")

_HELLO: Final = "kvs-hello"
_HANDSHAKE_MAX: Final = 256  # a hello is ~70 bytes; anything bigger is not a KVS peer
_CLIENT_TO_SERVER: Final = b"\x01"
_SERVER_TO_CLIENT: Final = b"\x02"
_FINISHED: Final = b"\x00finished"  # first byte differs from both directions: no confusion


def _session_key(key: bytes, purpose: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    return hmac.digest(
        key, b"session" + bytes([VERSION]) + purpose + b"\x00" + nonce_c + nonce_s, "sha256"
    )


def _frame_aead(session: bytes) -> Aead:
    """The frames' key: HKDF-expand of the session key, apart from the proofs' use of it."""
    return Aead(hmac.digest(session, b"kvs frames aead\x01", "sha256"))


def _frame_nonce(direction: bytes, seq: int) -> bytes:
    return direction + b"\x00\x00\x00" + _SEQ.pack(seq)


def _pick_key(keys: tuple[bytes, ...], wanted: bytes) -> bytes | None:
    for key in keys:
        if hmac.compare_digest(key_id(key), wanted):
            return key
    return None


def _check_nonce(nonce: bytes) -> bytes:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes (from the node's seeded rng)")
    return nonce


class FrameStream:
    """Length-prefixed msgpack frames over a byte stream, sealed when keyed.

    Open one with `client()` or `server()`, which run the handshake:

        client -> server   hello [magic, version, purpose, nonce_c, key_id_c, None]
        server -> client   hello [magic, version, purpose, nonce_s, key_id_s, proof_s]
        client -> server   proof_c                              (keyed only)

    The client seals with the first key of its keyring and names it by `key_id` (an 8-byte
    HMAC of the key: it reveals nothing); the server picks that key from its own keyring, so
    a keyring [new, old] talks with peers that send with either. key_id is None unkeyed.
    session_key = HMAC(key, "session" + version + purpose + 0 + nonce_c + nonce_s),
    proof_x = HMAC(session_key, 0 "finished" + role), and the frames are sealed with a key
    expanded from session_key; each side checks the other's proof, so a wrong secret fails
    the handshake on BOTH sides with WireError("auth"). Fresh nonces make every session's
    key new, so frames from another session (a replayed connection) never verify.

    Errors: `receive` raises `trio.EndOfChannel` when the peer closed the stream cleanly
    between frames, and WireError for everything else: "oversize", "short" (EOF inside a
    frame), "auth", "malformed", "timeout", "closed" (the connection broke). After an error
    the direction that failed keeps raising (the stream is out of step): close it. The one
    exception is a receive "timeout" or "idle": no partial frame is ever consumed, so a retry
    is safe.
    A send that times out or is cancelled mid-frame breaks the sending direction ("closed").

    Nonces must be fresh for every connection (`rng.randbytes(16)` from the node's seeded
    rng); they are parameters so that the simulator controls them.

    One frame is read or written within `timeout` seconds (default 10; `math.inf` to wait
    forever, e.g. for an idle replication link: `receive(timeout=math.inf)`). Concurrent
    senders (or receivers) are serialized, one frame at a time.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        is_client: bool,
        max_frame: int,
        timeout: float,
    ) -> None:
        """Internal: use `client()` or `server()`, which also run the handshake."""
        if max_frame < _HANDSHAKE_MAX or max_frame > 0xFFFFFFFF:
            raise ValueError(f"max_frame must be in {_HANDSHAKE_MAX}..{0xFFFFFFFF}")
        if math.isnan(timeout) or timeout <= 0:
            raise ValueError("timeout must be positive")
        self._stream = stream
        self._is_client = is_client
        self.max_frame = max_frame
        self.timeout = timeout
        self._aead: Aead | None = None
        self._send_dir = _CLIENT_TO_SERVER if is_client else _SERVER_TO_CLIENT
        self._recv_dir = _SERVER_TO_CLIENT if is_client else _CLIENT_TO_SERVER
        self._send_seq = 0
        self._recv_seq = 0
        self._buffer = bytearray()
        self._send_lock = trio.StrictFIFOLock()
        self._recv_lock = trio.StrictFIFOLock()
        self._send_failed: str | None = None
        self._recv_failed: str | None = None
        self._eof = False

    def __repr__(self) -> str:  # keys stay out of logs
        role = "client" if self._is_client else "server"
        return f"FrameStream({role}, keyed={self.keyed}, max_frame={self.max_frame})"

    @property
    def keyed(self) -> bool:
        return self._aead is not None

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    # --- handshake ---

    @classmethod
    async def client(
        cls,
        stream: trio.abc.Stream,
        keys: bytes | Sequence[bytes] | None,
        *,
        purpose: str,
        nonce: bytes,
        max_frame: int = MAX_FRAME_BYTES,
        timeout: float = FRAME_TIMEOUT,
    ) -> FrameStream:
        """Open the client side: say hello, check the server's, prove we hold the key.
        `keys` is one key or a keyring, whose first key this side uses."""
        ring, purpose_b, nonce = keyring_keys(keys), check_purpose(purpose), _check_nonce(nonce)
        key = ring[0] if ring else None
        fs = cls(stream, is_client=True, max_frame=max_frame, timeout=timeout)
        with _handshake_deadline(fs.timeout):
            our_id = key_id(key) if key is not None else None
            await fs._send_plain([_HELLO, VERSION, purpose, nonce, our_id, None])
            server_nonce, server_proof = _read_hello(
                await fs._receive_plain(), purpose, key is not None
            )
            if key is not None:
                if server_proof is None:  # the server holds no key with our key id
                    raise WireError("auth", "unknown key")
                session = _session_key(key, purpose_b, nonce, server_nonce)
                # Send our proof even if the server's is wrong, so that the server also
                # learns "auth" rather than a bare "closed".
                await fs._send_plain(auth_tag(session, _FINISHED, b"C"))
                if not hmac.compare_digest(server_proof, auth_tag(session, _FINISHED, b"S")):
                    raise WireError("auth")
                fs._aead = _frame_aead(session)
        return fs

    @classmethod
    async def server(
        cls,
        stream: trio.abc.Stream,
        keys: bytes | Sequence[bytes] | None,
        *,
        purpose: str,
        nonce: bytes,
        max_frame: int = MAX_FRAME_BYTES,
        timeout: float = FRAME_TIMEOUT,
    ) -> FrameStream:
        """Open the server side: answer a client's hello, then check its proof. `keys` is
        one key or a keyring: the client's choice among them is accepted."""
        ring, purpose_b, nonce = keyring_keys(keys), check_purpose(purpose), _check_nonce(nonce)
        fs = cls(stream, is_client=False, max_frame=max_frame, timeout=timeout)
        with _handshake_deadline(fs.timeout):
            hello = await fs._receive_plain()
            # Reply before judging version/purpose/keying, so the client learns the same
            # reason; a stranger (bad magic or shape) gets nothing.
            client_nonce, client_id, mismatch = _parse_hello(hello, purpose)
            picked = _pick_key(ring, client_id) if client_id is not None else None
            session = None
            if picked is not None:
                session = _session_key(picked, purpose_b, client_nonce, nonce)
            proof = auth_tag(session, _FINISHED, b"S") if session is not None else None
            # An unknown key id is answered keyed (our first key's id), without a proof.
            shown = picked if picked is not None else ring[0] if ring else None
            our_id = key_id(shown) if shown is not None else None
            await fs._send_plain([_HELLO, VERSION, purpose, nonce, our_id, proof])
            if mismatch is not None:
                raise WireError(mismatch)
            if (client_id is not None) != bool(ring):
                raise WireError("auth", "keyed" if client_id is not None else "unkeyed")
            if session is None and ring:
                raise WireError("auth", "unknown key")
            if session is not None:
                client_proof = await fs._receive_plain()
                if type(client_proof) is not bytes or not hmac.compare_digest(
                    client_proof, auth_tag(session, _FINISHED, b"C")
                ):
                    raise WireError("auth")
                fs._aead = _frame_aead(session)
        return fs

    async def _send_plain(self, obj: Any) -> None:
        payload = pack(obj)
        await self._write(_LENGTH.pack(len(payload)) + payload)

    async def _receive_plain(self) -> Any:
        try:
            body = await self._read_frame(_HANDSHAKE_MAX)
        except trio.EndOfChannel:
            raise WireError("closed", "during handshake") from None
        return unpack(body, len(body))

    # --- frames ---

    async def send(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send one msgpack-able value as a frame.

        TypeError if msgpack cannot encode it and ValueError if it exceeds `max_frame` (both
        are the caller's bugs); WireError "timeout" or "closed" if the peer cannot take it.
        """
        payload = pack(obj)
        tag_bytes = AEAD_TAG_BYTES if self._aead is not None else 0
        if len(payload) + tag_bytes > self.max_frame:
            raise ValueError(f"frame of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        await _acquire(self._send_lock)
        try:
            if self._send_failed is not None:
                raise WireError(self._send_failed)
            header = _LENGTH.pack(len(payload) + tag_bytes)
            if self._aead is None:
                data = header + payload
            else:
                nonce = _frame_nonce(self._send_dir, self._send_seq)
                data = header + self._aead.seal(nonce, payload, b"")
            self._send_seq += 1
            # Until the whole frame is out, the peer is out of step (a cancelled or timed-out
            # write leaves part of a frame behind): only success clears this.
            self._send_failed = "closed"
            try:
                deadline = trio.current_time() + _seconds(self.timeout, timeout)
                with trio.CancelScope(deadline=deadline) as scope:
                    await self._write(data)
                if scope.cancelled_caught:
                    raise WireError("timeout")
            except WireError as exc:
                self._send_failed = exc.reason
                raise
            self._send_failed = None
        finally:
            self._send_lock.release()

    async def receive(self, *, timeout: float | None = None, idle: float | None = None) -> Any:
        """The next frame's value; see the class docstring for EOF and errors.

        `timeout` bounds the reading of one frame. With `idle`, the wait for the frame to
        begin is bounded by `idle` instead (WireError "idle" when nothing came), and
        `timeout` starts at the frame's first byte: a long-lived connection may stay quiet,
        but a peer that begins a frame and dribbles it (slow loris) is cut off after
        `timeout` with "timeout"."""
        await _acquire(self._recv_lock)
        try:
            if self._recv_failed is not None:
                raise WireError(self._recv_failed)
            if self._eof:
                raise trio.EndOfChannel
            try:
                return self._open(await self._receive_body(timeout, idle))
            except WireError as exc:
                if exc.reason not in ("timeout", "idle"):  # nothing consumed: a retry is safe
                    self._recv_failed = exc.reason
                raise
            except trio.EndOfChannel:
                self._eof = True
                raise
        finally:
            self._recv_lock.release()

    async def _receive_body(self, timeout: float | None, idle: float | None) -> bytes:
        """The next frame's body, read within its deadlines: one cancel scope, whose
        deadline moves from `idle` to the frame timeout once the frame begins."""
        frame_timeout = _seconds(self.timeout, timeout)
        first = frame_timeout if idle is None else _seconds(self.timeout, idle)
        reason = "timeout"
        with trio.CancelScope(deadline=trio.current_time() + first) as scope:
            if idle is not None:
                # Waiting for a frame to begin is bounded by `idle` alone; once its first
                # byte is here, the frame must be complete within the frame timeout.
                reason = "idle"
                await self._fill(1)
                reason = "timeout"
                scope.deadline = trio.current_time() + frame_timeout
            return await self._read_frame(self.max_frame)
        raise WireError(reason)

    def _open(self, body: bytes) -> Any:
        if self._aead is not None:
            if len(body) < AEAD_TAG_BYTES:
                raise WireError("short")
            nonce = _frame_nonce(self._recv_dir, self._recv_seq)
            opened = self._aead.open(nonce, body, b"")
            if opened is None:  # forged, replayed, reordered or reflected
                raise WireError("auth")
            body = opened
            self._recv_seq += 1
        return unpack(body, len(body))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> FrameStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- bytes ---

    async def _write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, OSError):
            raise WireError("closed") from None

    async def _read_frame(self, limit: int) -> bytes:
        """One frame's body; the announced length is checked before any of the body is read.

        Bytes leave the buffer only once a whole frame is there, so a cancelled or timed-out
        read never leaves the stream out of step.
        """
        await self._fill(_LENGTH.size)
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > limit:
            raise WireError("oversize")
        end = _LENGTH.size + length
        await self._fill(end)
        body = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return body

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            try:
                chunk = await self._stream.receive_some(max(n - len(self._buffer), 65536))
            except (trio.BrokenResourceError, OSError):
                raise WireError("closed") from None
            if not chunk:
                if not self._buffer:
                    raise trio.EndOfChannel
                raise WireError("short", "end of stream inside a frame")
            self._buffer += chunk


@contextmanager
def _handshake_deadline(seconds: float) -> Iterator[None]:
    """`trio.fail_after` that reports a stalled peer as WireError("timeout")."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise WireError("timeout") from None


def _seconds(default: float, seconds: float | None) -> float:
    """`seconds`, else `default`: a timeout, which must be positive."""
    if seconds is None:
        return default
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError("timeout must be positive")
    return seconds


async def _acquire(lock: trio.StrictFIFOLock) -> None:
    """`lock`, with a schedule point only when it must wait: the stream operation that
    follows is the frame's schedule point (an uncontended lock cost a task switch per
    frame; a frame already buffered is returned without one). Still a cancel point, as
    `Lock.acquire` is."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _parse_hello(obj: Any, purpose: str) -> tuple[bytes, bytes | None, str | None]:
    """(nonce, key id, mismatch reason or None) from a hello; strangers raise at once. A
    version-1 hello (a bool where the key id is) is refused as "version", not "shape"."""
    if type(obj) is not list or len(obj) != 6 or obj[0] != _HELLO:
        raise WireError("magic", "hello")
    _, version, their_purpose, nonce, their_id, proof = obj
    if type(version) is int and version != VERSION and type(their_id) is bool:
        raise WireError("version")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise shape("hello")
    if their_id is not None and (type(their_id) is not bytes or len(their_id) != KEY_ID_BYTES):
        raise shape("hello key id")
    if proof is not None and (type(proof) is not bytes or len(proof) != TAG_BYTES):
        raise shape("hello proof")
    mismatch = None
    if type(version) is not int or version != VERSION:
        mismatch = "version"
    elif type(their_purpose) is not str or their_purpose != purpose:
        mismatch = "purpose"
    return nonce, their_id, mismatch


def _read_hello(obj: Any, purpose: str, keyed: bool) -> tuple[bytes, bytes | None]:
    """The server's (nonce, proof), after the same checks the server made of our hello."""
    nonce, their_id, mismatch = _parse_hello(obj, purpose)
    if mismatch is not None:
        raise WireError(mismatch)
    their_keyed = their_id is not None
    if their_keyed != keyed:
        raise WireError("auth", "keyed" if their_keyed else "unkeyed")
    return nonce, obj[5]
