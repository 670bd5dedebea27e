"""The swarm's clients: real HTTP requests through a node's ASGI app, each answer handed to
the judge (`kvs.testing.judge`). A mixin of the swarm's run (`kvs.testing.swarm._Run`),
which owns the cluster, the network, the disks and the plan.

Rule: this file sends requests and reports what came back; it decides nothing about what is
right beyond the HTTP contract (which statuses each request may answer).

With auth on (`Plan.auth`), every request carries one of the run's principals: two users
with read, write and delete scopes (who share no group, so under the default bits 0xF31
each may read but not write the other's keys), a read-only token, no token, a forged one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from kvs.node import Node
from kvs.testing import asgi

if TYPE_CHECKING:
    from kvs.testing.cluster import SimCluster
    from kvs.testing.faults import DiskFaults
    from kvs.testing.judge import Judge
    from kvs.testing.network import SimNetwork

__all__ = ["Principal", "SwarmRequests"]


@dataclass(frozen=True)
class Principal:
    name: str
    headers: tuple[tuple[str, str], ...] = ()
    user: str | None = None  # the user's uuid; None: anonymous or forged
    may_write: bool = True


ANONYMOUS = Principal("anonymous", may_write=False)
FORGED = Principal(
    "forged",
    (("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.Zm9yZ2Vk"),),
    None,
    False,
)


class SwarmRequests:
    judge: Judge
    cluster: SimCluster
    net: SimNetwork
    disks: dict[str, DiskFaults]
    counter: int
    etags: dict[str, str]
    disk_errors: int
    watch_events: int
    plan: Any  # kvs.testing.swarm.Plan (not imported: swarm imports this module)
    principals: list[Principal]  # empty: auth off
    weights: list[int]

    def _principal(self, rng: random.Random) -> Principal | None:
        if not self.principals:
            return None
        return rng.choices(self.principals, self.weights)[0]

    async def setup_auth(self, node: Node, name: str) -> None:
        """With the root token of the first node: two users with all key scopes and a
        read-only token for the first; they reach the other nodes as replicated records."""
        root = (("Authorization", f"Bearer {node.root_token_path.read_text().strip()}"),)

        async def call(path: str, body: dict[str, Any]) -> Any:
            response = await asgi.request(
                node.api.app,  # type: ignore[attr-defined]
                "POST",
                path,
                body=json.dumps(body).encode(),
                headers=root,
                host=f"{name}:8000",
            )
            assert response.status == 201, (path, response.status, response.body[:200])
            return response.json()

        users = []
        for nickname in ("alice", "bob"):
            user = (await call("/api/users", {"nickname": nickname, "groups": []}))["uuid"]
            scopes = ["read", "write", "delete"]
            token = (await call("/api/tokens", {"user_uuid": user, "scopes": scopes}))["token"]
            users.append(Principal(nickname, (("Authorization", f"Bearer {token}"),), user))
        token = (await call("/api/tokens", {"user_uuid": users[0].user, "scopes": ["read"]}))[
            "token"
        ]
        reader = Principal("reader", (("Authorization", f"Bearer {token}"),), users[0].user, False)
        self.principals = [*users, reader, ANONYMOUS, FORGED]
        self.weights = [40, 40, 8, 6, 6]

    def _value(self) -> bytes:
        self.counter += 1
        value = b'{"w":%d}' % self.counter
        self.judge.sent(value)
        return value

    async def _call(
        self, node: Node, name: str, method: str, path: str, **kwargs: Any
    ) -> tuple[asgi.Response | None, tuple[int, int]]:
        """One request; the node's clock before and after; None if the node died meanwhile."""
        disk = self.disks[name]
        failed_before = sum(disk.failed.values())
        while self.net.held_until(self.cluster.nodes[name].host) > trio.current_time():
            await trio.sleep_until(self.net.held_until(self.cluster.nodes[name].host))
        before = node.clock.wall_ms()
        app = node.api.app  # type: ignore[attr-defined]
        try:
            response = await asgi.request(app, method, path, host=f"{name}:8000", **kwargs)
        except Exception as exc:
            # What escapes the app, the front answers with a 500 (kvs/api/front.py): a bug,
            # whatever the disk did (a refused commit is the app's 503).
            if self._alive(node, name):
                self.judge.fail(
                    f"t={trio.current_time():.3f} {name}: {method} {path} raised {exc!r}"
                )
            return None, (before, before)
        after = node.clock.wall_ms()
        if not self._alive(node, name):
            return None, (before, after)
        if response.status == 503 and sum(disk.failed.values()) > failed_before:
            self.disk_errors += 1  # its commit failed: a 503, never an acknowledgement
            return None, (before, after)
        if response.status >= 500 and response.status != 503:
            self.judge.fail(
                f"t={trio.current_time():.3f} {name}: {method} {path} answered"
                f" {response.status} {response.body[:200]!r}"
            )
        return response, (before, after)

    def _alive(self, node: Node, name: str) -> bool:
        return self.cluster.nodes[name].node is node and node.store is not None

    async def _get(self, node: Node, name: str, key: str, who: Principal | None = None) -> None:
        headers = who.headers if who is not None else ()
        response, clock = await self._call(node, name, "GET", f"/kv/{key}", headers=headers)
        if response is None:
            return
        found = len(self.judge.violations)
        if who is not None and who.user is None:
            if response.status not in (401, 429):  # no anonymous reads here; 429: too many
                self.judge.fail(f"{name}: GET {key} by {who.name} answered {response.status}")
        elif response.status == 429:
            pass
        elif response.status == 404:
            self.judge.served(name, key, None, None, clock, trio.current_time())
        elif response.status == 200:
            body = response.json()
            data = json.dumps(body["data"], separators=(",", ":")).encode()
            self.etags[key] = body["uuid"]
            self.judge.served(name, key, body["uuid"], data, clock, trio.current_time())
        else:
            self.judge.fail(f"{name}: GET {key} answered {response.status}")
        if len(self.judge.violations) > found and node.store is not None:
            held = node.store.get(key)
            self.judge.violations[-1] += (
                f" [it holds {None if held is None else held.version.uuid}"
                f"{' (tombstone)' if held is not None and held.deleted else ''}"
                f" expires_at={None if held is None else held.expires_at}, clock {clock}]"
            )

    async def _put(
        self, node: Node, name: str, key: str, rng: random.Random, who: Principal | None = None
    ) -> None:
        value = self._value()
        ttl = (
            round(rng.uniform(0.2, self.plan.max_ttl), 3)
            if rng.random() < self.plan.ttl_share
            else None
        )
        headers = list(who.headers) if who is not None else []
        if_match = self.etags.get(key) if rng.random() < 0.15 else None
        if if_match is not None:
            headers.append(("If-Match", f'"{if_match}"'))
        query = f"ttl={ttl}" if ttl is not None else ""
        response, clock = await self._call(
            node, name, "PUT", f"/kv/{key}", body=value, query=query, headers=headers
        )
        if response is None or self._refused(name, f"PUT {key}", response.status, who):
            return
        if response.status in (409, 403) and who is not None or response.status == 409:
            return
        if response.status != 200:
            self.judge.fail(f"{name}: PUT {key} answered {response.status} {response.body[:200]!r}")
            return
        uuid = response.json()["uuid"]
        self.etags[key] = uuid
        self.judge.acknowledged(
            name,
            key,
            uuid,
            value=value,
            ttl_ms=None if ttl is None else int(ttl * 1000),
            clock=clock,
            if_match=if_match,
            user=None if who is None else who.user,
            at=trio.current_time(),
        )

    async def _delete(self, node: Node, name: str, key: str, who: Principal | None = None) -> None:
        headers = who.headers if who is not None else ()
        response, clock = await self._call(node, name, "DELETE", f"/kv/{key}", headers=headers)
        if response is None or self._refused(name, f"DELETE {key}", response.status, who):
            return
        if response.status == 404 or (response.status == 403 and who is not None):
            return
        if response.status != 204:
            self.judge.fail(f"{name}: DELETE {key} answered {response.status}")
            return
        user = None if who is None else who.user
        self.judge.acknowledged(
            name, key, None, value=None, clock=clock, user=user, at=trio.current_time()
        )

    def _refused(self, name: str, what: str, status: int, who: Principal | None) -> bool:
        """Whether the write was refused as it may be (a stopped, syncing or stale node, a
        rate limit); for a principal that may not write, judge that it was refused."""
        if status in (503, 429):
            return True
        if who is not None and not who.may_write:
            expected = (401,) if who.user is None else (403,)
            self.judge.refused_write(f"{name}: {what} by {who.name}", status, expected)
            return True
        return False

    async def _batch(
        self, node: Node, name: str, rng: random.Random, who: Principal | None = None
    ) -> None:
        ops: list[dict[str, Any]] = []
        values: dict[str, bytes] = {}
        for key in rng.sample([f"k/{i}" for i in range(self.plan.keys)], min(3, self.plan.keys)):
            if rng.random() < 0.8:
                values[key] = self._value()
                ops.append({"op": "put", "key": key, "data": json.loads(values[key])})
            else:
                ops.append({"op": "delete", "key": key})
        response, clock = await self._call(
            node,
            name,
            "POST",
            "/kv/_batch",
            body=json.dumps({"ops": ops}).encode(),
            headers=who.headers if who is not None else (),
        )
        if response is None or self._refused(name, "_batch", response.status, who):
            return
        if response.status == 403 and who is not None:
            return  # one op on another user's key refuses the whole batch
        if response.status != 200:
            self.judge.fail(f"{name}: _batch answered {response.status} {response.body[:200]!r}")
            return
        user = None if who is None else who.user
        for result in response.json()["results"]:
            key = result["key"]
            if "uuid" in result:
                self.judge.acknowledged(
                    name,
                    key,
                    result["uuid"],
                    value=values[key],
                    user=user,
                    clock=clock,
                    at=trio.current_time(),
                )
            elif result.get("deleted"):
                self.judge.acknowledged(
                    name, key, None, value=None, user=user, clock=clock, at=trio.current_time()
                )

    async def watch(self, name: str, until: float) -> None:
        """A watch of every key on node `name` for the whole load, opened again after each
        restart; every event goes to the judge (a version some client wrote, never one older
        than an event before it on the same stream)."""
        while trio.current_time() < until:
            sim = self.cluster.nodes[name]
            node = sim.node
            app = None if node is None else node.api.app  # type: ignore[attr-defined]
            if node is None or app is None:
                await trio.sleep(0.5)
                continue
            who = self.principals[0] if self.principals else None
            async with trio.open_nursery() as nursery:
                stream = await asgi.open_stream(
                    nursery,
                    app,
                    "/kv/_watch",
                    headers=who.headers if who is not None else (),
                    host=f"{name}:8000",
                )
                if stream.status != 200:
                    self.judge.fail(
                        f"t={trio.current_time():.3f} {name}: GET /kv/_watch answered"
                        f" {stream.status} {bytes(stream.buffer)[:200]!r}"
                    )
                    return
                last: dict[str, Any] = {}
                while trio.current_time() < until and sim.node is node:
                    await trio.sleep(0.25)
                    self._watched(name, stream, last)
                    if stream.ended.is_set():
                        break
                self._watched(name, stream, last)
                stream.disconnect.set()
                nursery.cancel_scope.cancel()
                self.watch_events += len(last)

    def _watched(self, name: str, stream: asgi.Stream, last: dict[str, Any]) -> None:
        for line in stream.lines():
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: ") :])
                if "uuid" in event:
                    self.judge.watched(name, event, last, trio.current_time())
