"""The authorization matrix (issue 12): every endpoint that can show key data or security
records, for every kind of caller, with the key live, deleted, expired, and expired and swept.

One node per key state; every cell is a request through the in-process app (the watch
streams through its ASGI interface), checked against a rule written once below, and every
failing cell is reported, not just the first. Where a caller must not see a key, no byte of
its values, its versions' uuids or -- in listings and feeds -- its name may be in the answer
(body or headers), and nowhere may a user, group or token record show.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from kvs.node import Node
from tests.support.api import client_of, expect_json
from tests.support.auth import Admin
from tests.support.watch import WatchStream, open_watch

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

CALLERS = ("anonymous", "reader", "writer", "owner", "member", "admin")
STATES = ("live", "deleted", "expired", "expired_swept")


@dataclass(frozen=True)
class Key:
    name: str
    permissions: int
    readers: frozenset[str]  # the callers its bits let read it

    @property
    def label(self) -> str:
        return self.name.rpartition("/")[2]  # unique: the bytes that betray its name


KEYS = (
    Key("m/k-private-QX7", 0xF00, frozenset({"owner"})),
    Key("m/k-shared-JW4", 0xF10, frozenset({"owner", "member"})),  # the group reads
    Key("m/k-public-ZP2", 0xF31, frozenset(CALLERS)),  # others read (anonymous reads are on)
)


@dataclass
class World:
    node: Node
    state: str
    headers: dict[str, dict[str, str]]
    values: dict[str, list[bytes]] = field(default_factory=dict)  # key -> its value markers
    uuids: dict[str, set[str]] = field(default_factory=dict)  # key -> every version's uuid
    never: list[bytes] = field(default_factory=list)  # in no key answer for anyone

    @property
    def live(self) -> bool:
        return self.state == "live"

    def secrets(self, key: Key, *, name: bool) -> list[bytes]:
        found = [*self.values[key.name], *(u.encode() for u in self.uuids[key.name])]
        return [key.label.encode(), *found] if name else found


async def build(start_node: Any, wall: Any, nursery: trio.Nursery, state: str) -> World:
    """Callers, then live watches for each, then the keys written and put in `state`."""
    node = await start_node(
        wall_ms=wall, auth_enabled=True, allow_anonymous_read=True, tamper_logging_enabled=True
    )
    admin = Admin(node)
    team = await admin.group("team")
    owner = await admin.actor("owner", [team])
    member = await admin.actor("member", [team])
    reader = await admin.actor("reader", scopes=["read"])
    writer = await admin.actor("writer")
    actors = {"owner": owner, "member": member, "reader": reader, "writer": writer}
    headers = {"anonymous": {}, "admin": admin.headers}
    headers.update({name: actor.headers for name, actor in actors.items()})
    world = World(node, state, headers)
    world.never = [b"_sys/", *(a.token_id.encode() for a in actors.values())]
    client = client_of(node)
    ttl = "?ttl=5s" if state.startswith("expired") else ""
    writes = {}
    for key in KEYS:
        markers = [f"VAL-{key.label}-v{i}".encode() for i in (1, 2)]
        world.values[key.name] = markers
        world.uuids[key.name] = set()
        writes[key.name] = [
            (f"/kv/{key.name}", b'{"s":"%s"}' % markers[0]),
            # A new key is created with the default bits (readable by all) and made private
            # next: the watches open after that, when the key is private.
            (f"/kv/{key.name}/metadata", b'{"permissions":%d}' % key.permissions),
            (f"/kv/{key.name}{ttl}", b'{"s":"%s"}' % markers[1]),
        ]

    async def write(key: Key, index: int) -> None:
        path, body = writes[key.name][index]
        await expect_json(await client.put(path, data=body, headers=owner.headers))
        world.uuids[key.name].add(node.store.get(key.name).version.uuid)

    for key in KEYS:
        await write(key, 0)
        await write(key, 1)
    world.live_watches = {  # type: ignore[attr-defined]
        caller: await open_watch(nursery, node, headers=headers[caller]) for caller in CALLERS
    }
    for key in KEYS:
        await write(key, 2)
    # A token record written while everyone watches everything: no one may be shown it.
    _, token_id = await admin.token(reader.uuid, ["read"])
    world.never.append(token_id.encode())
    await expect_json(await client.put("/kv/m/control", data=b"1", headers=owner.headers))
    if state == "deleted":
        for key in KEYS:
            assert (
                await client.delete(f"/kv/{key.name}", headers=owner.headers)
            ).status_code == 204
    elif state.startswith("expired"):
        wall.advance(10)
        if state == "expired_swept":
            assert await node.sweep() == len(KEYS)
    for key in KEYS:
        uuids = world.uuids[key.name]
        uuids.add(node.store.get(key.name).version.uuid)
        uuids.update(r.version.uuid for r in node.store.history(key.name))
    wall.advance(1)  # /kv_changes holds back the open millisecond
    await expect_json(await client.put("/kv/z/done", data=b"1", headers=owner.headers))
    for watch in world.live_watches.values():  # type: ignore[attr-defined]
        await watch.wait_for(b"z/done")
    return world


# --- the rule, per cell -------------------------------------------------------------------------


def denied(caller: str) -> int:
    return 401 if caller == "anonymous" else 403


def expect_direct(world: World, endpoint: str, caller: str, key: Key) -> tuple[int, bool, bool]:
    """(status, may see the key, must show one of its values) for a request naming the key.

    A key the caller may not read answers 401/403 whether it is live, deleted or expired:
    its state is not the caller's to learn either. An administrator reads every key's
    metadata (admin:metadata:read) but not its data."""
    sees = caller in key.readers
    if endpoint == "metadata" and caller == "admin":
        return (200 if world.live else 404), False, False
    if not sees:
        return denied(caller), False, False
    if endpoint in ("get", "head", "metadata"):
        return (200 if world.live else 404), True, world.live and endpoint == "get"
    kept = world.state != "expired_swept"  # the sweep drops an expired key's history
    if endpoint == "history":
        return 200, True, kept
    return (200 if kept else 404), True, kept  # history/1


def expect_listed(world: World, endpoint: str, caller: str, key: Key) -> bool:
    """Whether a listing or feed names the key: listings show live keys, feeds every change
    (a delete or an expiry too), and each only to those who may read the key."""
    return caller in key.readers and (world.live or endpoint not in LISTINGS)


# --- the requests ---------------------------------------------------------------------------------

Fetch = Callable[[World, str, Key], Awaitable[tuple[int, bytes]]]


def via_client(method: str, path: str) -> Fetch:
    async def fetch(world: World, caller: str, key: Key) -> tuple[int, bytes]:
        response = await client_of(world.node).open(
            path.format(key=key.name), method=method, headers=world.headers[caller]
        )
        headers = json.dumps(sorted(response.headers.items())).encode()
        return response.status_code, await response.get_data() + headers

    return fetch


DIRECT: dict[str, Fetch] = {
    "get": via_client("GET", "/kv/{key}"),
    "head": via_client("HEAD", "/kv/{key}"),
    "metadata": via_client("GET", "/kv/{key}/metadata"),
    "history": via_client("GET", "/api/data/{key}/history"),
    "history/1": via_client("GET", "/api/data/{key}/history/1"),
}
LISTINGS = {
    "_ls": "/kv/m/_ls?include_metadata=true",
    "_tree": "/kv/m/_tree",
    "_tree nested": "/kv/_tree?format=nested",
}
FEEDS = {"kv_changes": "/kv_changes?since=0&limit=1000"}


async def listing_bodies(world: World, nursery: trio.Nursery) -> dict[tuple[str, str], bytes]:
    """(endpoint, caller) -> the answer, for every listing, feed and watch."""
    out: dict[tuple[str, str], bytes] = {}
    client = client_of(world.node)
    for caller in CALLERS:
        for endpoint, path in {**LISTINGS, **FEEDS}.items():
            body = await expect_json(await client.get(path, headers=world.headers[caller]))
            out[endpoint, caller] = json.dumps(body).encode()
        replay: WatchStream = await open_watch(
            nursery, world.node, query="since=0", headers=world.headers[caller]
        )
        await replay.close()
        assert replay.status == 200
        out["_watch since=0", caller] = replay.body
        live = world.live_watches[caller]  # type: ignore[attr-defined]
        await live.close()
        assert live.status == 200
        out["_watch live", caller] = live.body
    return out


# --- the matrix -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
async def test_authorization_matrix(start_node, wall, nursery, monkeypatch, state):
    monkeypatch.setattr("kvs.node.HOUSEKEEPING_INTERVAL", 3600.0)  # expiry swept only on cue
    world = await build(start_node, wall, nursery, state)
    failures: list[str] = []

    def check(cell: str, body: bytes, visible: bool, key: Key, *, name: bool) -> None:
        if not visible:
            leaked = [s for s in world.secrets(key, name=name) if s in body]
            if leaked:
                failures.append(f"{cell}: shows {leaked}")
        leaked = [s for s in world.never if s in body]
        if leaked:
            failures.append(f"{cell}: shows system records {leaked}")

    for endpoint, fetch in DIRECT.items():
        for caller in CALLERS:
            for key in KEYS:
                cell = f"{state} {endpoint} {key.label} as {caller}"
                status, body = await fetch(world, caller, key)
                want, sees, shows_value = expect_direct(world, endpoint, caller, key)
                if status != want:
                    failures.append(f"{cell}: status {status}, expected {want}")
                check(cell, body, sees, key, name=False)
                if shows_value and not any(v in body for v in world.values[key.name]):
                    failures.append(f"{cell}: the value is missing")

    for (endpoint, caller), body in (await listing_bodies(world, nursery)).items():
        for key in KEYS:
            cell = f"{state} {endpoint} {key.label} as {caller}"
            listed = expect_listed(world, endpoint, caller, key)
            check(cell, body, listed, key, name=True)
            if listed and key.label.encode() not in body:
                failures.append(f"{cell}: the key is missing")
        if b"m/control" not in body and b"control" not in body:
            failures.append(f"{state} {endpoint} as {caller}: the control key is missing")

    assert not failures, "\n".join(failures)


# --- security records -----------------------------------------------------------------------------


async def test_security_records_matrix(start_node, wall):
    """Tokens, users, groups, the audit log, backups, and the cluster and metrics endpoints:
    who gets an answer, and that no one else learns a token id or another user's uuid."""
    node = await start_node(
        wall_ms=wall, auth_enabled=True, allow_anonymous_read=True, tamper_logging_enabled=True
    )
    admin = Admin(node)
    team = await admin.group("team")
    actors = {
        "owner": await admin.actor("owner", [team]),
        "member": await admin.actor("member", [team]),
        "reader": await admin.actor("reader", scopes=["read"]),
        "writer": await admin.actor("writer"),
    }
    headers = {"anonymous": {}, "admin": admin.headers}
    headers.update({name: actor.headers for name, actor in actors.items()})
    root_uuid = next(
        u["uuid"]
        for u in (await admin.call("GET", "/api/users"))["users"]
        if u["nickname"] == "root"
    )
    owner = actors["owner"]
    everyone_else = {
        name: [root_uuid.encode(), team.encode()]
        + [a.token_id.encode() for n, a in actors.items() if n != name]
        + [a.uuid.encode() for n, a in actors.items() if n != name]
        for name in (*actors, "anonymous")
    }

    def admin_only(caller: str) -> int:
        return 200 if caller == "admin" else denied(caller)

    def own_tokens(caller: str) -> int:
        return 200 if caller in ("admin", "owner") else denied(caller)

    def with_read_scope(ok: int) -> Callable[[str], int]:
        return lambda caller: ok  # anonymous reads are on: every caller passes the scope

    table: dict[str, Callable[[str], int]] = {
        "/api/tokens": admin_only,
        "/api/tokens?user_uuid=": admin_only,
        f"/api/tokens?user_uuid={owner.uuid}": own_tokens,
        "/api/users": admin_only,
        f"/api/users/{owner.uuid}": admin_only,
        "/api/groups": admin_only,
        f"/api/groups/{team}": admin_only,
        "/api/audit?limit=1000": admin_only,
        "/api/audit/verify": admin_only,
        "/api/backup/status": admin_only,
        "/metrics": with_read_scope(200),
        "/health": with_read_scope(200),
        "/members/": with_read_scope(404),  # clustering is off in unit tests
        "/cluster/stats": with_read_scope(404),
        "/merkle_tree/root": with_read_scope(404),
    }
    failures: list[str] = []
    client = client_of(node)
    for path, rule in table.items():
        for caller in CALLERS:
            response = await client.get(path, headers=headers[caller])
            body = await response.get_data()
            want = rule(caller)
            if response.status_code != want:
                failures.append(f"{path} as {caller}: status {response.status_code}, want {want}")
            if caller != "admin":
                leaked = [s for s in everyone_else[caller] if s in body]
                if leaked:
                    failures.append(f"{path} as {caller}: shows {leaked}")
            if caller == "owner" and want == 200 and path.startswith("/api/tokens"):
                listed = {t["id"] for t in json.loads(body)["tokens"]}
                if listed != {owner.token_id}:
                    failures.append(f"{path} as owner: lists {listed}")
    assert not failures, "\n".join(failures)
