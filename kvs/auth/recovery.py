"""Admin recovery's proof: who may ask a running node for a fresh root token.

Rule: possession of the node's config -- its cluster secret -- is the proof (as in Consul's
ACL bootstrap reset, where write access to the data directory is). `kvs admin recover`
sends `POST /api/admin/recover` with

    X-KVS-Recover-Auth: <ms>.<nonce hex>.<HMAC-SHA256(k, "admin-recover:" node_id "." ms "." nonce)>

where `k` is derived from the cluster secret for this purpose alone (a tag made for
`/cluster/info`, gossip or sync is never valid here), `node_id` binds the request to one
node (it cannot be replayed against another node of the cluster), the stamp must be within
RECOVER_WINDOW_MS of the node's clock, and each nonce is accepted once: the node remembers
the nonces of the window (a replay within it is refused; one after it is stale).

This file decides and never performs I/O: the clock and the nonce arrive as arguments.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from kvs.net.codec import derive_key, derive_keys

RECOVER_HEADER = "X-KVS-Recover-Auth"
RECOVER_WINDOW_MS = 30_000
MAX_REMEMBERED = 1024  # nonces within one window; only holders of the secret can add one
_PURPOSE = "admin-recover"


def _tag(key: bytes, node_id: str, stamp: str, nonce: str) -> str:
    message = f"admin-recover:{node_id}.{stamp}.{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def recover_proof(cluster_secret: str, node_id: str, now_ms: int, nonce: bytes) -> str | None:
    """The header value proving the secret for one recovery at `now_ms` (None: no secret)."""
    key = derive_key(cluster_secret, _PURPOSE)
    if key is None:
        return None
    stamp, hex_nonce = str(now_ms), nonce.hex()
    return f"{stamp}.{hex_nonce}.{_tag(key, node_id, stamp, hex_nonce)}"


class RecoveryGate:
    """The node's side: checks a proof and remembers the nonces it accepted."""

    def __init__(
        self, cluster_secret: str | Sequence[str], node_id: str, *, not_before_ms: int = 0
    ) -> None:
        self._keys: tuple[bytes, ...] = ()
        self.set_secrets(cluster_secret)
        self._node_id = node_id
        self._seen: dict[str, int] = {}  # nonce -> its stamp
        # The remembered nonces die with the process: a proof made before this gate existed
        # (the node's start) is refused, so none captured before a restart replays after it.
        self._not_before = not_before_ms

    def set_secrets(self, cluster_secret: str | Sequence[str]) -> None:
        """The keyring in force (it may be reloaded): a proof made with any of its secrets
        is accepted, as for gossip, sync and the seed lookup."""
        self._keys = derive_keys(cluster_secret, _PURPOSE)

    def check(self, value: str | None, now_ms: int) -> str | None:
        """None if `value` is a fresh, valid proof (its nonce is then used up), else why not
        (a reason for the audit log and the answer; never the secret)."""
        if not self._keys:
            return "this node has no cluster_secret: stop it and run `kvs admin recover` offline"
        if not value:
            return f"missing {RECOVER_HEADER}"
        parts = value.split(".")
        if len(parts) != 3:
            return f"malformed {RECOVER_HEADER}"
        stamp, nonce, tag = parts
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 16):
            return f"malformed {RECOVER_HEADER}"
        if not (16 <= len(nonce) <= 64 and all(c in "0123456789abcdef" for c in nonce)):
            return f"malformed {RECOVER_HEADER}"
        given = tag.encode("utf-8", "surrogateescape")
        expected = (_tag(key, self._node_id, stamp, nonce).encode() for key in self._keys)
        if not any(hmac.compare_digest(given, e) for e in expected):
            return "wrong cluster secret (or a request made for another node)"
        if abs(int(stamp) - now_ms) > RECOVER_WINDOW_MS:
            return "stale request (check this host's clock)"
        if int(stamp) < self._not_before:
            return "request made before this node started (replayed?)"
        self._forget_before(now_ms - 2 * RECOVER_WINDOW_MS)
        if nonce in self._seen:
            return "replayed request"
        if len(self._seen) >= MAX_REMEMBERED:
            return "too many recoveries at once; try again in a minute"
        self._seen[nonce] = int(stamp)
        return None

    def _forget_before(self, oldest_ms: int) -> None:
        """Nonces whose stamp is outside any window still open: their replay is stale."""
        for nonce in [n for n, stamp in self._seen.items() if stamp < oldest_ms]:
            del self._seen[nonce]
