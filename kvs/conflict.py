"""Conflict tooling: write the same keys with conflicting values and the same HLC timestamp
into the data dirs of two STOPPED nodes (what the Go KVS's `test_conflict.go` did), and say
which value the conflict rule (`kvs.model.resolve`) must make win everywhere.

    kvs conflict DIR1 DIR2 [--key KEY]... [--json]
    python scripts/conflict.py DIR1 DIR2 ...           (the same)

DIR is a node's `data_dir` (or its config file, whose `data_dir` is used). Each side's
record carries that node's own identity from its store's system database (node id and
`joined_timestamp`), a fresh UUID, and an HLC reading equal on both sides and newer than
anything either store holds, so neither side's existing version of a key wins. Start both
nodes as one cluster afterwards: once they have synced, both must hold the printed winner.

The rule: the newer HLC wins; on an equal HLC the write of the node that joined the cluster
earliest wins (the Go KVS's "oldest-node rule"); then the larger UUID; then the larger
origin node id. Here the HLCs are equal by construction, so `joined_timestamp` decides
unless both nodes joined in the same millisecond.

Exit status: 0 written, 1 refused (a node is running on a dir, a dir is not a started
node's, the store cannot be opened), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.config import Config, project
from kvs.model import (
    HLC_LOGICAL_MASK,
    InvalidKey,
    Record,
    Version,
    canonical_json,
    hlc_ms,
    hlc_pack,
    resolve,
    validate_key,
)
from kvs.store import Merge, Store, StoreError, StoreSettings, Written
from kvs.store.layout import DATA_FILE, in_use

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
DEFAULT_KEYS = ("conflict/test/1", "conflict/test/2", "conflict/test/3")
SIDES = ("A", "B")


class ConflictError(Exception):
    """Something that stops the tool; the message says what and why (exit status 1)."""


@dataclass(frozen=True)
class Side:
    label: str  # "A" or "B"
    data_dir: Path
    node_id: str
    joined_timestamp: int


@dataclass(frozen=True)
class KeyConflict:
    key: str
    records: tuple[Record, Record]  # A's, B's
    winner: int  # 0: A, 1: B
    reason: str


# --- pure parts --------------------------------------------------------------------------------


def explain(a: Record, b: Record, names: tuple[str, str] | None = None) -> tuple[int, str]:
    """Which of two versions of a key `resolve` keeps (0 or 1), and the rule that decided.
    `names` label the two writers in the reason (default: their origin node ids)."""
    winner = 0 if resolve(a, b) is a else 1
    va, vb = a.version, b.version
    na, nb = names or (va.origin, vb.origin)
    w, lose = (va, vb) if winner == 0 else (vb, va)
    wn, ln = (na, nb) if winner == 0 else (nb, na)
    if va.hlc != vb.hlc:
        why = (
            f"{wn}'s HLC {format_hlc(w.hlc)} is newer than {ln}'s {format_hlc(lose.hlc)}:"
            " the newer write wins"
        )
    elif va.origin_joined != vb.origin_joined:
        why = (
            f"equal HLC {format_hlc(w.hlc)}; {wn} joined the cluster earlier"
            f" (joined_timestamp {w.origin_joined} < {lose.origin_joined}): on equal HLCs the"
            " earliest-joined node's write wins (the oldest-node rule)"
        )
    elif va.uuid != vb.uuid:
        why = (
            f"equal HLC and equal joined_timestamp {w.origin_joined}; {wn}'s UUID {w.uuid}"
            f" is larger than {ln}'s {lose.uuid}: then the larger UUID wins"
        )
    else:
        why = (
            f"equal HLC, joined_timestamp and UUID; {wn}'s origin id {w.origin!r} is larger"
            f" than {lose.origin!r}: the origin node id breaks the last tie"
        )
    return winner, why


def format_hlc(hlc: int) -> str:
    logical = hlc & HLC_LOGICAL_MASK
    return f"{hlc_ms(hlc)} ms" + (f" +{logical}" if logical else "")


def conflicting_records(
    key: str, sides: tuple[Side, Side], hlc: int, uuids: tuple[str, str]
) -> tuple[Record, Record]:
    """The two versions of `key`: same HLC, each side's own identity, distinct UUIDs."""

    def make(side: Side, uid: str) -> Record:
        value = {"conflict": side.label, "node": side.node_id, "written_by": "kvs conflict"}
        return Record(
            key=key,
            value=canonical_json(value),
            version=Version(hlc, side.joined_timestamp, side.node_id, uid),
            created_at=hlc_ms(hlc),
        )

    return make(sides[0], uuids[0]), make(sides[1], uuids[1])


# --- the stores --------------------------------------------------------------------------------


def resolve_data_dir(arg: str) -> Path:
    """A node's data dir from what the user gave: the dir itself, or the node's config file."""
    path = Path(arg)
    if path.is_file():
        from kvs.config import ConfigError, load

        try:
            return load(path).data_path.resolve()
        except ConfigError as exc:
            raise ConflictError(f"{arg}: {exc}") from None
    return path.resolve()


def check_stopped(data_dir: Path) -> None:
    """Refuse a dir that is not a store, or that some process has open (a node runs there):
    checked before we open it ourselves (see `kvs.store.layout.in_use`)."""
    if not (data_dir / DATA_FILE).is_file():
        raise ConflictError(
            f"{data_dir} is not a KVS data dir (no {DATA_FILE}): give a node's data_dir, after"
            " starting that node once"
        )
    if in_use(data_dir):
        raise ConflictError(f"{data_dir} is in use (a node is running on it?): stop the node first")


@contextlib.contextmanager
def open_side(label: str, data_dir: Path) -> Iterator[tuple[Side, Store]]:
    store = Store(
        data_dir,
        clock=HybridLogicalClock(system_wall_ms),
        new_uuid=lambda: str(uuid.uuid4()),
        settings=project(StoreSettings, Config()),  # the shipped defaults: fsync, zstd 3
        in_thread=False,
    )
    try:
        identity = store.get_system("identity")
        if not isinstance(identity, dict) or not isinstance(identity.get("node_id"), str):
            raise ConflictError(
                f"{data_dir} holds no node identity: start that node once (and stop it) first"
            )
        store.ensure_identity(identity["node_id"], identity["joined_timestamp"])
        yield Side(label, data_dir, identity["node_id"], identity["joined_timestamp"]), store
    finally:
        store.close()


async def _merge_all(pairs: list[tuple[Store, list[Record]]]) -> list[list[Any]]:
    outcomes: list[list[Any]] = []
    async with trio.open_nursery() as nursery:
        for store, _ in pairs:
            await nursery.start(store.writer)
        for store, records in pairs:
            outcomes.append(await store.write([Merge(r) for r in records]))
        nursery.cancel_scope.cancel()
    return outcomes


def write_conflicts(
    dir_a: Path, dir_b: Path, keys: list[str]
) -> tuple[tuple[Side, Side], int, list[KeyConflict]]:
    """Write the conflicting versions of `keys` into both stores; return what was written."""
    if dir_a == dir_b or (dir_a.exists() and dir_b.exists() and dir_a.samefile(dir_b)):
        raise ConflictError("DIR1 and DIR2 are the same directory: give two nodes' data dirs")
    for d in (dir_a, dir_b):
        check_stopped(d)
    try:
        with open_side("A", dir_a) as (side_a, store_a), open_side("B", dir_b) as (side_b, store_b):
            sides = (side_a, side_b)
            # Newer than anything either store holds or issued (their persisted HLCs), so the
            # Merge replaces whatever version of the key is there on both sides.
            hlc = max(hlc_pack(system_wall_ms()), store_a.clock.last + 1, store_b.clock.last + 1)
            conflicts = []
            for key in keys:
                uuids = (str(uuid.uuid4()), str(uuid.uuid4()))
                records = conflicting_records(key, sides, hlc, uuids)
                winner, reason = explain(
                    *records, names=(f"A ({side_a.node_id})", f"B ({side_b.node_id})")
                )
                conflicts.append(KeyConflict(key, records, winner, reason))
            outcomes = trio.run(
                _merge_all,
                [
                    (store_a, [c.records[0] for c in conflicts]),
                    (store_b, [c.records[1] for c in conflicts]),
                ],
            )
            for side, side_outcomes in zip(sides, outcomes, strict=True):
                refused = [o.key for o in side_outcomes if not isinstance(o, Written)]
                if refused:
                    raise ConflictError(
                        f"{side.data_dir}: the store kept its newer version of {refused[0]!r}"
                    )
    except StoreError as exc:
        raise ConflictError(str(exc)) from None
    return sides, hlc, conflicts


# --- output ------------------------------------------------------------------------------------


def report_text(sides: tuple[Side, Side], hlc: int, conflicts: list[KeyConflict]) -> str:
    lines = [
        f"wrote {len(conflicts)} conflicting key(s) into both data dirs, every version with the"
        f" same HLC {hlc} ({format_hlc(hlc)}):",
    ]
    for side in sides:
        lines.append(
            f"  {side.label}: {side.data_dir}  node {side.node_id!r},"
            f" joined_timestamp {side.joined_timestamp}"
        )
    for c in conflicts:
        lines.append("")
        lines.append(f"key {c.key}")
        for side, record in zip(sides, c.records, strict=True):
            assert record.value is not None
            lines.append(f"  {side.label}: {record.value.decode()}  uuid {record.version.uuid}")
        w = sides[c.winner]
        lines.append(f"  must win: {w.label} ({w.node_id}): {c.reason}")
    lines += [
        "",
        "Start both nodes as one cluster: once they have synced, every node must hold each"
        " key's winning value (GET /kv/KEY) and both must report the same GET /merkle_tree/root.",
    ]
    return "\n".join(lines)


def report_json(sides: tuple[Side, Side], hlc: int, conflicts: list[KeyConflict]) -> dict[str, Any]:
    return {
        "hlc": hlc,
        "timestamp": hlc_ms(hlc),
        "sides": [
            {
                "label": s.label,
                "data_dir": str(s.data_dir),
                "node_id": s.node_id,
                "joined_timestamp": s.joined_timestamp,
            }
            for s in sides
        ],
        "keys": [
            {
                "key": c.key,
                "versions": [
                    {
                        "node_id": r.version.origin,
                        "uuid": r.version.uuid,
                        "data": json.loads(r.value or b"null"),
                    }
                    for r in c.records
                ],
                "winner": SIDES[c.winner],
                "winner_node": sides[c.winner].node_id,
                "winner_uuid": c.records[c.winner].version.uuid,
                "winner_data": json.loads(c.records[c.winner].value or b"null"),
                "reason": c.reason,
            }
            for c in conflicts
        ],
    }


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir1", metavar="DIR1", help="a stopped node's data_dir (or its config)")
    parser.add_argument("dir2", metavar="DIR2", help="another stopped node's data_dir (or config)")
    parser.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help=f"a key to write (repeatable; default {', '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    keys = list(dict.fromkeys(args.keys or DEFAULT_KEYS))
    for key in keys:
        try:
            validate_key(key)
        except InvalidKey as exc:
            print(f"kvs conflict: --key {key!r}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        dir_a, dir_b = resolve_data_dir(args.dir1), resolve_data_dir(args.dir2)
        sides, hlc, conflicts = write_conflicts(dir_a, dir_b, keys)
    except ConflictError as exc:
        print(f"kvs conflict: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(report_json(sides, hlc, conflicts), indent=2))
    else:
        print(report_text(sides, hlc, conflicts))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="conflict.py",
        description="Write same-timestamp conflicting versions of keys into two stopped"
        " nodes' data dirs and print which one the conflict rule makes win.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["explain", "main", "run", "write_conflicts"]
