"""Client subcommands of `kvs`, on kvs.client: talk to a running node over HTTP.

    kvs get KEY                     kvs put KEY JSON|- [--ttl 30s] [--if-match UUID]
    kvs rm KEY                      kvs ls [PREFIX]        kvs tree [PREFIX]
    kvs history KEY                 kvs watch [PREFIX] [--since MS|ID]
    kvs members                     kvs user|group|token ...

Each takes, after its name: `--url` (default $KVS_URL, else http://127.0.0.1:8080),
`--token` (default $KVS_TOKEN), `--cacert` (default $KVS_CACERT: the CA bundle an https node's
certificate is checked against, else the system's store), `--json` (machine output: the node's JSON), `--timeout`.
Exit status: 0 done; 1 the node answered an error or could not be reached (the message on
stderr); 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kvs.cli import bulk, names
from kvs.cli.usage import UsageError
from kvs.client.env import CACERT_ENV, DEFAULT_URL, TOKEN_ENV, TOKEN_HINT, URL_ENV

if TYPE_CHECKING:
    from kvs.client import Client

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

COMMANDS = (
    "get",
    "put",
    "rm",
    "ls",
    "tree",
    "history",
    "watch",
    "members",
    "user",
    "group",
    "token",
    "count",
    "dump",
    "load",
)

Handler = Callable[["Client", argparse.Namespace], int]


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def client_verify(args: argparse.Namespace) -> Any:
    """What checks an https node's certificate: --cacert, else $KVS_CACERT, else the system's
    CA store (kvs.client's rule). UsageError for a CA bundle that cannot be read."""
    from kvs.client.operations import resolve_verify

    try:
        return resolve_verify(getattr(args, "cacert", None))
    except ValueError as exc:
        raise UsageError(f"--cacert: {exc}") from None


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_client_args(p: argparse.ArgumentParser, timeout: float) -> None:
    """--url, --token and --timeout: how every subcommand that talks to a node finds it."""
    p.add_argument(
        "--url", help=f"the node's HTTP address (default ${URL_ENV}, else {DEFAULT_URL})"
    )
    p.add_argument("--token", help=f"API token (default ${TOKEN_ENV}); sent as a Bearer token")
    p.add_argument(
        "--cacert",
        metavar="PATH",
        help=f"CA bundle (PEM) to check an https node's certificate with (default ${CACERT_ENV},"
        " else the system's CA store)",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=timeout,
        help=f"seconds to wait for the node (default {timeout:g})",
    )


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_client_args(common, timeout=5.0)
    common.add_argument("--json", action="store_true", help="print the node's JSON")
    return common


def register(subparsers: Any) -> None:
    common = _common()

    def add(name: str, handler: Handler, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help_text, **kwargs)
        parser.set_defaults(func=lambda args: run(handler, args))
        return parser

    p = add("get", cmd_get, "print a key's value (--prefix: every key below, with values)")
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="KEY is a prefix: every key below it")
    p.add_argument("--limit", type=_positive_int, help="with --prefix: at most this many keys")
    p = add("put", cmd_put, "write a key (JSON argument, or - to read stdin)")
    p.add_argument("key")
    p.add_argument("value", metavar="JSON", help="a JSON document, or - to read it from stdin")
    p.add_argument("--ttl", help="expire after this long (30s, 5m, 1h, 7d or seconds)")
    p.add_argument("--if-match", metavar="UUID", help="write only if this is the current version")
    p = add("rm", cmd_rm, "delete a key (--prefix: every key below it)")
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="KEY is a prefix: delete every key below")
    p.add_argument("--yes", action="store_true", help="with --prefix: do not ask")
    p = add("ls", cmd_ls, "list the direct children of a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--limit", type=_positive_int)
    p = add("tree", cmd_tree, "list every key below a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--depth", type=_positive_int)
    p.add_argument("--limit", type=_positive_int)
    p = add("history", cmd_history, "show a key's previous versions")
    p.add_argument("key")
    p = add("watch", cmd_watch, "print changes under a prefix as they happen (Ctrl-C stops)")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument(
        "--since",
        help="first replay changes after this millisecond timestamp or event id",
    )
    add("members", cmd_members, "show a node's member table")
    bulk.register(add, _positive_int)
    _register_admin(subparsers, common)


def _register_admin(subparsers: Any, common: argparse.ArgumentParser) -> None:
    def group(name: str, help_text: str) -> Any:
        parser = subparsers.add_parser(name, help=help_text)
        parser.set_defaults(func=lambda args: _missing_action(parser))
        return parser.add_subparsers(dest="action")

    def add(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[common], help=help_text)
        parser.set_defaults(func=lambda args: run(handler, args))
        return parser

    users = group("user", "manage users (needs an admin token)")
    p = add(users, "create", cmd_user_create, "create a user")
    p.add_argument("nickname")
    p.add_argument("--group", action="append", dest="groups", metavar="NAME|UUID")
    add(users, "list", cmd_user_list, "list users")
    p = add(users, "show", cmd_user_show, "show one user")
    p.add_argument("uuid", metavar="NAME|UUID")
    p = add(users, "update", cmd_user_update, "change a user")
    p.add_argument("uuid", metavar="NAME|UUID")
    p.add_argument("--nickname")
    p.add_argument("--group", action="append", dest="groups", metavar="NAME|UUID")
    p = add(users, "rm", cmd_user_rm, "delete a user (and its tokens)")
    p.add_argument("uuid", metavar="NAME|UUID")

    groups = group("group", "manage groups (needs an admin token)")
    p = add(groups, "create", cmd_group_create, "create a group")
    p.add_argument("groupname")
    p.add_argument("--member", action="append", dest="members", metavar="NAME|UUID")
    add(groups, "list", cmd_group_list, "list groups")
    p = add(groups, "show", cmd_group_show, "show one group")
    p.add_argument("uuid", metavar="NAME|UUID")
    p = add(groups, "update", cmd_group_update, "change a group")
    p.add_argument("uuid", metavar="NAME|UUID")
    p.add_argument("--groupname")
    p.add_argument("--member", action="append", dest="members", metavar="NAME|UUID")
    p = add(groups, "rm", cmd_group_rm, "delete a group")
    p.add_argument("uuid", metavar="NAME|UUID")

    tokens = group("token", "manage API tokens")
    p = add(tokens, "create", cmd_token_create, "issue a token for a user")
    p.add_argument("user_uuid", metavar="USER", help="the user's nickname or UUID")
    p.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        required=True,
        metavar="SCOPE",
        help="a scope, or a preset: admin (every scope), read-write (read, write, delete), read",
    )
    p.add_argument("--expires-in", help="lifetime (1h, 30m or seconds; default 1h)")
    p = add(tokens, "list", cmd_token_list, "list tokens (without their secrets)")
    p.add_argument("--user", metavar="USER", help="only this user's tokens (nickname or UUID)")
    p = add(tokens, "revoke", cmd_token_revoke, "revoke a token everywhere")
    p.add_argument("id")


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: choose an action", file=sys.stderr)
    return EXIT_USAGE


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Open a client from the common options, run `handler`, map errors to exit statuses."""
    # Imported here, not at the top: the HTTP client (httpx) is a tenth of a second of
    # start-up that `kvs` running a node never needs.
    from kvs.client import Client, KvsError, WatchEnded

    try:
        client_verify(args)
        client = Client(args.url, args.token, timeout=args.timeout, verify=args.cacert)
    except UsageError as exc:
        return _usage(str(exc))
    except ValueError as exc:
        return _usage(f"--url: {exc}")
    try:
        with client:
            return handler(client, args)
    except UsageError as exc:
        return _usage(str(exc))
    except names.NameError_ as exc:
        return _error(str(exc))
    except WatchEnded as exc:
        resume = f" (resume with --since {exc.last_id})" if exc.last_id else ""
        return _error(f"{exc.message}{resume}")
    except KvsError as exc:
        return _error(error_text(exc))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `kvs tree | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_OK


def error_text(exc: Any) -> str:
    """A KvsError for people: `404 key not found`; a 401 says how to pass a token."""
    prefix = f"{exc.status} " if exc.status is not None else ""
    hint = f" ({TOKEN_HINT})" if exc.status == 401 else ""
    return f"{prefix}{exc.message}{hint}"


def _usage(message: str) -> int:
    print(f"kvs: {message}", file=sys.stderr)
    return EXIT_USAGE


def _error(message: str) -> int:
    print(f"kvs: {message}", file=sys.stderr)
    return EXIT_ERROR


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def iso(ms: Any) -> str:
    """A millisecond timestamp as UTC ISO 8601 (`?` if it is not one)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_auto(value: Any) -> str:
    """`iso` for the security API's times, some in seconds (token expiry), some in ms."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 1e11:
        return iso(value * 1000)  # seconds: 1e11 s is the year 5138, 1e11 ms is 1973
    return iso(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, for people."""
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --- keys -----------------------------------------------------------------------------------


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    if args.prefix:
        return bulk.cmd_get_prefix(client, args)
    value = client.get(args.key)
    if args.json:
        _print_json(
            {"key": value.key, "uuid": value.uuid, "timestamp": value.timestamp, "data": value.data}
        )
    else:
        _print_json(value.data)
    return EXIT_OK


def cmd_put(client: Client, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.value == "-" else args.value
    try:
        json.loads(text)
    except ValueError as exc:
        source = "stdin" if args.value == "-" else "the JSON argument"
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    written = client.put(args.key, text, ttl=args.ttl, if_match=args.if_match, raw=True)
    if args.json:
        _print_json({"key": written.key, "uuid": written.uuid, "timestamp": written.timestamp})
    else:
        print(f"wrote {written.key} (version {written.uuid}, {iso(written.timestamp)})")
    return EXIT_OK


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    if args.prefix:
        return bulk.cmd_rm_prefix(client, args)
    client.delete(args.key)
    if args.json:
        _print_json({"key": args.key, "deleted": True})
    else:
        print(f"deleted {args.key}")
    return EXIT_OK


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    body = client.ls(args.prefix, limit=args.limit, include_metadata=not args.json)
    if args.json:
        _print_json(body)
        return EXIT_OK
    rows = []
    for child in body.get("children", []):
        kind = "key" if child.get("is_key") else ""
        if child.get("has_children"):
            kind = f"{kind}+prefix" if kind else "prefix"
        name = child.get("subkey", "?") + ("/" if child.get("has_children") else "")
        size = str(child["size"]) if "size" in child else ""
        updated = iso(child["timestamp"]) if "timestamp" in child else ""
        rows.append((name, kind, size, updated))
    print(table(("NAME", "TYPE", "SIZE", "UPDATED"), rows))
    print(_total_line(body, "child", "children"))
    return EXIT_OK


def cmd_tree(client: Client, args: argparse.Namespace) -> int:
    body = client.tree(args.prefix, depth=args.depth, limit=args.limit)
    if args.json:
        _print_json(body)
        return EXIT_OK
    rows = [(k["key"], k["uuid"], iso(k["timestamp"])) for k in body.get("keys", [])]
    print(table(("KEY", "VERSION", "UPDATED"), rows))
    print(_total_line(body, "key", "keys"))
    return EXIT_OK


def _total_line(body: dict[str, Any], one: str, many: str) -> str:
    total = body.get("total", 0)
    line = f"{total} {one if total == 1 else many}"
    if body.get("truncated"):
        line += " (truncated: use --limit)"
    return line


def cmd_history(client: Client, args: argparse.Namespace) -> int:
    versions = client.history(args.key)
    if args.json:
        _print_json(versions)
        return EXIT_OK
    rows = []
    for n, v in enumerate(versions, start=1):
        data = "(deleted)" if v.get("deleted") else json.dumps(v.get("data"), ensure_ascii=False)
        if len(data) > 60:
            data = data[:57] + "..."
        rows.append((str(n), v.get("uuid", "?"), iso(v.get("timestamp")), data))
    print(table(("#", "VERSION", "WRITTEN", "DATA"), rows))
    print(f"{len(versions)} previous version{'' if len(versions) == 1 else 's'}")
    return EXIT_OK


def _end_watch(signum: int, frame: object) -> None:
    """Ctrl-C ends a watch at once, as it ends `tail -f`: the stream is read-only, so nothing
    needs cleaning up, and unwinding a KeyboardInterrupt through the HTTP client's open
    stream could block (a test saw the process still alive 30 s after SIGINT, once)."""
    with contextlib.suppress(OSError):  # a closed pipe: nothing more to say anyway
        sys.stdout.flush()
    os._exit(EXIT_OK)


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, _end_watch)
    for event in client.watch(args.prefix, since=args.since):
        if args.json:
            record = {
                "key": event.key,
                "uuid": event.uuid,
                "timestamp": event.timestamp,
                "deleted": event.deleted,
                "id": event.id,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            kind = "delete" if event.deleted else "put"
            print(f"{iso(event.timestamp)}  {kind:<6}  {event.key}  {event.uuid}", flush=True)
    return EXIT_OK


# --- cluster --------------------------------------------------------------------------------


def cmd_members(client: Client, args: argparse.Namespace) -> int:
    members = client.members()
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return _error(f"{client.url}/members/ did not answer a member table")
    if args.json:
        print(json.dumps(members, indent=2))
    else:
        print(format_members(members, now_ms=time.time_ns() // 1_000_000))
    return EXIT_OK


def format_members(members: list[dict[str, Any]], *, now_ms: int) -> str:
    """The member table for people: one row per member, `*` marking the node asked."""
    header = ("NODE_ID", "STATE", "INC", "HTTP", "GOSSIP", "CHANGED")
    rows = [
        (
            f"{m.get('node_id', '?')}{' *' if m.get('self') else ''}",
            str(m.get("state", "?")),
            str(m.get("incarnation", "?")),
            str(m.get("http_address", "?")),
            str(m.get("gossip_address", "?")),
            _age(m.get("last_change"), now_ms),
        )
        for m in members
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]
    counts: dict[str, int] = {}
    for m in members:
        counts[str(m.get("state", "?"))] = counts.get(str(m.get("state", "?")), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines.append(f"{len(members)} members: {summary}" if members else "no members")
    return "\n".join(lines)


def _age(last_change: Any, now_ms: int) -> str:
    """`12s ago`, `5m ago`, ... from a wall-clock ms timestamp (`?` if there is none)."""
    if isinstance(last_change, bool) or not isinstance(last_change, int):
        return "?"
    seconds = max(0, now_ms - last_change) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# --- users, groups, tokens --------------------------------------------------------------------


def _show(args: argparse.Namespace, item: dict[str, Any]) -> int:
    if args.json:
        _print_json(item)
    else:
        width = max((len(k) for k in item), default=0)
        for name, value in item.items():
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value) or "-"
            elif name.endswith("_at") and isinstance(value, int | float):
                value = iso_auto(value)
            print(f"{name.ljust(width)}  {value}")
    return EXIT_OK


def _list(
    args: argparse.Namespace, items: list[dict[str, Any]], columns: Sequence[str], kind: str
) -> int:
    if args.json:  # the node's own object, as documented: {"users": [...]}
        _print_json({kind: items})
        return EXIT_OK
    rows = []
    for item in items:
        row = []
        for column in columns:
            value = item.get(column, "")
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif column.endswith("_at") and isinstance(value, int | float):
                value = iso_auto(value)
            row.append(str(value))
        rows.append(row)
    print(table([c.upper() for c in columns], rows))
    return EXIT_OK


def cmd_user_create(client: Client, args: argparse.Namespace) -> int:
    return _show(args, client.create_user(args.nickname, names.group_uuids(client, args.groups)))


def cmd_user_list(client: Client, args: argparse.Namespace) -> int:
    return _list(args, client.users(), ("uuid", "nickname", "groups"), "users")


def cmd_user_show(client: Client, args: argparse.Namespace) -> int:
    return _show(args, client.user(names.user_uuid(client, args.uuid)))


def cmd_user_update(client: Client, args: argparse.Namespace) -> int:
    groups = names.group_uuids(client, args.groups)
    item = client.update_user(
        names.user_uuid(client, args.uuid), nickname=args.nickname, groups=groups
    )
    return _show(args, item)


def cmd_user_rm(client: Client, args: argparse.Namespace) -> int:
    uuid = names.user_uuid(client, args.uuid)
    client.delete_user(uuid)
    return _done(args, {"uuid": uuid, "deleted": True}, f"deleted user {uuid}")


def cmd_group_create(client: Client, args: argparse.Namespace) -> int:
    return _show(args, client.create_group(args.groupname, names.user_uuids(client, args.members)))


def cmd_group_list(client: Client, args: argparse.Namespace) -> int:
    return _list(args, client.groups(), ("uuid", "groupname", "members"), "groups")


def cmd_group_show(client: Client, args: argparse.Namespace) -> int:
    return _show(args, client.group(names.group_uuid(client, args.uuid)))


def cmd_group_update(client: Client, args: argparse.Namespace) -> int:
    members = names.user_uuids(client, args.members)
    uuid = names.group_uuid(client, args.uuid)
    item = client.update_group(uuid, groupname=args.groupname, members=members)
    return _show(args, item)


def cmd_group_rm(client: Client, args: argparse.Namespace) -> int:
    uuid = names.group_uuid(client, args.uuid)
    client.delete_group(uuid)
    return _done(args, {"uuid": uuid, "deleted": True}, f"deleted group {uuid}")


def cmd_token_create(client: Client, args: argparse.Namespace) -> int:
    user = names.user_uuid(client, args.user_uuid)
    scopes = names.expand_scopes(args.scopes)
    issued = client.create_token(user, scopes, expires_in=args.expires_in)
    if args.json:
        _print_json(issued)
    else:
        # The secret goes to stdout alone (easy to capture); what it is goes to stderr.
        print(
            f"token {issued.get('id')} expires {iso_auto(issued.get('expires_at'))}",
            file=sys.stderr,
        )
        print(issued.get("token"))
    return EXIT_OK


def cmd_token_list(client: Client, args: argparse.Namespace) -> int:
    columns = ("id", "user_uuid", "scopes", "expires_at")
    user = names.user_uuid(client, args.user) if args.user else None
    return _list(args, client.tokens(user), columns, "tokens")


def cmd_token_revoke(client: Client, args: argparse.Namespace) -> int:
    client.revoke_token(args.id)
    return _done(args, {"id": args.id, "revoked": True}, f"revoked token {args.id}")


def _done(args: argparse.Namespace, body: dict[str, Any], text: str) -> int:
    if args.json:
        _print_json(body)
    else:
        print(text)
    return EXIT_OK
