"""Backup files: a consistent, compacted LMDB copy, zstd-compressed, verifiable, restorable.

A backup file is

    [zstd stream: the compacted LMDB data file]  [manifest: JSON]  [trailer: 12 bytes]

where the trailer is the manifest's length (u32, big-endian) and the magic `KVSBAK1\\n`, and
the manifest holds the format version, node id, creation time, the payload's compressed
size and the raw data file's size and SHA-256. A file cut short loses its trailer (or its
sizes stop adding up); a flipped bit breaks zstd's frame checksum or the SHA-256. Either is
found by `read_manifest`/`restore` before anything is written to the target directory.

The copy is LMDB's own `mdb_env_copyfd2(MDB_CP_COMPACT)`: it runs inside one read
transaction, so it is a consistent snapshot, and writers go on while it runs (they only
cannot reuse the pages it pins). This module is plain blocking code for a worker thread;
the Trio side (schedule, status, trigger) is `kvs/backup_service.py`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import lmdb
import zstandard

from kvs.audit import AUDIT_DIR
from kvs.private_files import open_private, secure_dir
from kvs.store.layout import (
    DATA_FILE,
    IDENTITY,
    SCHEMA,
    in_use,
    open_copy,
    system_entries,
    unpack_value,
)

FORMAT_VERSION = 1
MAGIC = b"KVSBAK1\n"
_TRAILER = struct.Struct(">I8s")
MAX_MANIFEST = 64 * 1024
CHUNK = 1 << 20
SUFFIX = ".kvsbak"
COMPRESSION_LEVEL = 3
BACKUP_NICE = 10  # the backup threads' CPU priority, below the node's own threads
ROOT_TOKEN_FILE = "root.token"  # <data_dir>/root.token (kvs/node.py writes it)
# Not in a backup, and the node's own: a restore keeps the target's (see `restore`).
KEPT_ON_RESTORE = (AUDIT_DIR, ROOT_TOKEN_FILE)

# kvs-<node id>-<UTC time to the millisecond>.kvsbak: sortable by name, parseable back.
_STAMP_FORMAT = "%Y%m%dT%H%M%S"
_NAME = re.compile(
    r"^kvs-(?P<node>.+)-(?P<stamp>\d{8}T\d{6})(?P<ms>\d{3})Z" + re.escape(SUFFIX) + "$"
)


class BackupError(Exception):
    """A backup could not be made, read or restored; the message says what and where."""


@dataclass(frozen=True)
class Manifest:
    node_id: str
    created_ms: int
    payload_size: int  # compressed bytes before the manifest
    raw_size: int  # the LMDB data file's size
    raw_sha256: str
    format: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int  # bytes on disk
    raw_size: int  # the compacted LMDB copy's size
    seconds: float
    manifest: Manifest


# ---------------------------------------------------------------- names and retention


def backup_name(node_id: str, when_ms: int) -> str:
    when = dt.datetime.fromtimestamp(when_ms / 1000, dt.UTC)
    return f"kvs-{node_id}-{when.strftime(_STAMP_FORMAT)}{when_ms % 1000:03d}Z{SUFFIX}"


def parse_name(name: str) -> tuple[str, int] | None:
    """(node id, creation ms) of a backup file name, or None for any other file."""
    match = _NAME.match(name)
    if match is None:
        return None
    when = dt.datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=dt.UTC)
    return match["node"], int(when.timestamp()) * 1000 + int(match["ms"])


def list_backups(directory: Path, node_id: str) -> list[tuple[Path, int]]:
    """This node's backup files in `directory`, oldest first, with their creation ms."""
    found = []
    with contextlib.suppress(OSError):  # missing, not a directory, unreadable: none to list
        for entry in directory.iterdir():
            parsed = parse_name(entry.name)
            if parsed is not None and parsed[0] == node_id and entry.is_file():
                found.append((entry, parsed[1]))
    return sorted(found, key=lambda item: item[1])


def expired(backups: list[tuple[Path, int]], now_ms: int, retention_days: int) -> list[Path]:
    """Which of this node's backups retention removes: older than `retention_days`, except
    the newest, which is always kept (a stalled schedule must not leave zero backups).
    `retention_days == 0` keeps everything."""
    if retention_days <= 0 or not backups:
        return []
    cutoff = now_ms - retention_days * 86_400_000
    newest = max(backups, key=lambda item: item[1])[0]
    return [path for path, created in backups if created < cutoff and path != newest]


def apply_retention(directory: Path, node_id: str, now_ms: int, retention_days: int) -> list[Path]:
    """Delete this node's expired backups (never another node's files); return what went."""
    removed = []
    for path in expired(list_backups(directory, node_id), now_ms, retention_days):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


# ---------------------------------------------------------------- making a backup


def create_backup(
    env: lmdb.Environment,
    directory: Path,
    node_id: str,
    now_ms: Callable[[], int],
    *,
    level: int = COMPRESSION_LEVEL,
    nice: int = BACKUP_NICE,
) -> BackupResult:
    """Write a backup of `env` into `directory`; blocking (run it in a worker thread).

    The data is streamed LMDB copy -> pipe -> zstd -> a hidden temp file, which is fsync'd
    and renamed into place, so a crash or a full disk never leaves a partial `.kvsbak`.
    The copy and the compression run in threads of their own at a lower CPU priority
    (`nice`), so that on a busy machine the node's event loop and writer go first."""
    return _run_niced(nice, lambda: _create(env, directory, node_id, now_ms, level))


def _run_niced(nice: int, work: Callable[[], BackupResult]) -> BackupResult:
    """Run `work` in a new thread whose priority is lowered by `nice` (Linux: per thread,
    inherited by the threads it starts, LMDB's copy thread included); a fresh thread, so
    no pooled worker thread of the node keeps the lower priority."""
    outcome: list[BackupResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        if nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        try:
            outcome.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="kvs-backup", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _create(
    env: lmdb.Environment,
    directory: Path,
    node_id: str,
    now_ms: Callable[[], int],
    level: int,
) -> BackupResult:
    started = time.monotonic()
    created = now_ms()
    secure_dir(directory, "backup directory")  # 0700, and its files 0600 (mkstemp's mode)
    final = directory / backup_name(node_id, created)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            raw_size, digest, payload = _copy_compressed(env, out, level)
            manifest = Manifest(node_id, created, payload, raw_size, digest)
            body = manifest.to_json()
            out.write(body)
            out.write(_TRAILER.pack(len(body), MAGIC))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return BackupResult(final, final.stat().st_size, raw_size, time.monotonic() - started, manifest)


def _copy_compressed(env: lmdb.Environment, out: BinaryIO, level: int) -> tuple[int, str, int]:
    """Stream a compacted copy of `env` through zstd into `out`: (raw size, sha256, bytes out)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            env.copyfd(write_fd, compact=True)
        except BaseException as exc:  # handed to the reading side below
            failure.append(exc)
        finally:
            os.close(write_fd)

    copier = threading.Thread(target=copy, name="kvs-backup-copy", daemon=True)
    copier.start()
    sha = hashlib.sha256()
    raw_size = 0
    start = out.tell()
    try:
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            writer = compressor.stream_writer(out, closefd=False)
            while chunk := source.read(CHUNK):
                sha.update(chunk)
                raw_size += len(chunk)
                writer.write(chunk)
            writer.flush(zstandard.FLUSH_FRAME)
    finally:
        # Closing the read end (done above) makes a copy still writing fail with EPIPE.
        copier.join()
    if failure:
        raise BackupError(f"LMDB copy failed: {failure[0]}")
    return raw_size, sha.hexdigest(), out.tell() - start


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading and restoring


def read_manifest(path: Path) -> Manifest:
    """The manifest of a backup file; BackupError if the file is not one, or is cut short."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size < _TRAILER.size:
                raise BackupError(f"{path}: truncated or not a KVS backup (only {size} bytes)")
            fh.seek(size - _TRAILER.size)
            length, magic = _TRAILER.unpack(fh.read(_TRAILER.size))
            if magic != MAGIC:
                raise BackupError(f"{path}: truncated or not a KVS backup (no end marker)")
            if length > MAX_MANIFEST or length > size - _TRAILER.size:
                raise BackupError(f"{path}: corrupted backup (bad manifest length {length})")
            fh.seek(size - _TRAILER.size - length)
            raw = fh.read(length)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
        manifest = Manifest(
            node_id=str(data["node_id"]),
            created_ms=int(data["created_ms"]),
            payload_size=int(data["payload_size"]),
            raw_size=int(data["raw_size"]),
            raw_sha256=str(data["raw_sha256"]),
            format=int(data["format"]),
        )
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{path}: corrupted backup (unreadable manifest)") from None
    if manifest.format != FORMAT_VERSION:
        raise BackupError(f"{path}: backup format {manifest.format} is not supported")
    if manifest.payload_size + length + _TRAILER.size != size:
        raise BackupError(
            f"{path}: truncated or corrupted backup ({size} bytes; its manifest says "
            f"{manifest.payload_size + length + _TRAILER.size})"
        )
    return manifest


def _extract(
    path: Path, manifest: Manifest, target: Path, progress: Callable[[int, int], None] | None
) -> None:
    """Decompress the payload into the file `target`, checking size and SHA-256."""
    sha = hashlib.sha256()
    written = 0
    try:
        fd = open_private(target, os.O_WRONLY | os.O_TRUNC)
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            reader = zstandard.ZstdDecompressor().stream_reader(
                _Limited(src, manifest.payload_size), read_across_frames=True
            )
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > manifest.raw_size:
                    break
                sha.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(src.tell(), manifest.payload_size)
            out.flush()
            os.fsync(out.fileno())
    except zstandard.ZstdError as exc:
        raise BackupError(f"{path}: corrupted backup ({exc})") from None
    if written != manifest.raw_size or sha.hexdigest() != manifest.raw_sha256:
        raise BackupError(f"{path}: corrupted backup (checksum mismatch)")


class _Limited:
    """A read-only view of the first `limit` bytes of a file (the zstd payload)."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh = fh
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data = self.fh.read(size)
        self.left -= len(data)
        return data


def _check_store(directory: Path) -> None:
    """The restored copy opens as a KVS store (LMDB readable, schema and identity present)."""
    try:
        env = open_copy(directory)
    except lmdb.Error as exc:
        raise BackupError(f"the restored data is not a readable LMDB store: {exc}") from None
    try:
        schema, identity = system_entries(env, SCHEMA, IDENTITY)
        if schema is None or identity is None:
            raise BackupError("the backup is not of a KVS store (no schema or identity)")
        unpack_value(identity)
    except lmdb.Error as exc:
        raise BackupError(f"the backup is not of a KVS store: {exc}") from None
    finally:
        env.close()


def node_holds(directory: Path) -> bool:
    """Whether a running process has the LMDB environment in `directory` open."""
    try:
        return in_use(directory)
    except OSError:
        return True  # cannot tell: refuse rather than overwrite a live store


def restore(
    backup: Path,
    data_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Restore `backup` into `data_dir` (a stopped node's), or raise BackupError.

    Everything is checked first and the data is unpacked and verified beside the target;
    only then does it replace the target's contents, so on any error the target is as it
    was. A non-empty target is refused unless `force`; a target in use by a node always.

    What a backup does not hold and the node's history needs stays in place: the target's
    audit log and root token file (`KEPT_ON_RESTORE`) are moved into the restored directory,
    with their modes (the directory itself is 0700, the data file 0600)."""
    manifest = read_manifest(backup)
    data_dir = data_dir.absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir():
        if node_holds(data_dir):
            raise BackupError(f"{data_dir} is in use by a running node; stop it first")
        if any(data_dir.iterdir()) and not force:
            raise BackupError(f"{data_dir} is not empty; use --force to replace its contents")
    parent = data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=parent))
    try:
        _extract(backup, manifest, staging / DATA_FILE, progress)
        _check_store(staging)
        kept = _carry_over(data_dir, staging)
        try:
            _replace_dir(staging, data_dir)
        except BaseException:
            _carry_over(staging, data_dir, kept)  # the old directory is back: so are they
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def kept_on_restore(data_dir: Path) -> list[str]:
    """Which of `KEPT_ON_RESTORE` a restore into `data_dir` keeps (those that exist)."""
    return [name for name in KEPT_ON_RESTORE if os.path.lexists(data_dir / name)]


def _carry_over(source: Path, target: Path, names: list[str] | None = None) -> list[str]:
    """Move `names` (default: those of KEPT_ON_RESTORE in `source`) from `source` into
    `target` by renaming (same file system: the staging directory is beside the target)."""
    moved = kept_on_restore(source) if names is None else names
    for name in moved:
        if os.path.lexists(target / name):  # not in a backup; never expected: keep ours
            shutil.rmtree(target / name, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(target / name)
        os.rename(source / name, target / name)
    return moved


def _replace_dir(staging: Path, data_dir: Path) -> None:
    """Put the staged store in place: rename the old directory aside, the new one in."""
    old = None
    if data_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.old-", dir=data_dir.parent))
        os.rmdir(old)
        os.rename(data_dir, old)
    try:
        os.rename(staging, data_dir)
    except BaseException:
        if old is not None:
            os.rename(old, data_dir)
        raise
    _fsync_dir(data_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
