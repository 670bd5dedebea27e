"""Bootstrap by snapshot: a joiner copies a peer's whole data file instead of its records.

Taking records one by one costs a joiner tens of microseconds of Python per record (decode,
checks, three index writes, the Merkle update): a million keys took minutes. A snapshot is
LMDB's own compacted copy of the peer's store, streamed as it is made, so the joiner's cost
is mostly reading it once to check it. The exchange goes on over the same connection:

    joiner -> peer   {"op": "snapshot", "format": {...}}
    peer -> joiner   {"refused": reason}                      ("format", "busy", "stale",
                                                               "syncing": take records)
                  or {"snapshot": {"root": bytes16, "size": n}}
                     {"chunk": bytes} ...                     (a zstd stream, in pieces)
                     {"end": true, "raw_size": n, "sha256": bytes32}

Every frame is authenticated like any sync frame. The copy is made inside one read
transaction that the peer opens in the same event-loop step as it reads its Merkle root, so
the root and size sent describe exactly the records copied. A data file is only usable by
the same LMDB, byte order, word size and page size, and the same store schema: `format`
holds those, and a peer with another refuses.

The joiner writes the stream to `data_dir/snapshot.partial/`, checks the size and SHA-256,
then checks the copy as it checks every record from a peer (`verify`): every record decodes
and passes `check_record`, is filed under its own key, the Merkle tree built from the
records equals the root and size the peer sent, and the copy's summaries (what anti-entropy
lists) are exactly those the records give. Only then does the store put it in place of its own
(`Store.replace_data`, which keeps the joiner's identity), and the exchange continues as
usual, for what the peer wrote since the copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio
import zstandard

from kvs.clock import HybridLogicalClock
from kvs.model import RecordCodec
from kvs.net.frames import FrameStream
from kvs.net.transport import PEER_IO_ERRORS, expected_error
from kvs.private_files import open_private, private_dir
from kvs.store import READER, Store
from kvs.store.layout import (
    BUCKETS,
    DATA_FILE,
    SCHEMA_VERSION,
    index_entries,
    leaf_of,
    open_copy,
    stored_schema,
)
from kvs.sync import protocol as p
from kvs.sync.merkle import DEFAULT_DEPTH, FANOUT, MerkleTree, record_hash

log = logging.getLogger(__name__)

STAGING_DIR = "snapshot.partial"
RAW_CHUNK = 1 << 20  # bytes of the copy compressed into one frame (at most)
COMPRESSION_LEVEL = 1  # the copy compresses ~3x even at the fastest level
DISK_RESERVE = 64 << 20  # free space left on the joiner's disk, beyond the copy
_CHECK_CHUNK = 10_000  # records checked between releases of the copy's mapped pages
_MASK = (1 << 64) - 1


class SnapshotError(Exception):
    """The snapshot could not be taken or is not usable; the joiner takes records instead."""


@dataclass(frozen=True)
class Header:
    root: int
    size: int


def snapshot_format() -> dict[str, Any]:
    """What a data file depends on, besides its contents."""
    return {
        "lmdb": ".".join(map(str, lmdb.version())),
        "byteorder": sys.byteorder,
        "word": struct.calcsize("P"),
        "page": mmap.PAGESIZE,
        "schema": SCHEMA_VERSION,
    }


# --- the peer's side ------------------------------------------------------------------------


async def serve(
    frames: FrameStream, store: Store, root_and_size: Callable[[], tuple[int, int]], timeout: float
) -> int:
    """Stream a snapshot of `store` to the joiner on `frames`; returns the bytes copied.

    `root_and_size` reads the Merkle tree; it is called in the same step as the copy's read
    transaction begins, so the caller must call this while no commit waits for its
    listeners (`store.publishing`), and hold `store.lease_env_nowait()`: the map neither
    moves nor closes meanwhile."""
    env = store.env
    txn = env.begin()
    root, size = root_and_size()
    try:
        await frames.send(
            {"snapshot": {"root": p.encode_hash(root), "size": size}},
            timeout=timeout,
        )
        return await _stream_copy(frames, env, txn, timeout)
    finally:
        txn.abort()


async def _stream_copy(
    frames: FrameStream, env: lmdb.Environment, txn: lmdb.Transaction, timeout: float
) -> int:
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def copy() -> None:  # a worker thread: LMDB writes the copy into the pipe
        try:
            env.copyfd(write_fd, compact=True, txn=txn)
        except BaseException as exc:  # a closed pipe (the joiner went away) lands here too
            failure.append(exc)
        finally:
            os.close(write_fd)

    sha = hashlib.sha256()
    raw_size = 0
    compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL).compressobj()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, copy)
            # Closing the read end, however this ends, makes a copy still writing fail (EPIPE).
            async with trio.lowlevel.FdStream(read_fd) as pipe:
                pending = bytearray()
                while True:
                    data = await pipe.receive_some(RAW_CHUNK)
                    if data:
                        sha.update(data)
                        raw_size += len(data)
                        pending += data
                    if pending and (not data or len(pending) >= RAW_CHUNK):
                        piece = compressor.compress(bytes(pending))
                        pending.clear()
                        if piece:
                            await frames.send({"chunk": piece}, timeout=timeout)
                    if not data:
                        break
    except BaseExceptionGroup as group:
        # A joiner that goes away or stalls mid-copy fails a send inside the nursery, which
        # wraps it in a group: raise it as itself, as any other send on this connection.
        peer_failure = expected_error(group, PEER_IO_ERRORS)
        if peer_failure is None:
            raise
        raise peer_failure from None
    if failure:
        raise SnapshotError(f"the copy failed: {failure[0]}")
    await frames.send({"chunk": compressor.flush()}, timeout=timeout)
    await frames.send({"end": True, "raw_size": raw_size, "sha256": sha.digest()}, timeout=timeout)
    return raw_size


# --- the joiner's side ----------------------------------------------------------------------


async def receive(
    frames: FrameStream,
    staging: Path,
    *,
    timeout: float,
    pause: float = 0.0,
    data_format: dict[str, Any] | None = None,
) -> Header | None:
    """Ask for a snapshot and write it to `staging/data.mdb`; None if the peer refused.
    Raises SnapshotError (or the stream's own errors) if it does not arrive whole."""
    request = {"op": "snapshot", "format": data_format or snapshot_format()}
    await frames.send(request, timeout=timeout)
    reply = await frames.receive(timeout=timeout)
    if isinstance(reply, dict) and isinstance(reply.get("refused"), str):
        return None
    info = reply.get("snapshot") if isinstance(reply, dict) else None
    if not isinstance(info, dict):
        raise p.ProtocolError("shape")
    root, size = info.get("root"), info.get("size")
    if not (isinstance(root, bytes) and len(root) == 16 and _uint(size)):
        raise p.ProtocolError("shape")
    header = Header(int.from_bytes(root, "big"), size)
    shutil.rmtree(staging, ignore_errors=True)
    private_dir(staging)  # the peer's data, then ours: the owner's only
    room = shutil.disk_usage(staging).free - DISK_RESERVE
    sha = hashlib.sha256()
    with os.fdopen(open_private(staging / DATA_FILE, os.O_WRONLY | os.O_TRUNC), "wb") as out:
        sink = _Bounded(out, sha, room)
        writer = zstandard.ZstdDecompressor().stream_writer(sink, write_return_read=True)
        while True:
            frame = await frames.receive(timeout=timeout)
            if not isinstance(frame, dict):
                raise p.ProtocolError("shape")
            if frame.get("end") is True:
                break
            piece = frame.get("chunk")
            if not isinstance(piece, bytes):
                raise p.ProtocolError("shape")
            try:
                writer.write(piece)
            except zstandard.ZstdError as exc:
                raise SnapshotError(f"the snapshot does not decompress: {exc}") from None
            if pause:
                await trio.sleep(pause)  # sync_throttle_delay: the peer waits on TCP meanwhile
        writer.flush()
        out.flush()
        # Hundreds of MB may still be on their way to the disk: not on the event loop, which
        # must go on answering the membership's probes.
        await trio.to_thread.run_sync(os.fsync, out.fileno())
    if sink.written != frame.get("raw_size") or sha.digest() != frame.get("sha256"):
        raise SnapshotError("the snapshot arrived damaged (size or SHA-256 differs)")
    return header


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= p.MAX_INT


class _Bounded:
    """A file sink that hashes what it writes and refuses to grow past `limit` bytes (a
    decompression bomb, or a disk too small for the copy)."""

    def __init__(self, out: Any, sha: Any, limit: int) -> None:
        self.out, self.sha, self.limit = out, sha, limit
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise SnapshotError("the snapshot does not fit on this disk")
        self.sha.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


async def verify(
    staging: Path, header: Header, max_value_size: int, parts: int | None = None
) -> tuple[MerkleTree, int]:
    """Check the copy in `staging`; returns its Merkle tree and the highest HLC in it.
    Raises SnapshotError saying what is wrong.

    The check is CPU work per record (the record checks and hashes of a push), so it runs
    in `parts` child processes (one per CPU, at most 4), each taking every `parts`-th entry:
    they use the machine's other cores, and do not take the GIL from the event loop."""
    _check_schema(staging)
    parts = parts or max(1, min(4, os.cpu_count() or 1))
    results: list[dict[str, Any]] = [{} for _ in range(parts)]

    async def run(part: int) -> None:
        command = [sys.executable, "-m", "kvs.sync.snapshot", str(staging)]
        command += [str(max_value_size), str(part), str(parts)]
        try:
            done = await trio.run_process(
                command,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                # Summaries are compared as sums of hash(): the same in every child.
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
        except OSError as exc:
            raise SnapshotError(f"cannot start the snapshot check: {exc}") from None
        try:
            results[part] = msgpack.unpackb(done.stdout)
        except ValueError:
            results[part] = {}
        if done.returncode != 0 or not isinstance(results[part], dict):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise SnapshotError(f"the snapshot check failed: {' '.join(tail) or done.returncode}")

    try:
        async with trio.open_nursery() as nursery:
            for part in range(parts):
                nursery.start_soon(run, part)
    except BaseExceptionGroup as group:
        # The nursery wraps a part's SnapshotError in a group: raise it as itself, which
        # is what callers catch (a bootstrap then goes on by records).
        failure = expected_error(group, (SnapshotError,))
        if failure is None:
            raise
        raise failure from None
    leaves = [0] * (FANOUT**DEFAULT_DEPTH)
    counts = [0] * len(leaves)
    highest = expected = found = 0
    for result in results:
        if isinstance(result.get("error"), str):
            raise SnapshotError(result["error"])
        part_leaves, part_counts = result.get("leaves"), result.get("counts")
        if not (
            isinstance(part_leaves, bytes)
            and len(part_leaves) == 16 * len(leaves)
            and isinstance(part_counts, list)
            and len(part_counts) == len(leaves)
        ):
            raise SnapshotError("the snapshot check gave no result")
        for leaf in range(len(leaves)):
            leaves[leaf] ^= int.from_bytes(part_leaves[16 * leaf : 16 * leaf + 16], "big")
            counts[leaf] += part_counts[leaf]
        highest = max(highest, result["highest"])
        expected = (expected + result["expected"]) & _MASK
        found = (found + result["found"]) & _MASK
    tree = MerkleTree.from_leaves(leaves, counts)
    if tree.root != header.root or tree.size != header.size:
        raise SnapshotError("the snapshot's records do not match the root the peer sent")
    if found != expected:
        raise SnapshotError("the snapshot's summaries do not match its records")
    return tree, highest


def _check_schema(staging: Path) -> None:
    try:
        env = open_copy(staging)
    except lmdb.Error as exc:
        raise SnapshotError(f"the snapshot is not an LMDB data file: {exc}") from None
    try:
        if stored_schema(env) != SCHEMA_VERSION:
            raise SnapshotError(f"the snapshot is not of a store of schema {SCHEMA_VERSION}")
    except (lmdb.Error, ValueError) as exc:
        raise SnapshotError(f"the snapshot is not a KVS store: {exc}") from None
    finally:
        env.close()


def check_part(staging: Path, max_value_size: int, part: int, parts: int) -> dict[str, Any]:
    """One child's share of `verify`: every `parts`-th record and summary from `part`."""
    store = Store(
        staging,
        clock=HybridLogicalClock(lambda: 0),
        new_uuid=lambda: "",
        settings=READER,
        in_thread=False,
    )
    try:
        return _check_contents(store, max_value_size, part, parts)
    except SnapshotError as exc:
        return {"error": str(exc)}
    finally:
        store.close()


def _check_contents(store: Store, max_value_size: int, part: int, parts: int) -> dict[str, Any]:
    """Every record valid and filed under its own key, hashed into its Merkle leaf; the
    summaries (what anti-entropy lists) exactly those the records give, compared as sums of
    hashes of (bucket key, summary): that guards against a damaged index, not a hostile
    peer (which could push bad records anyway)."""
    codec = RecordCodec()
    pack = msgpack.Packer().pack
    leaves = [0] * (FANOUT**DEFAULT_DEPTH)
    counts = [0] * len(leaves)
    highest = expected = found = 0
    for index, (key_b, raw) in enumerate(store.iter_raw_items()):
        if index % _CHECK_CHUNK == 0:
            store.release_mapped_pages()  # the copy is read once: keep RSS small
        if index % parts != part:
            continue
        try:
            record = p.check_record(codec, raw, max_value_size)
        except p.ProtocolError:
            raise SnapshotError("the snapshot holds a record that is not valid") from None
        stored_at, bucket_key, summary = index_entries(record, pack)
        if stored_at != key_b:
            raise SnapshotError(f"the snapshot files a record under another key: {record.key!r}")
        v = record.version
        leaf = leaf_of(record.key, len(leaves))
        leaves[leaf] ^= record_hash(record.key, v, record.value is None)
        counts[leaf] += 1
        highest = max(highest, v.hlc)
        expected = (expected + hash((bucket_key, summary))) & _MASK
    for index, (bucket_key, summary) in enumerate(store.iter_raw_items(BUCKETS)):
        if index % _CHECK_CHUNK == 0:
            store.release_mapped_pages()
        if index % parts == part:
            found = (found + hash((bucket_key, summary))) & _MASK
    return {
        "leaves": b"".join(leaf.to_bytes(16, "big") for leaf in leaves),
        "counts": counts,
        "highest": highest,
        "expected": expected,
        "found": found,
    }


def main(argv: list[str]) -> int:
    """`python -m kvs.sync.snapshot STAGING MAX_VALUE_SIZE PART PARTS`: one part of
    `verify`, its result as msgpack on stdout."""
    staging, max_value_size, part, parts = Path(argv[0]), *map(int, argv[1:4])
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)  # below every node's event loop (membership probes must be answered)
    sys.stdout.buffer.write(msgpack.packb(check_part(staging, max_value_size, part, parts)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
