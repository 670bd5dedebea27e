"""What both wire codecs share: the refusal every bad input raises, keys, and bounded msgpack.

Everything a peer sends passes through a codec before the rest of KVS sees it -- membership
datagrams and push-pull tables (`kvs.net.datagrams`), and the length-prefixed frames of
push-pull and sync sessions (`kvs.net.frames`) -- so decoding is strict: sizes are checked
before parsing, the AEAD tag (or, unkeyed, nothing) before msgpack, and every field after it. Anything refused raises
`WireError` whose `reason` is one short label from `REASONS`, fit to be a counter name, and
whose message never carries peer bytes or key material.

Nothing here reads a clock, a socket, or an entropy source.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import msgpack

__all__ = [
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "KEY_ID_BYTES",
    "REASONS",
    "Aead",
    "TAG_BYTES",
    "VERSION",
    "WireError",
    "check_key",
    "check_purpose",
    "derive_key",
    "derive_keys",
    "key_id",
    "keyring_keys",
    "pack",
    "shape",
    "auth_tag",
    "unpack",
]

VERSION: Final = 2  # of both layouts: the datagram header's and the stream handshake's
# 1: HMAC-authenticated, clear text. 2: AEAD-sealed (datagrams AES-256-GCM-SIV and
# timestamped, frames AES-256-GCM).
TAG_BYTES: Final = 16  # truncated HMAC-SHA256 (handshake proofs): 128 bits against forgery
AEAD_NONCE_BYTES: Final = 12  # AES-GCM's (and GCM-SIV's) nonce
AEAD_TAG_BYTES: Final = 16  # their tag: what sealing adds to every frame
KEY_ID_BYTES: Final = 8  # names a key of the keyring in a stream hello; reveals nothing of it
# Bounds of numbers (MAX_UINT, MAX_INCARNATION, MAX_MEMBERS) live in kvs.net.messages, where
# the SWIM core reads them too; each codec's own sizes live with it.

REASONS: Final = frozenset(
    {
        "short",  # fewer bytes than the layout needs (also: EOF in the middle of a frame)
        "magic",  # not ours at all
        "version",  # ours, but a protocol version we do not speak
        "purpose",  # a stream opened for another service (e.g. sync on the gossip port)
        "auth",  # missing or bad tag, or a peer with another (or no) cluster secret
        "stale",  # a sealed datagram sent outside the time window
        "replay",  # a sealed datagram whose nonce was already seen within the window
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


def derive_keys(secrets: Sequence[str], purpose: str) -> tuple[bytes, ...]:
    """One key per secret of a keyring, in order (the first sends, all receive); empty
    secrets are skipped, so `derive_keys([""], p)` is `()`: no keys, no protection."""
    if isinstance(secrets, str):
        secrets = [secrets]
    keys = (derive_key(s, purpose) for s in secrets)
    return tuple(k for k in keys if k is not None)


def keyring_keys(keys: bytes | Sequence[bytes] | None) -> tuple[bytes, ...]:
    """Normalize one key, none, or a keyring (first sends, all receive) to a tuple."""
    if keys is None:
        return ()
    if isinstance(keys, bytes):
        keys = (keys,)
    out = tuple(keys)
    for key in out:
        check_key(key)
    if len(set(out)) != len(out):
        raise ValueError("a keyring holds each key once")
    return out


def key_id(key: bytes) -> bytes:
    """A short public name for a key: which one of a keyring a stream's client chose."""
    return hmac.digest(key, b"kvs key id", "sha256")[:KEY_ID_BYTES]


class Aead:
    """AES-256-GCM with one key: seal and open, nonces supplied by the caller.

    `siv=True` is AES-256-GCM-SIV (RFC 8452), for keys many senders share under random
    nonces (gossip datagrams): a repeated nonce then reveals at most that two plaintexts
    were equal, instead of GCM's authentication key, so the 2^32-messages limit of random
    96-bit nonces under one GCM key does not apply. Streams use plain GCM: each session has
    its own key and counts its nonces, which never repeat."""

    __slots__ = ("_aead", "_invalid")

    def __init__(self, key: bytes, *, siv: bool = False) -> None:
        # Imported here: `kvs --help` and other commands that open no link need not load it.
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

        if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
            raise ValueError("an AEAD key is 16, 24 or 32 bytes (use derive_key)")
        self._aead = AESGCMSIV(key) if siv else AESGCM(key)
        self._invalid = InvalidTag

    def __repr__(self) -> str:  # the key stays out of logs
        return "Aead()"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Ciphertext followed by the 16-byte tag; the nonce must never repeat for a key."""
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when the tag does not verify (wrong key, any bit changed)."""
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except self._invalid:
            return None


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
