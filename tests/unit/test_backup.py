"""Backups: round trip, corruption and truncation, retention, the cron schedule, the endpoints.

Real LMDB and real files throughout; the schedule runs on an injected wall clock and sleep,
so "midnight" arrives at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import random
import struct
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
import zstandard

from kvs.backup import (
    BackupError,
    Manifest,
    apply_retention,
    backup_name,
    create_backup,
    list_backups,
    parse_name,
    read_manifest,
    restore,
)
from kvs.backup_service import BackupService, BackupSettings, next_run
from kvs.config import Config
from kvs.node import Node
from kvs.store import Delete, Put
from tests.support.api import client_of, expect_error, expect_json, put
from tests.support.config import make_config

DBS = (b"records", b"changes", b"history", b"expiry", b"tombstones", b"system", b"buckets")
DAY_MS = 86_400_000


def dump(env: lmdb.Environment) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every entry of every named database: what "the same store" means, byte for byte."""
    out = {}
    for name in DBS:
        db = env.open_db(name, create=False)
        with env.begin(db=db) as txn:
            out[name] = list(txn.cursor().iternext())
    return out


def dump_dir(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    env = lmdb.open(str(path), readonly=True, max_dbs=8, lock=False)
    try:
        return dump(env)
    finally:
        env.close()


async def fill(node: Node) -> None:
    """Keys with several versions (history), a delete (tombstone), a TTL, a long key."""
    await node.store.write([Put(f"users/{i}", b'{"n":%d}' % i) for i in range(500)])
    for version in range(3):
        await node.store.write([Put("doc/evolving", b'{"v":%d}' % version)])
    await node.store.write([Put("doc/ttl", b"1", expires_at=node.clock.wall_ms() + 3_600_000)])
    await node.store.write([Put("doc/" + "x" * 900, b'"long"')])
    await node.store.write([Delete("users/7")])


async def test_backup_restore_round_trip_equals_the_original(start_node, tmp_path):
    node = await start_node(backup_path=str(tmp_path / "backups"))
    await fill(node)
    result = await node.backups.run_once()
    assert result.path.parent == tmp_path / "backups"
    assert parse_name(result.path.name) == ("test-node", result.manifest.created_ms)
    original = dump(node.store.env)
    assert len(original[b"history"]) >= 2 and len(original[b"tombstones"]) == 1

    target = tmp_path / "restored" / "data"
    manifest = restore(result.path, target)
    assert manifest.node_id == "test-node"
    assert sorted(p.name for p in target.iterdir()) == ["data.mdb"]
    assert dump_dir(target) == original
    assert [p.name for p in target.parent.iterdir()] == ["data"]  # no staging left behind

    # A node opened on the restored dir serves the same data, history and tombstone.
    restored = Node(make_config(tmp_path, data_dir=str(target)), rng=random.Random(1))
    store = restored.open_store()
    try:
        assert store.count() == node.store.count() == 502
        assert store.get("doc/evolving") == node.store.get("doc/evolving")
        assert store.history("doc/evolving") == node.store.history("doc/evolving")
        assert len(store.history("doc/evolving")) == 2
        assert store.get("users/7").deleted
        assert store.get("doc/" + "x" * 900).value == b'"long"'
    finally:
        store.close()


async def test_writes_go_on_while_a_backup_runs(start_node, tmp_path):
    """The copy runs in a worker thread: writes issued meanwhile are committed meanwhile."""
    node = await start_node(backup_path=str(tmp_path / "backups"))
    await node.store.write([Put(f"k/{i}", b'{"pad":"%s"}' % (b"x" * 200)) for i in range(20_000)])
    during: list[bool] = []

    async def writer() -> None:
        while not node.backups.running:
            await trio.sleep(0)
        for i in range(5):
            await node.store.write([Put(f"during/{i}", b"1")])
            during.append(node.backups.running)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await node.backups.run_once()
    assert node.store.get("during/4") is not None
    assert during[0], "the first write during the backup had to wait for the backup to end"


def rewritten_payload(data: bytes, manifest: Manifest) -> bytes:
    """The same backup with one byte of the LMDB copy changed and compressed again into a
    valid zstd frame (with its own checksum), the manifest's sizes made to fit, its SHA-256
    kept: a corruption that happened before compression, or a forgery."""
    raw = bytearray(
        zstandard.ZstdDecompressor().decompressobj().decompress(data[: manifest.payload_size])
    )
    raw[len(raw) // 2] ^= 0xFF
    payload = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(raw))
    forged = dataclasses.replace(manifest, payload_size=len(payload))
    body = forged.to_json()
    return payload + body + struct.pack(">I", len(body)) + b"KVSBAK1\n"


async def test_truncated_or_corrupted_backups_are_refused_and_the_target_untouched(
    start_node, tmp_path
):
    node = await start_node(backup_path=str(tmp_path / "backups"))
    await fill(node)
    good = (await node.backups.run_once()).path
    data = good.read_bytes()
    manifest = read_manifest(good)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("old contents")

    cases = {
        "empty": b"",
        "cut by one byte": data[:-1],
        "cut in half": data[: len(data) // 2],
        "trailer only": data[-12:],
        "one payload bit flipped": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "extra bytes": data + b"\0",
        "manifest altered": data.replace(b'"raw_size": ', b'"raw_size": 1', 1),
        # zstd's frame checksum cannot see these two: only the manifest's SHA-256 can.
        "manifest checksum altered": data.replace(
            manifest.raw_sha256.encode(), bytes(reversed(manifest.raw_sha256.encode()))
        ),
        "payload rewritten in a valid frame": rewritten_payload(data, manifest),
    }
    for what, content in cases.items():
        bad = tmp_path / f"bad-{what.replace(' ', '-')}.kvsbak"
        bad.write_bytes(content)
        with pytest.raises(BackupError) as info:
            restore(bad, target, force=True)
        message = str(info.value)
        assert "corrupted" in message or "truncated" in message, (what, message)
        assert sorted(p.name for p in target.iterdir()) == ["keep.txt"], what
        assert (target / "keep.txt").read_text() == "old contents"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], what
    with pytest.raises(BackupError, match="truncated"):
        read_manifest(tmp_path / "bad-cut-by-one-byte.kvsbak")


async def test_restore_refuses_a_non_empty_dir_without_force_and_creates_a_missing_one(
    start_node, tmp_path
):
    node = await start_node(backup_path=str(tmp_path / "backups"))
    await fill(node)
    backup = (await node.backups.run_once()).path
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "data.mdb").write_bytes(b"someone else's store")
    with pytest.raises(BackupError, match="not empty.*--force"):
        restore(backup, busy)
    assert (busy / "data.mdb").read_bytes() == b"someone else's store"
    restore(backup, busy, force=True)
    assert dump_dir(busy) == dump(node.store.env)

    fresh = tmp_path / "a" / "b" / "new"
    seen: list[tuple[int, int]] = []
    restore(backup, fresh, progress=lambda done, total: seen.append((done, total)))
    assert dump_dir(fresh) == dump(node.store.env)
    assert seen and seen[-1][0] == seen[-1][1] == read_manifest(backup).payload_size


def test_restore_refuses_a_file_that_is_not_of_a_kvs_store(tmp_path):
    """A well-formed backup of some other LMDB environment is refused after verification."""
    env = lmdb.open(str(tmp_path / "other"), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    result = create_backup(env, tmp_path / "backups", "x", lambda: 1_700_000_000_000)
    env.close()
    with pytest.raises(BackupError, match="not of a KVS store"):
        restore(result.path, tmp_path / "target")
    assert not (tmp_path / "target").exists()


# --- names and retention ----------------------------------------------------------------------


def test_backup_names_round_trip_and_ignore_other_files():
    when = int(dt.datetime(2026, 11, 18, 21, 42, 33, tzinfo=dt.UTC).timestamp()) * 1000 + 302
    name = backup_name("node-a.b_c-1", when)
    assert name == "kvs-node-a.b_c-1-20261118T214233302Z.kvsbak"
    assert parse_name(name) == ("node-a.b_c-1", when)
    for other in ("kvs-n-2026.kvsbak", "notes.txt", name + ".tmp", "." + name + ".x.tmp"):
        assert parse_name(other) is None


def test_retention_removes_only_this_nodes_old_backups_and_keeps_the_newest(tmp_path):
    now = 1_800_000_000_000
    files = {}
    for node in ("me", "other", "me-2"):
        for age_days in (0.5, 6.9, 7.1, 30):
            name = backup_name(node, now - int(age_days * DAY_MS))
            (tmp_path / name).write_bytes(b"x")
            files[node, age_days] = name
    (tmp_path / "unrelated.kvsbak").write_bytes(b"x")

    removed = apply_retention(tmp_path, "me", now, retention_days=7)
    assert sorted(p.name for p in removed) == sorted([files["me", 7.1], files["me", 30]])
    left = {p.name for p in tmp_path.iterdir()}
    assert files["me", 0.5] in left and files["me", 6.9] in left
    assert all(files[n, a] in left for n in ("other", "me-2") for a in (0.5, 6.9, 7.1, 30))
    assert "unrelated.kvsbak" in left

    # Only old backups left: the newest of them stays, whatever its age.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for age in (10, 20):
        (lonely / backup_name("me", now - age * DAY_MS)).write_bytes(b"x")
    apply_retention(lonely, "me", now, retention_days=7)
    assert [p.name for p, _ in list_backups(lonely, "me")] == [backup_name("me", now - 10 * DAY_MS)]
    # 0 keeps everything.
    (lonely / backup_name("me", now - 99 * DAY_MS)).write_bytes(b"x")
    assert apply_retention(lonely, "me", now, retention_days=0) == []


# --- the schedule -------------------------------------------------------------------------------


class FakeWall:
    """A UTC wall clock whose sleep moves it forward at once (and records each sleep); the
    `block_at`-th sleep never returns, so a test can look at the state the loop reached."""

    def __init__(self, start: dt.datetime, block_at: int) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.block_at = block_at

    def __call__(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) >= self.block_at:
            await trio.sleep_forever()
        self.now += dt.timedelta(seconds=seconds)
        await trio.sleep(0)


def test_next_run_follows_the_cron_expression_in_utc():
    at = dt.datetime(2026, 3, 1, 23, 59, 30, tzinfo=dt.UTC)
    assert next_run("0 0 * * *", at) == dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert next_run("*/15 * * * *", at) == dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)
    assert next_run("30 2 * * 0", at) == dt.datetime(2026, 3, 8, 2, 30, tzinfo=dt.UTC)  # Sunday
    midnight = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert next_run("0 0 * * *", midnight) == dt.datetime(2026, 3, 3, tzinfo=dt.UTC)


async def test_schedule_takes_a_backup_at_each_midnight_and_applies_retention(tmp_path):
    wall = FakeWall(dt.datetime(2026, 3, 1, 23, 59, 0, tzinfo=dt.UTC), block_at=5)
    env = lmdb.open(str(tmp_path / "data"), max_dbs=8)
    directory = tmp_path / "backups"
    service = BackupService(
        node_id="n1",
        env=lambda: contextlib.nullcontext(env),
        settings=BackupSettings(True, "0 0 * * *", directory, backup_retention=2),
        now=wall,
        sleep=wall.sleep,
    )
    try:
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run_schedule)
                while len(wall.sleeps) < 5:  # four backups taken, the fifth sleep begun
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    finally:
        env.close()
    assert wall.sleeps == [60.0, 86400.0, 86400.0, 86400.0, 86400.0]
    assert service.next_run == dt.datetime(2026, 3, 6, tzinfo=dt.UTC)
    # Taken on 2, 3, 4 and 5 March at 00:00; with 2 days of retention, 2 March is gone.
    kept = [created for _, created in list_backups(directory, "n1")]
    assert kept == [
        int(dt.datetime(2026, 3, day, tzinfo=dt.UTC).timestamp() * 1000) for day in (3, 4, 5)
    ]
    status = service.status()
    assert status["count"] == 3 and status["last_result"] == "ok"
    assert status["last_run"] == "2026-03-05T00:00:00.000+00:00"
    assert status["next_run"] == "2026-03-06T00:00:00.000+00:00"


async def test_a_clock_that_jumps_back_delays_the_run_instead_of_running_early(tmp_path):
    wall = FakeWall(dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.UTC), block_at=3)
    original = wall.sleep

    async def sleep_then_jump_back(seconds: float) -> None:
        await original(seconds)
        if len(wall.sleeps) == 1:
            wall.now -= dt.timedelta(minutes=10)  # NTP stepped the clock back

    env = lmdb.open(str(tmp_path / "data"), max_dbs=8)
    service = BackupService(
        node_id="n1",
        env=lambda: contextlib.nullcontext(env),
        settings=BackupSettings(True, "0 0 * * *", tmp_path / "b", 7),
        now=wall,
        sleep=sleep_then_jump_back,
    )
    try:
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run_schedule)
                while len(wall.sleeps) < 3:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    finally:
        env.close()
    assert wall.sleeps == [3600.0, 600.0, 86400.0]
    assert len(list_backups(tmp_path / "b", "n1")) == 1


async def test_a_failed_backup_is_reported_in_the_status(start_node, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    node = await start_node(backup_path=str(blocker))
    with pytest.raises(BackupError, match="not-a-dir"):
        await node.backups.run_once()
    status = node.backups.status()
    assert status["last_result"] == "error" and "not-a-dir" in status["last_error"]
    assert status["running"] is False and status["count"] == 0


# --- HTTP ---------------------------------------------------------------------------------------


async def test_backup_endpoints_take_one_and_report_it(start_node, tmp_path):
    node = await start_node(backup_path=str(tmp_path / "bk"), backup_retention=3)
    client = client_of(node)
    before = await expect_json(await client.get("/api/backup/status"))
    assert before["enabled"] is False and before["next_run"] is None
    assert before["count"] == 0 and before["last_run"] is None and before["retention_days"] == 3
    await put(client, "a/b", {"x": 1})
    taken = await expect_json(await client.post("/api/backup/run"))
    path = Path(taken["path"])
    assert path.is_file() and path.stat().st_size == taken["size"]
    assert taken["node_id"] == "test-node" and taken["raw_size"] > 0
    after = await expect_json(await client.get("/api/backup/status"))
    assert after["count"] == 1 and after["total_size"] == taken["size"]
    assert after["last_result"] == "ok" and after["last_file"] == taken["path"]
    await expect_error(await client.get("/api/backup/run"), 405)
    await expect_error(await client.delete("/api/backup/status"), 405)


async def test_an_enabled_node_reports_its_next_run(start_node, tmp_path):
    node = await start_node(
        backup_enabled=True, backup_schedule="0 3 * * *", backup_path=str(tmp_path / "bk")
    )
    await trio.sleep(0.05)
    status = await expect_json(await client_of(node).get("/api/backup/status"))
    assert status["enabled"] is True
    assert status["next_run"].endswith("T03:00:00.000+00:00")


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("backup_schedule", "every day", "not a cron expression"),
        ("backup_schedule", "0 0 * *", "not a cron expression"),
        ("backup_schedule", "61 0 * * *", "not a cron expression"),
        ("backup_schedule", 5, "must be a string"),
        ("backup_retention", -1, "between 0 and 36500"),
        ("backup_retention", "7d", "must be an integer"),
        ("backup_enabled", "yes", "true or false"),
        ("log_format", "xml", "text, json"),
    ],
)
def test_bad_backup_and_logging_config_names_the_key(key: str, value: Any, says: str):
    from kvs.config import ConfigError, from_mapping

    with pytest.raises(ConfigError) as info:
        from_mapping({"node_id": "n", key: value})
    assert info.value.key == key
    assert says in str(info.value) and "\n" not in str(info.value)


def test_backup_path_is_relative_to_the_config_file(tmp_path):
    config = Config(node_id="n", backup_path="./bk", source=str(tmp_path / "conf" / "c.yaml"))
    assert config.backup_dir == (tmp_path / "conf" / "bk").resolve()
    assert os.path.isabs(config.backup_dir)


async def test_restore_keeps_the_targets_audit_log_and_root_token(
    start_node, tmp_path, monkeypatch
):
    node = await start_node(backup_path=str(tmp_path / "backups"))
    await fill(node)
    result = await node.backups.run_once()
    target = tmp_path / "target"
    (target / "audit").mkdir(parents=True, mode=0o700)
    (target / "audit" / "data.mdb").write_bytes(b"the audit log")
    (target / "root.token").write_text("root-token\n")
    (target / "root.token").chmod(0o600)
    (target / "data.mdb").write_bytes(b"old data")
    (target / "other").write_text("replaced")
    restore(result.path, target, force=True)
    assert sorted(p.name for p in target.iterdir()) == ["audit", "data.mdb", "root.token"]
    assert (target / "audit" / "data.mdb").read_bytes() == b"the audit log"
    assert (target / "root.token").read_text() == "root-token\n"
    assert (target / "root.token").stat().st_mode & 0o777 == 0o600
    assert (target / "data.mdb").stat().st_mode & 0o777 == 0o600
    assert target.stat().st_mode & 0o777 == 0o700
    # A restore that fails leaves them where they were, with the old directory.
    bad = tmp_path / "bad.kvsbak"
    bad.write_bytes(result.path.read_bytes()[:-10])
    with pytest.raises(BackupError):
        restore(bad, target, force=True)
    assert (target / "root.token").read_text() == "root-token\n"
    # One that fails while swapping the directories puts them back too.

    def swap_fails(staging, data_dir):
        raise OSError("the disk went away")

    monkeypatch.setattr("kvs.backup._replace_dir", swap_fails)
    with pytest.raises(OSError):
        restore(result.path, target, force=True)
    assert sorted(p.name for p in target.iterdir()) == ["audit", "data.mdb", "root.token"]
    assert (target / "audit" / "data.mdb").read_bytes() == b"the audit log"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".target")] == []
