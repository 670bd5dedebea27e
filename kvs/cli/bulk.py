"""Prefix operations, export and import: `kvs get --prefix`, `kvs rm --prefix`, `kvs count`,
`kvs dump` and `kvs load` (kvs/cli/client.py registers them).

A prefix is a folder: `kvs get --prefix home` reads `home/...` (not `home` itself, not
`homework`), as `_tree` lists it. Pages come from `GET /kv/{prefix}/_tree?values=true`
(`Client.scan`); writes and deletes go through `POST /kv/_batch`, at most 1,000 ops or
about 8 MiB a request.

The dump format is JSON lines, one live key a line, in key order, written byte for byte
the same for the same data (so dump -> load -> dump gives an identical file):

    {"key":"home/socks","value":{"colour":"red"}}
    {"key":"session/1","value":"abc","expires_at":1796353972840}      absolute ms
    {"key":"a","value":1,"owner":"UUID","group":"UUID","mode":"0xf31"}   --with-metadata

(`mode`: the 12 permission bits in hex, three nibbles, as docs/security.md shows them).

`kvs load` reads that, or the JSON array `consul kv export` writes (values base64; a value
that is JSON is stored as that JSON, other text as a JSON string).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson

from kvs.cli.progress import Progress
from kvs.cli.usage import UsageError

if TYPE_CHECKING:
    from kvs.client import Client

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
BATCH_OPS = 1000  # the _batch endpoint's limit
BATCH_BYTES = 8 * 1024 * 1024  # well under its 32 MiB body limit
PAGE = 1000
DUMP_FIELDS = frozenset({"key", "value", "expires_at", "owner", "group", "mode"})


class BadInput(Exception):
    """A dump line (or consul entry) that cannot be loaded: its number and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


# --- reading ------------------------------------------------------------------------------


def dump_line(item: dict[str, Any], with_metadata: bool) -> str:
    """One key of a `_tree?values=true` page as its dump line (no newline)."""
    out: dict[str, Any] = {"key": item["key"], "value": item["data"]}
    if item.get("expires_at") is not None:
        out["expires_at"] = item["expires_at"]
    if with_metadata:
        out["owner"] = item.get("owner_uuid", "")
        out["group"] = item.get("group_uuid", "")
        out["mode"] = f"0x{int(item.get('permissions', 0)):03x}"
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def cmd_get_prefix(client: Client, args: argparse.Namespace) -> int:
    items = client.scan(args.key.strip("/"), page_size=min(args.limit or PAGE, PAGE))
    for shown, item in enumerate(items):
        if args.limit and shown >= args.limit:
            break
        value = json.dumps(item["data"], ensure_ascii=False, separators=(",", ":"))
        if args.json:
            record = {"key": item["key"], "value": item["data"], "uuid": item["uuid"]}
            record["timestamp"] = item["timestamp"]
            print(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        else:
            print(f"{item['key']}\t{value}")
    return EXIT_OK


def count(client: Client, prefix: str) -> int:
    return int(client.tree(prefix.strip("/"), limit=1)["total"])


def cmd_count(client: Client, args: argparse.Namespace) -> int:
    total = count(client, args.prefix)
    if args.json:
        print(json.dumps({"prefix": args.prefix, "count": total}))
    else:
        print(total)
    return EXIT_OK


def cmd_dump(client: Client, args: argparse.Namespace) -> int:
    prefix = args.prefix.strip("/")
    out: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    progress = Progress("dumping", None)
    if progress.enabled:
        progress.total = count(client, prefix)
    written = 0
    try:
        for item in client.scan(prefix, page_size=PAGE):
            out.write(dump_line(item, args.with_metadata) + "\n")
            written += 1
            progress.advance(1)
    finally:
        progress.finish()
        if args.output:
            out.close()
    if args.output:
        print(f"dumped {written} keys to {args.output}", file=sys.stderr)
    return EXIT_OK


# --- rm --prefix ----------------------------------------------------------------------------


def cmd_rm_prefix(client: Client, args: argparse.Namespace) -> int:
    prefix = args.key.strip("/")
    total = count(client, prefix)
    if total == 0:
        print(f"no keys under {prefix}/")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"rm --prefix {prefix} would delete {total} keys: add --yes to confirm"
                " (no terminal to ask on)"
            )
        answer = input(f"delete {total} keys under {prefix}/? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_ERROR
    progress = Progress("deleting", total)
    deleted = 0
    try:
        page: list[dict[str, Any]] = []
        for item in client.scan(prefix, page_size=BATCH_OPS):
            page.append({"op": "delete", "key": item["key"]})
            if len(page) == BATCH_OPS:
                deleted += _deleted(client.batch(page))
                progress.advance(len(page))
                page = []
        if page:
            deleted += _deleted(client.batch(page))
            progress.advance(len(page))
    finally:
        progress.finish()
    if args.json:
        print(json.dumps({"prefix": prefix, "deleted": deleted}))
    else:
        print(f"deleted {deleted} keys under {prefix}/")
    return EXIT_OK


def _deleted(results: list[dict[str, Any]]) -> int:
    return sum(1 for r in results if r.get("deleted"))


# --- load ---------------------------------------------------------------------------------


@dataclass
class Batch:
    parts: list[bytes] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    size: int = 0
    metadata: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add(self, line: int, op: dict[str, Any], meta: dict[str, Any] | None) -> None:
        text = orjson.dumps(op)
        self.parts.append(text)
        self.lines.append(line)
        self.size += len(text) + 1
        if meta:
            self.metadata.append((op["key"], meta))

    def full(self) -> bool:
        return len(self.parts) >= BATCH_OPS or self.size >= BATCH_BYTES

    def body(self) -> bytes:
        return b'{"ops":[' + b",".join(self.parts) + b"]}"


def entries(stream: IO[str], start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, entry) for each line from `start` on; a consul export's entries are
    numbered from 1 instead. Raises BadInput for the first malformed one."""
    first = stream.read(1)
    while first and first.isspace():
        first = stream.read(1)
    if first == "[":
        yield from _consul(first + stream.read(), start)
        return
    number = 0
    for number, line in enumerate(_lines(first, stream), start=1):
        if number < start or not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadInput(number, f"not JSON ({exc.msg} at column {exc.colno})") from None
        yield number, _checked(number, entry)


def _lines(first: str, stream: IO[str]) -> Iterator[str]:
    rest = stream.readline()
    yield first + rest
    yield from stream


def _checked(number: int, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or "value" not in entry:
        raise BadInput(number, 'expected {"key": "...", "value": ...}')
    unknown = set(entry) - DUMP_FIELDS
    if unknown:
        raise BadInput(number, f"unknown field(s) {', '.join(sorted(unknown))}")
    expires = entry.get("expires_at")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
        raise BadInput(number, "expires_at must be an integer (ms since the epoch)")
    mode = entry.get("mode")
    if mode is not None:
        try:
            entry["mode"] = int(mode, 16) if isinstance(mode, str) else int(mode)
        except (TypeError, ValueError):
            entry["mode"] = -1
        if isinstance(mode, bool) or not 0 <= entry["mode"] <= 0xFFF:
            raise BadInput(number, f"mode must be hex 0x000-0xfff (12 bits), got {mode!r}")
    return entry


def _consul(text: str, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise BadInput(1, f"not a consul kv export ({exc})") from None
    for number, item in enumerate(items if isinstance(items, list) else [None], start=1):
        if number < start:
            continue
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise BadInput(number, 'consul entry: expected {"key", "flags", "value"}')
        if item["key"].endswith("/"):
            continue  # a consul folder: nothing to store
        try:
            raw = base64.b64decode(item.get("value") or "", validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadInput(number, "consul entry: value is not base64 of UTF-8 text") from None
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # consul stores bytes; text that is not JSON becomes a JSON string
        yield number, {"key": item["key"], "value": value}


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    try:
        stream: IO[str] = (
            sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        )
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    sender = Sender(client, args.from_line - 1)
    expired = 0
    batch = Batch()
    try:
        with stream, sender:
            for number, entry in entries(stream, args.from_line):
                expires = entry.get("expires_at")
                if expires is not None and expires <= time.time() * 1000 + 1000:
                    expired += 1  # gone already (or within the second): not written
                    continue
                op = {"op": "put", "key": entry["key"], "data": entry["value"]}
                if expires is not None:
                    op["expires_at"] = expires
                batch.add(number, op, _metadata(entry))
                if batch.full():
                    sender.put(batch)
                    batch = Batch()
            if batch.parts:
                sender.put(batch)
    except (BadInput, LoadStopped) as exc:
        return _stopped(args, str(exc), sender)
    except UnicodeDecodeError:
        return _stopped(args, "the file is not UTF-8 text", sender)
    sender.progress.finish()
    report = {"written": sender.written, "expired_skipped": expired}
    if args.json:
        print(json.dumps(report))
    else:
        skipped = f" ({expired} already expired, skipped)" if expired else ""
        print(f"loaded {sender.written} keys{skipped}")
    return EXIT_OK


class Sender:
    """Sends batches in order from a thread of its own, so the next batch is read and built
    while the node commits this one (one request in flight, one batch waiting). After a
    refused batch it sends nothing more; `done_line` is the last line of the last batch
    written, so `--from-line done_line + 1` resumes exactly there."""

    def __init__(self, client: Client, done_line: int) -> None:
        self.client = client
        self.done_line = done_line
        self.written = 0
        self.failure: LoadStopped | None = None
        self.progress = Progress("loading", None)
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="kvs-load-sender", daemon=True)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        # Batches already handed over are whole and good (a bad line stops the batch it is
        # in, not those before it): they are sent before the thread ends.
        self._queue.put(None)
        self._thread.join()
        if kind is None and self.failure is not None:
            raise self.failure

    def put(self, batch: Batch) -> None:
        if self.failure is not None:
            raise self.failure
        self._queue.put(batch)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.failure is None:
                try:
                    self._send(batch)
                except LoadStopped as exc:
                    self.failure = exc
                except Exception as exc:  # the node unreachable: reported like a refusal
                    self.failure = LoadStopped(str(exc), self.done_line)

    def _send(self, batch: Batch) -> None:
        from kvs.client import KvsError
        from kvs.client.operations import calls

        try:
            results = self.client.call(calls.batch_body(batch.body()))
            for key, meta in batch.metadata:
                self.client.set_metadata(key, **meta)
        except KvsError as exc:
            index = exc.body.get("index") if isinstance(exc.body, dict) else None
            where = f"line {batch.lines[index]}: " if isinstance(index, int) else ""
            status = f"{exc.status} " if exc.status is not None else ""
            raise LoadStopped(f"{where}{status}{exc.message}", self.done_line) from None
        self.written += len(results)
        self.progress.advance(len(results))
        self.done_line = batch.lines[-1]


class LoadStopped(Exception):
    def __init__(self, message: str, done_line: int) -> None:
        super().__init__(message)
        self.done_line = done_line


def _metadata(entry: dict[str, Any]) -> dict[str, Any] | None:
    meta = {}
    if "owner" in entry:
        meta["owner_uuid"] = entry["owner"]
    if "group" in entry:
        meta["group_uuid"] = entry["group"]
    if "mode" in entry:
        meta["permissions"] = entry["mode"]
    return meta or None


def _stopped(args: argparse.Namespace, why: str, sender: Sender) -> int:
    sender.progress.finish()
    done = sender.done_line
    print(
        f"kvs: load stopped: {why}; {sender.written} keys written, nothing past line {done};"
        f" resume with: kvs load {args.file} --from-line {done + 1}",
        file=sys.stderr,
    )
    return EXIT_ERROR


def register(add: Any, positive_int: Any) -> None:
    """`count`, `dump` and `load` (`add` is kvs/cli/client.py's subcommand adder)."""
    p = add("count", cmd_count, "count the keys below a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p = add("dump", cmd_dump, "write every key below a prefix as JSON lines (see kvs load)")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    p.add_argument(
        "--with-metadata", action="store_true", help="also each key's owner, group and mode"
    )
    p = add("load", cmd_load, "write keys from a kvs dump or a consul kv export, in batches")
    p.add_argument("file", help="a `kvs dump` file (JSON lines), a consul export, or -")
    p.add_argument(
        "--from-line",
        type=positive_int,
        default=1,
        metavar="N",
        help="start at line N (resume a load that stopped)",
    )
