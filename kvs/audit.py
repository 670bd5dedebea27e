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

A rotation of the cluster secret (docs/operations.md) rekeys the chain: when a node's first
secret changes (a SIGHUP, or a start with a new first secret while the log's newest entry
verifies under another secret of the keyring), it appends a REKEY entry under the new key
whose target holds the LEDGER digest of every entry before it (SHA3-512 chained over their
stored bytes). `verify` with a keyring checks each entry under whichever of its secrets it
was written with; entries under a secret no longer in the keyring are accepted only as a
prefix that a REKEY entry (keyed under a secret in the keyring) covers by its digest, so
they cannot be edited afterwards either.

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
REKEY = "audit.rekeyed"  # the entry that switches the chain to a new key (a rotation)
LEDGER = "sha3-512:"  # a REKEY entry's target: this prefix, then the digest of all before it
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


def ledger_step(digest: bytes, raw: bytes) -> bytes:
    """The running digest of the log's stored bytes that a REKEY entry records."""
    return hashlib.sha3_512(digest + raw).digest()


def audit_keys(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """The keyring's audit keys, the first secret's first (it writes; all verify)."""
    return tuple(k for k in (audit_key(s) for s in secrets) if k is not None)


def _decode(raw: bytes) -> Entry:
    seq, ts, node, action, user, target, detail, digest = msgpack.unpackb(raw, raw=False)
    return Entry(seq, ts, node, action, user, target, detail, digest)


def _encode(entry: Entry) -> bytes:
    return msgpack.packb([*entry.fields(), entry.hash], use_bin_type=True)


@dataclass
class _Pending:
    fields: tuple[int, str, str, str, str, str]
    done: trio.Event = field(default_factory=trio.Event)
    rekey: bytes | None = None  # a REKEY entry: hashed, with all after it, under this key


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
    earlier_key_entries: int = 0  # under a secret not in the keyring, covered by a REKEY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "entries": self.entries,
            "last_hash": self.last_hash,
            "keyed": self.keyed,
            "unkeyed_entries": self.unkeyed_entries,
            "earlier_key_entries": self.earlier_key_entries,
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
        older: tuple[bytes, ...] = (),
        sync: bool = True,
        in_thread: bool = True,
    ) -> None:
        private_dir(path)
        self.env = lmdb.open(
            str(path), map_size=1 << 30, max_dbs=1, sync=sync, metasync=sync, mode=FILE_MODE
        )
        self.node_id = node_id
        self.key = key  # writes
        self.older = older  # the keyring's other secrets' keys: they verify, never write
        self._write_key = key  # the writer's: `key` runs ahead of it while a REKEY waits
        self._in_thread = in_thread
        self._send, self._receive = trio.open_memory_channel[_Pending](65_536)
        self._seq, self._hash = 0, GENESIS
        # The newest entry: "empty", "keyed", "older" (under a key of `older`), "unkeyed"
        # or "broken".
        self.tail = "empty"
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.last():
                last = _decode(cursor.value())
                self._seq, self._hash = last.seq, last.hash
                previous = _decode(cursor.value()).hash if cursor.prev() else GENESIS
                self.tail = _kind(previous, last, key)
                if self.tail == "broken" and any(
                    _kind(previous, last, k) == "keyed" for k in older
                ):
                    self.tail = "older"

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

    def rekey_now(self, ts: int) -> None:
        """Append a REKEY entry under `key` synchronously (before the writer starts)."""
        self._write([_Pending((ts, self.node_id, REKEY, "", "", ""), rekey=self.key)])
        self.tail = "keyed"

    def set_keys(self, keys: tuple[bytes, ...], ts: int) -> bool:
        """A reloaded keyring: its first key writes from a REKEY entry on (queued behind the
        entries already waiting), the others verify. True if the chain is rekeyed."""
        if not keys or self.key is None:
            return False
        new, self.older = keys[0], keys[1:]
        if new == self.key:
            return False
        if self.key not in self.older:
            self.older += (self.key,)  # the entries still queued are under it
        self._send.send_nowait(_Pending((ts, self.node_id, REKEY, "", "", ""), rekey=new))
        self.key = new
        return True

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
        seq, digest, key = self._seq, self._hash, self._write_key
        entries = []
        for item in batch:
            seq += 1
            values = item.fields
            if item.rekey is not None:
                key = item.rekey
                ledger = self._ledger(entries)
                values = (*values[:4], LEDGER + ledger.hex(), f"keyed under a new key from {seq}")
            fields = [seq, *values]
            digest = chain_hash(digest, fields, key)
            entries.append(Entry(seq, *values, digest))
        with self.env.begin(write=True) as txn:
            for entry in entries:
                txn.put(_SEQ.pack(entry.seq), _encode(entry))
        self._seq, self._hash, self._write_key = seq, digest, key

    def _ledger(self, pending: list[Entry]) -> bytes:
        """The LEDGER digest of the log so far and of `pending` (not yet committed)."""
        digest = GENESIS
        for rows in _rows(self.env, 4096):
            for _, raw in rows:
                digest = ledger_step(digest, raw)
        for entry in pending:
            digest = ledger_step(digest, _encode(entry))
        return digest

    def read(self, since: int, limit: int) -> list[Entry]:
        return read_entries(self.env, since, limit)

    def verify(self) -> Verification:
        keys = () if self.key is None else (self.key, *self.older)
        return verify_env(self.env, keys)


def _kind(previous: bytes, entry: Entry, key: bytes | None) -> str:
    """Whether `entry`'s hash is keyed, unkeyed, or neither ("broken")."""
    if key is not None and chain_hash(previous, entry.fields(), key) == entry.hash:
        return "keyed"
    if chain_hash(previous, entry.fields()) == entry.hash:
        return "unkeyed"
    return "broken"


def _key_of(previous: bytes, entry: Entry, keys: tuple[bytes, ...]) -> int | str:
    """The index in `keys` of the key `entry` was written under, or "unkeyed" / "broken"."""
    for i, key in enumerate(keys):
        if chain_hash(previous, entry.fields(), key) == entry.hash:
            return i
    return _kind(previous, entry, None)


def open_audit(
    path: Path,
    *,
    node_id: str,
    keys: tuple[bytes, ...],
    sealed_before: bool,
    now_ms: int,
    sync: bool = True,
    in_thread: bool = True,
) -> AuditLog:
    """Open the node's log; seal an unkeyed one (once: `sealed_before` says this node's
    store remembers keying it, and then unkeyed entries at the end were not written by it)."""
    key = keys[0] if keys else None
    audit = AuditLog(path, node_id=node_id, key=key, older=keys[1:], sync=sync, in_thread=in_thread)
    if key is None:
        log.warning("no cluster_secret: the audit log's chain is not keyed")
    elif audit.tail == "unkeyed" and not sealed_before:
        audit.seal(now_ms)
        log.info("audit log: %d unkeyed entries sealed; keyed from here on", audit.head()[0] - 1)
    elif audit.tail == "older":
        audit.rekey_now(now_ms)
        log.info("audit log: rekeyed under the first cluster secret from entry %d", audit.head()[0])
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

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys
        self.previous, self.count, self.keyed, self.unkeyed = GENESIS, 0, False, 0
        self.ledger = GENESIS  # LEDGER digest of the entries so far
        self.current: int | None = None  # the index of the key the chain is under
        self.foreign: list[int] = []  # a run of entries no key of ours verifies (yet)
        self.anchor = GENESIS  # the hash before that run
        self.earlier = 0  # such entries a REKEY entry vouched for

    def bad(self, seq: int, reason: str, *, needs_key: bool = False) -> Verification:
        # Entries that verified: those before `seq` (a foreign run's start lies behind us).
        good = self.anchor if self.foreign and seq == self.foreign[0] else self.previous
        return Verification(
            False,
            min(self.count, seq - 1),
            seq,
            reason,
            good.hex(),
            keyed=self.keyed,
            unkeyed_entries=self.unkeyed,
            needs_key=needs_key,
            earlier_key_entries=self.earlier,
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
        kind = _key_of(self.previous, entry, self.keys)
        failed = self._judge(entry, kind)
        if failed is not None:
            return failed
        self.previous, self.count = entry.hash, entry.seq
        self.ledger = ledger_step(self.ledger, raw)
        return None

    def _judge(self, entry: Entry, kind: int | str) -> Verification | None:
        if kind == "broken" and not self.keys and not self.keyed:
            return self.bad(
                entry.seq,
                "does not verify without the key (a keyed chain: verify with the node's config)",
                needs_key=True,
            )
        if kind == "broken":
            if not self.foreign:
                self.anchor = self.previous
            self.foreign.append(entry.seq)  # judged by the REKEY entry that may follow
            return None
        if isinstance(kind, int) and entry.action == REKEY:
            if entry.target != LEDGER + self.ledger.hex():
                first = self.foreign[0] if self.foreign else entry.seq
                return self.bad(first, "the entries before a rekey do not match its digest")
            self.earlier += len(self.foreign)
            self.foreign, self.current, self.keyed = [], kind, True
            return None
        if self.foreign:
            return self.bad(self.foreign[0], _MISMATCH)
        if (self.keyed and kind == "unkeyed") or (
            kind != self.current and self.current is not None
        ):
            return self.bad(entry.seq, "hash does not match the entry and its predecessor")
        if isinstance(kind, int) and not self.keyed:
            if entry.seq != 1 and entry.action != MARKER:
                return self.bad(entry.seq, "keyed entries follow unkeyed ones without a seal")
            self.keyed, self.current = True, kind
        if kind == "unkeyed":
            self.unkeyed += 1
        return None


_MISMATCH = (
    "hash does not match the entry and its predecessor (edited, or written under a cluster "
    "secret not in this keyring: verify with the config in force when it was written)"
)


def verify_env(
    env: lmdb.Environment,
    keys: tuple[bytes, ...],
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Walk the whole chain; name the first entry whose hash, number or encoding is wrong.

    With `keys` (the keyring's): entries must be keyed under one of them, but for an unkeyed
    prefix sealed by a MARKER and a prefix under other secrets that a REKEY entry covers. A
    key changes only at a REKEY entry. Without keys: an unkeyed chain is checked as such,
    and the first keyed entry stops the walk (`needs_key`: what follows cannot be checked
    without the cluster secret)."""
    walk = _Walk(keys)
    for rows in _rows(env, chunk):
        for key_bytes, raw in rows:
            failed = walk.step(key_bytes, raw)
            if failed is not None:
                return failed
        if progress is not None:
            progress(walk.count)
    if walk.foreign:
        return walk.bad(walk.foreign[0], _MISMATCH)
    if keys and walk.unkeyed and not walk.keyed:
        return walk.bad(
            walk.count + 1,
            "no keyed entry: a log from before keyed chains (a node seals it when it starts) "
            "or one rewritten without the key",
        )
    return Verification(
        True,
        walk.count,
        last_hash=walk.previous.hex(),
        keyed=walk.keyed or (bool(keys) and walk.count == 0),
        unkeyed_entries=walk.unkeyed,
        earlier_key_entries=walk.earlier,
    )


def verify_dir(data_dir: Path, keys: tuple[bytes, ...]) -> Verification:
    """Verify the log of a (running or stopped) node's data dir, read-only."""
    path = data_dir / AUDIT_DIR
    if not (path / "data.mdb").exists():
        raise FileNotFoundError(f"no audit log in {path}")
    env = lmdb.open(str(path), readonly=True, max_dbs=1)
    try:
        return verify_env(env, keys)
    finally:
        env.close()
