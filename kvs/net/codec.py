"""What both wire codecs share: the refusal every bad input raises, keys, and bounded msgpack.

Everything a peer sends passes through a codec before the rest of KVS sees it -- membership
datagrams and push-pull tables (`kvs.net.datagrams`), and the length-prefixed frames of
push-pull and sync sessions (`kvs.net.frames`) -- so decoding is strict: sizes are checked
before parsing, the HMAC before msgpack, and every field after it. Anything refused raises
`WireError` whose `reason` is one short label from `REASONS`, fit to be a counter name, and
whose message never carries peer bytes or key material.

Nothing here reads a clock, a socket, or an entropy source.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from typing import Any, Final, NoReturn

import msgpack

__all__ = [
    "REASONS",
    "TAG_BYTES",
    "VERSION",
    "WireError",
    "check_key",
    "check_purpose",
    "derive_key",
    "pack",
    "shape",
    "auth_tag",
    "unpack",
]

VERSION: Final = 1  # of both layouts: the datagram header's and the stream handshake's
TAG_BYTES: Final = 16  # truncated HMAC-SHA256: 128 bits is plenty against forgery
# Bounds of numbers (MAX_UINT, MAX_INCARNATION, MAX_MEMBERS) live in kvs.net.messages, where
# the SWIM core reads them too; each codec's own sizes live with it.

REASONS: Final = frozenset(
    {
        "short",  # fewer bytes than the layout needs (also: EOF in the middle of a frame)
        "magic",  # not ours at all
        "version",  # ours, but a protocol version we do not speak
        "purpose",  # a stream opened for another service (e.g. sync on the gossip port)
        "auth",  # missing or bad HMAC tag, or a peer with another (or no) cluster secret
        "oversize",  # more bytes than allowed, refused before parsing (or reading) them
        "malformed",  # not msgpack, trailing bytes, nesting too deep
        "shape",  # valid msgpack, but wrong structure, types or values
        "timeout",  # a stream peer too slow to send or take a frame (or to finish one begun)
        "idle",  # a stream peer sent nothing for the idle time between frames (not an attack)
        "closed",  # a stream peer went away (or an earlier error closed the stream)
    }
)


_PURPOSE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


class WireError(Exception):
    """Input from a peer that we refuse; `reason` (one of `REASONS`) is a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown wire error reason {reason!r}")
        # `detail` names a field or a limit, never peer bytes or keys: it may reach a log.
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- keys ---------------------------------------------------------------------------------------


def check_purpose(purpose: str) -> bytes:
    if not isinstance(purpose, str) or not _PURPOSE_RE.fullmatch(purpose):
        # Not echoed: swapped arguments would put the cluster secret here.
        raise ValueError(f"purpose must be a short label matching {_PURPOSE_RE.pattern}")
    return purpose.encode("ascii")


def derive_key(cluster_secret: str, purpose: str) -> bytes | None:
    """A 32-byte key for one purpose ("gossip", "pushpull", "sync", ...), or None for no secret.

    HKDF-SHA256 (extract, then one expand block): each purpose gets an independent key, so a
    tag made for one protocol is never valid in another.
    """
    if not isinstance(cluster_secret, str):
        raise TypeError("cluster_secret must be a str")  # never echo the value
    info = check_purpose(purpose)
    if not cluster_secret:
        return None
    # surrogatepass: encoding must not fail, or the exception would quote the secret.
    ikm = cluster_secret.encode("utf-8", "surrogatepass")
    prk = hmac.digest(b"kvs cluster secret v1", ikm, "sha256")
    return hmac.digest(prk, b"kvs key " + info + b"\x01", "sha256")


def check_key(key: bytes | None) -> bytes | None:
    if key is not None and (not isinstance(key, bytes) or len(key) < 16):
        raise ValueError("key must be None or at least 16 bytes (use derive_key)")
    return key


def auth_tag(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()[:TAG_BYTES]


# --- msgpack with limits ------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError("msgpack extension types are not accepted")


# Everything msgpack (C or pure-Python) raises on bad input: ExtraData, FormatError, StackError,
# OutOfData and UnicodeDecodeError are ValueErrors or UnpackExceptions.
_UNPACK_ERRORS = (
    msgpack.UnpackException,
    ValueError,
    TypeError,
    OverflowError,
    IndexError,
    KeyError,
    RecursionError,
    struct.error,
)


def unpack(payload: bytes, limit: int) -> Any:
    """Parse one msgpack value; no container or string may claim more than `limit` items/bytes."""
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except _UNPACK_ERRORS:
        raise WireError("malformed") from None


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# --- field validation ---------------------------------------------------------------------------


def shape(what: str) -> WireError:
    return WireError("shape", what)
