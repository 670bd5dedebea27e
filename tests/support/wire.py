"""A datagram codec for tests that stamps and opens like a node would, with a made-up clock.

`Membership` passes the wall clock and a fresh nonce on every seal, and the clock on every
open; tests that exercise the codec itself get them from here: a fixed `NOW_MS` and
counting nonces (distinct, so the replay window never refuses a fresh datagram)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from kvs.net.codec import AEAD_NONCE_BYTES
from kvs.net.datagrams import DatagramCodec
from kvs.net.messages import Message

NOW_MS = 1_800_000_000_000
_NONCES = itertools.count(1)


def fresh_nonce() -> bytes:
    return next(_NONCES).to_bytes(AEAD_NONCE_BYTES, "big")


def seal_payload(payload: bytes, key: bytes, sent_ms: int = NOW_MS) -> bytes:
    """A sealed datagram around any payload, built from the documented layout (not the
    codec): what a key holder can send, valid or not."""
    header = b"KV\x82"
    nonce = fresh_nonce()
    return (
        header + nonce + AESGCMSIV(key).encrypt(nonce, sent_ms.to_bytes(8, "big") + payload, header)
    )


class StampedCodec(DatagramCodec):
    """`DatagramCodec` whose seals default to (clock(), a fresh nonce) and opens to clock();
    `clock` is NOW_MS unless given (e.g. the system's, to talk to a real node)."""

    def __init__(self, *args: object, clock: Callable[[], int] = lambda: NOW_MS, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.clock = clock

    def encode(
        self, messages: Sequence[Message], *, sent_ms: int | None = None, nonce: bytes | None = None
    ) -> bytes:
        stamp = self.clock() if sent_ms is None else sent_ms
        return super().encode(messages, sent_ms=stamp, nonce=nonce or fresh_nonce())

    def pack(
        self,
        first: Sequence[Message],
        more: Sequence[Message],
        *,
        sent_ms: int | None = None,
        nonce: bytes | None = None,
    ) -> tuple[bytes, int]:
        stamp = self.clock() if sent_ms is None else sent_ms
        return super().pack(first, more, sent_ms=stamp, nonce=nonce or fresh_nonce())

    def decode(self, data: bytes, *, now_ms: int | None = None) -> list[Message]:
        return super().decode(data, now_ms=self.clock() if now_ms is None else now_ms)
