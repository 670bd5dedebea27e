"""The tamper-evident log: every accepted change and failed authentication, hash-chained
under a key.

Entry n stores its fields and `hash_n = HMAC-SHA3-512(key, hash_{n-1} || msgpack(fields_n))`
(hash_0 is 64 zero bytes). The key is derived from the cluster secret (`audit_key`, purpose
"audit-chain") and never written to the data directory: someone who can write the log but
does not hold the secret cannot edit an entry and recompute the hashes after it. Changing,
removing or reordering any entry breaks every hash after it, so `verify` names the first
entry that does not match. What no chain shows by itself -- the newest entries cut off, or
the whole log rewritten by someone who holds the secret -- the peers' memory of this node's
chain head shows (kvs/sync/witness.py).

Logs written before chains were keyed (`SHA3-512(hash_{n-1} || msgpack(fields_n))`, no
key) are sealed by the first keyed node that opens them: it appends a MARKER entry, keyed,
whose hash covers the last unkeyed one, so the unkeyed prefix cannot be changed afterwards
either. `verify` accepts unkeyed entries only as such a prefix, followed by the marker
(or, with no key, checks an unkeyed chain as such and says what it could not check).

The log is local to each node (its own LMDB environment, `<data_dir>/audit`): every node
records what it accepted and which logins failed there; it is not replicated.

Appends are batched by one writer task: a caller awaits its entry's durable commit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio

from kvs.net.codec import derive_key
from kvs.private_files import FILE_MODE, private_dir

log = logging.getLogger(__name__)

GENESIS = b"\x00" * 64
_SEQ = struct.Struct(">Q")
AUDIT_DIR = "audit"
AUDIT_PURPOSE = "audit-chain"  # the purpose of the key derived from the cluster secret
MARKER = "audit.keyed"  # the entry that seals an unkeyed prefix: keyed from here on
# The store's system record saying this node has kept a keyed log (kvs/node.py sets it): it
# then never seals unkeyed entries again -- someone else wrote them.
AUDIT_KEYED = "audit_keyed"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    ts: int  # ms since the epoch
    node: str
    action: str  # put, delete, metadata, user.create, token.revoke, auth.failed, ...
    user: str  # the acting user's uuid, "" for anonymous
    target: str  # key, user/group/token id, or client address
    detail: str
    hash: bytes

    def fields(self) -> list[Any]:
        return [self.seq, self.ts, self.node, self.action, self.user, self.target, self.detail]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "timestamp": self.ts,
            "node": self.node,
            "action": self.action,
            "user": self.user,
            "target": self.target,
            "detail": self.detail,
            "hash": self.hash.hex(),
        }


def audit_key(cluster_secret: str) -> bytes | None:
    """The chain's key (None without a cluster secret: the chain is then unkeyed)."""
    return derive_key(cluster_secret, AUDIT_PURPOSE)


def chain_hash(previous: bytes, fields: list[Any], key: bytes | None = None) -> bytes:
    """An entry's hash: HMAC-SHA3-512 under `key`, or plain SHA3-512 without one."""
    data = previous + msgpack.packb(fields, use_bin_type=True)
    if key is None:
        return hashlib.sha3_512(data).digest()
    return hmac.digest(key, data, "sha3_512")


def _decode(raw: bytes) -> Entry:
    seq, ts, node, action, user, target, detail, digest = msgpack.unpackb(raw, raw=False)
    return Entry(seq, ts, node, action, user, target, detail, digest)


def _encode(entry: Entry) -> bytes:
    return msgpack.packb([*entry.fields(), entry.hash], use_bin_type=True)


@dataclass
class _Pending:
    fields: tuple[int, str, str, str, str, str]
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    last_hash: str = ""
    keyed: bool = False  # the key was given, and the entries it covers verify under it
    unkeyed_entries: int = 0  # entries written before the chain was keyed (a sealed prefix)
    needs_key: bool = False  # verified without the key, and keyed entries follow

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "entries": self.entries,
            "last_hash": self.last_hash,
            "keyed": self.keyed,
            "unkeyed_entries": self.unkeyed_entries,
        }
        if not self.ok:
            out["first_bad_seq"] = self.first_bad
            out["reason"] = self.reason
        return out


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        key: bytes | None,
        sync: bool = True,
        in_thread: bool = True,
    ) -> None:
        private_dir(path)
        self.env = lmdb.open(
            str(path), map_size=1 << 30, max_dbs=1, sync=sync, metasync=sync, mode=FILE_MODE
        )
        self.node_id = node_id
        self.key = key
        self._in_thread = in_thread
        self._send, self._receive = trio.open_memory_channel[_Pending](65_536)
        self._seq, self._hash = 0, GENESIS
        self.tail = "empty"  # the newest entry: "empty", "keyed", "unkeyed" or "broken"
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.last():
                last = _decode(cursor.value())
                self._seq, self._hash = last.seq, last.hash
                previous = _decode(cursor.value()).hash if cursor.prev() else GENESIS
                self.tail = _kind(previous, last, key)

    def close(self) -> None:
        self.env.close()

    def head(self) -> tuple[int, bytes]:
        """(entries, hash of the newest) as this process wrote them."""
        return self._seq, self._hash

    def hash_at(self, seq: int) -> bytes | None:
        """The stored hash of entry `seq` (GENESIS for 0), None past the end or unreadable."""
        if seq == 0:
            return GENESIS
        with self.env.begin() as txn:
            raw = txn.get(_SEQ.pack(seq))
        try:
            return None if raw is None else _decode(raw).hash
        except (ValueError, TypeError):
            return None

    def seal(self, ts: int) -> None:
        """Append the MARKER (synchronously, before the writer starts): the unkeyed entries
        before it are covered by its keyed hash from now on."""
        detail = f"entries 1-{self._seq} were written unkeyed (SHA3-512); keyed from here"
        self._write([_Pending((ts, self.node_id, MARKER, "", "", detail))])
        self.tail = "keyed"

    async def append(self, ts: int, action: str, user: str, target: str, detail: str = "") -> None:
        """Append one entry; returns once it is durable."""
        pending = _Pending((ts, self.node_id, action, user, target, detail))
        await self._send.send(pending)
        await pending.done.wait()

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < 10_000:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                if self._in_thread:
                    await trio.to_thread.run_sync(self._write, batch)
                else:
                    self._write(batch)
            except lmdb.Error as exc:
                log.error("audit log write failed: %s", exc)
            for item in batch:
                item.done.set()

    def _write(self, batch: list[_Pending]) -> None:
        seq, digest = self._seq, self._hash
        entries = []
        for item in batch:
            seq += 1
            fields = [seq, *item.fields]
            digest = chain_hash(digest, fields, self.key)
            entries.append(Entry(seq, *item.fields, digest))
        with self.env.begin(write=True) as txn:
            for entry in entries:
                txn.put(_SEQ.pack(entry.seq), _encode(entry))
        self._seq, self._hash = seq, digest

    def read(self, since: int, limit: int) -> list[Entry]:
        return read_entries(self.env, since, limit)

    def verify(self) -> Verification:
        return verify_env(self.env, self.key)


def _kind(previous: bytes, entry: Entry, key: bytes | None) -> str:
    """Whether `entry`'s hash is keyed, unkeyed, or neither ("broken")."""
    if key is not None and chain_hash(previous, entry.fields(), key) == entry.hash:
        return "keyed"
    if chain_hash(previous, entry.fields()) == entry.hash:
        return "unkeyed"
    return "broken"


def open_audit(
    path: Path,
    *,
    node_id: str,
    key: bytes | None,
    sealed_before: bool,
    now_ms: int,
    sync: bool = True,
    in_thread: bool = True,
) -> AuditLog:
    """Open the node's log; seal an unkeyed one (once: `sealed_before` says this node's
    store remembers keying it, and then unkeyed entries at the end were not written by it)."""
    audit = AuditLog(path, node_id=node_id, key=key, sync=sync, in_thread=in_thread)
    if key is None:
        log.warning("no cluster_secret: the audit log's chain is not keyed")
    elif audit.tail == "unkeyed" and not sealed_before:
        audit.seal(now_ms)
        log.info("audit log: %d unkeyed entries sealed; keyed from here on", audit.head()[0] - 1)
    elif audit.tail in ("unkeyed", "broken"):
        log.error(
            "audit log: the newest entry (%d) does not verify under this node's key "
            "(edited, or another cluster_secret); `kvs audit verify` names the first bad entry",
            audit.head()[0],
        )
    return audit


def read_entries(env: lmdb.Environment, since: int, limit: int) -> list[Entry]:
    """Entries with seq > since, oldest first."""
    out: list[Entry] = []
    with env.begin() as txn:
        cursor = txn.cursor()
        ok = cursor.set_range(_SEQ.pack(since + 1))
        while ok and len(out) < limit:
            out.append(_decode(cursor.value()))
            ok = cursor.next()
    return out


def _rows(env: lmdb.Environment, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """The log's (key, value) rows, `chunk` at a time, each chunk in its own read txn."""
    position = b""
    while True:
        rows: list[tuple[bytes, bytes]] = []
        with env.begin() as txn:
            cursor = txn.cursor()
            ok = cursor.set_range(position)
            if ok and position and cursor.key() == position:
                ok = cursor.next()
            while ok and len(rows) < chunk:
                rows.append((bytes(cursor.key()), bytes(cursor.value())))
                ok = cursor.next()
        yield rows
        if len(rows) < chunk:
            return
        position = rows[-1][0]


class _Walk:
    """The verifier's state: the chain so far, and whether it is keyed from here on."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.previous, self.count, self.keyed, self.unkeyed = GENESIS, 0, False, 0

    def bad(self, seq: int, reason: str, *, needs_key: bool = False) -> Verification:
        return Verification(
            False,
            self.count,
            seq,
            reason,
            self.previous.hex(),
            keyed=self.keyed,
            unkeyed_entries=self.unkeyed,
            needs_key=needs_key,
        )

    def step(self, key_bytes: bytes, raw: bytes) -> Verification | None:
        """Check one entry; a Verification if it is the first bad one."""
        expected = self.count + 1
        try:
            entry = _decode(raw)
        except (ValueError, TypeError):
            return self.bad(expected, "entry does not decode")
        if entry.seq != expected or key_bytes != _SEQ.pack(entry.seq):
            return self.bad(expected, f"entry {expected} is missing or out of order")
        kind = _kind(self.previous, entry, self.key)
        if kind == "broken" and self.key is None and not self.keyed:
            return self.bad(
                entry.seq,
                "does not verify without the key (a keyed chain: verify with the node's config)",
                needs_key=True,
            )
        if kind == "broken" or (self.keyed and kind != "keyed"):
            return self.bad(entry.seq, "hash does not match the entry and its predecessor")
        if kind == "keyed" and not self.keyed:
            if entry.seq != 1 and entry.action != MARKER:
                return self.bad(entry.seq, "keyed entries follow unkeyed ones without a seal")
            self.keyed = True
        if kind == "unkeyed":
            self.unkeyed += 1
        self.previous, self.count = entry.hash, entry.seq
        return None


def verify_env(
    env: lmdb.Environment,
    key: bytes | None,
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Walk the whole chain; name the first entry whose hash, number or encoding is wrong.

    With `key`: entries must be keyed, but for an unkeyed prefix sealed by a MARKER. Without
    one: an unkeyed chain is checked as such, and the first keyed entry stops the walk
    (`needs_key`: what follows cannot be checked without the cluster secret)."""
    walk = _Walk(key)
    for rows in _rows(env, chunk):
        for key_bytes, raw in rows:
            failed = walk.step(key_bytes, raw)
            if failed is not None:
                return failed
        if progress is not None:
            progress(walk.count)
    if key is not None and walk.unkeyed and not walk.keyed:
        return walk.bad(
            walk.count + 1,
            "no keyed entry: a log from before keyed chains (a node seals it when it starts) "
            "or one rewritten without the key",
        )
    return Verification(
        True,
        walk.count,
        last_hash=walk.previous.hex(),
        keyed=walk.keyed or (key is not None and walk.count == 0),
        unkeyed_entries=walk.unkeyed,
    )


def verify_dir(data_dir: Path, key: bytes | None) -> Verification:
    """Verify the log of a (running or stopped) node's data dir, read-only."""
    path = data_dir / AUDIT_DIR
    if not (path / "data.mdb").exists():
        raise FileNotFoundError(f"no audit log in {path}")
    env = lmdb.open(str(path), readonly=True, max_dbs=1)
    try:
        return verify_env(env, key)
    finally:
        env.close()
