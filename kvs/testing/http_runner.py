"""The HTTP fuzzer's runner: interactions on many connections at once (or replayed one at a
time), each judged, with a model of the writes only the fuzzer makes (slots of keys no one
else writes), checked on every node once replication has settled.

Rule: test tooling (see kvs.testing); it talks to nodes only as a client would.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from kvs.testing import http_wire as wire
from kvs.testing.http_cluster import NodeCluster
from kvs.testing.http_conn import ConnResult, run_conn
from kvs.testing.http_context import FAKE_UUID, Context
from kvs.testing.http_inputs import KINDS, Generator
from kvs.testing.http_judge import Stats, judge
from kvs.testing.http_monitor import (
    Finding,
    Findings,
    Tracker,
)
from kvs.testing.http_plan import (
    MODEL_SLOTS,
    Conn,
    Deadlines,
    Interaction,
    ModelOp,
)
from kvs.testing.http_vocab import dump, tok

# --- the model of writes only the fuzzer makes ---------------------------------------------------

ABSENT = "<absent>"


def _canon(value: Any) -> str:
    return value if value is ABSENT else json.dumps(value, sort_keys=True)


@dataclass
class SlotState:
    possible: list[str] = field(default_factory=lambda: [ABSENT])  # canonical JSON or ABSENT
    uuid: str | None = None
    acked: int = 0  # acknowledged writes to this slot

    def settle(self, value: str, uuid: str | None) -> None:
        self.possible, self.uuid = [value], uuid

    def maybe(self, value: str) -> None:
        if value not in self.possible:
            self.possible.append(value)
        self.uuid = None


# --- the runner ------------------------------------------------------------------------------------


@dataclass
class Options:
    seconds: float = 60.0
    seed: int | None = None
    nodes: int = 3
    workers: int = 12
    directory: Path | None = None
    keep: bool = False
    kinds: Sequence[str] = KINDS
    replay: Sequence[int] = ()
    restart: bool = True
    header_timeout: float | None = 2.0  # set in the nodes' config when they support it
    body_timeout: float | None = 3.0
    assume_deadlines: Deadlines | None = None  # judge these where the node has no such key
    health_limit: float = 1.0
    rss_factor: float = 4.0
    settle_timeout: float = 20.0
    drain: float = 3.0
    http_workers: int = 1  # each node's HTTP processes (`http_workers`)
    out: Callable[[str], None] = print


class Runner:
    def __init__(
        self, options: Options, cluster: NodeCluster, gen: Generator, ctx: Context
    ) -> None:
        self.options = options
        self.cluster = cluster
        self.gen = gen
        self.ctx = ctx
        self.plan = gen.plan
        self.marker = gen.plan.marker.encode()
        self.findings = Findings()
        self.tracker = Tracker(cluster.directory / "interactions.log")
        self.stats = Stats()
        self.slots = [SlotState() for _ in range(MODEL_SLOTS)]
        self.slot_locks = [trio.Lock() for _ in range(MODEL_SLOTS)]
        self.big_limiter = trio.Semaphore(1)  # one memory burst at a time
        self.flood_limiter = trio.Semaphore(1)
        self.next_index = 0
        self.ran = 0
        self.is_down: Callable[[int], bool] = lambda node: False

    def port(self, node: int) -> int:
        return self.cluster.nodes[node].port

    async def fire(self, seconds: float, workers: int) -> None:
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._worker, stop_at)
            with trio.move_on_after(seconds + self.options.drain):
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()

    async def _worker(self, stop_at: float) -> None:
        while trio.current_time() < stop_at:
            index = self.next_index
            self.next_index += 1
            inter = self.gen.interaction(index)
            if self.is_down(inter.node) and not self.options.restart:
                self.stats.kinds["skipped (node down)"] += 1
                await trio.sleep(0.01)
                continue
            while self.is_down(inter.node) and trio.current_time() < stop_at:
                await trio.sleep(0.05)  # restarting: its interactions wait rather than all fail
            await self.run_one(inter)

    async def replay(self, indices: Sequence[int]) -> None:
        for index in indices:
            await self.run_one(self.gen.interaction(index))

    async def run_one(self, inter: Interaction) -> None:
        self.stats.kinds[inter.kind] += 1
        self.ran += 1
        self.tracker.begin(inter)
        try:
            with trio.move_on_after(60):
                if inter.model is not None:
                    await self._model(inter)
                elif inter.kind == "big_body":
                    async with self.big_limiter:
                        await self._conns(inter)
                elif inter.kind == "flood":
                    async with self.flood_limiter:
                        await self._conns(inter)
                else:
                    await self._conns(inter)
        finally:
            self.tracker.end(inter)

    async def _conns(self, inter: Interaction) -> list[ConnResult]:
        results: list[ConnResult | None] = [None] * len(inter.conns)
        port = self.port(inter.node)

        async def one(n: int, conn: Conn) -> None:
            res = await run_conn(conn, port, self.ctx, self.marker)
            results[n] = res
            self.stats.connections += 1
            if res.connect_error:
                self.stats.connect_errors += 1
                # The node is going down (the monitor will say) or its backlog is full:
                # back off rather than burn interactions that cannot reach it.
                await trio.sleep(0.25)
                return
            for finding in judge(inter, conn, res, self.stats, self.marker):
                self.findings.add(finding)

        async with trio.open_nursery() as nursery:
            for n, conn in enumerate(inter.conns):
                nursery.start_soon(one, n, conn)
        return [r for r in results if r is not None]

    # --- model operations ----------------------------------------------------------------------

    async def _model(self, inter: Interaction) -> None:
        op = inter.model
        assert op is not None
        async with contextlib.AsyncExitStack() as stack:
            for slot in sorted(op.slots):
                await stack.enter_async_context(self.slot_locks[slot])
            await self._model_locked(inter, op)

    async def _model_locked(self, inter: Interaction, op: ModelOp) -> None:
        plan = self.plan
        host = [(b"Host", b"fuzz"), (b"Authorization", b"Bearer " + tok("writer"))]
        slot = op.slots[0]
        key = plan.model_key(slot).encode()
        state = self.slots[slot]
        sent_uuid = None
        if op.action in ("put", "cas"):
            headers = list(host)
            if op.action == "cas":
                sent_uuid = state.uuid if state.uuid else FAKE_UUID
                headers.append((b"If-Match", f'"{sent_uuid}"'.encode()))
            data = wire.request_bytes(b"PUT", b"/kv/" + key, headers, dump(op.values[0]))
        elif op.action == "delete":
            data = wire.request_bytes(b"DELETE", b"/kv/" + key, host)
        elif op.action == "read":
            data = wire.request_bytes(b"GET", b"/kv/" + key, host)
        else:
            ops = []
            for s, value in zip(op.slots, op.values, strict=True):
                if value is None:
                    ops.append({"op": "delete", "key": plan.model_key(s)})
                else:
                    ops.append({"op": "put", "key": plan.model_key(s), "data": value})
            data = wire.request_bytes(b"POST", b"/kv/_batch", host, dump({"ops": ops}))
        conn = Conn([("send", data)], [inter.what])
        results = await self._conns(
            Interaction(inter.index, "model", inter.node, "writer", inter.what, [conn])
        )
        answer = results[0].answers[0] if results and results[0].answers else None
        self._model_update(inter, op, answer, sent_uuid)

    def _model_update(
        self, inter: Interaction, op: ModelOp, answer: wire.Answer | None, sent_uuid: str | None
    ) -> None:
        def fail(signature: str, detail: str) -> None:
            self.findings.add(Finding("model", signature, inter.index, inter.node, detail))

        status = answer.status if answer is not None else None
        body: Any = None
        if answer is not None:
            with contextlib.suppress(ValueError):
                body = json.loads(answer.body)
        slots = [self.slots[s] for s in op.slots]
        values = [ABSENT if v is None else _canon(v) for v in op.values]
        unknown = status is None or (status >= 500 and status != 503)
        if op.action == "read":
            state = slots[0]
            if status == 200 and isinstance(body, dict):
                got = _canon(body.get("data"))
                if got not in state.possible:
                    fail(
                        "read does not match the acknowledged writes",
                        f"slot {op.slots[0]}: got {got[:120]}, possible {[p[:60] for p in state.possible]}",
                    )
                state.settle(got, body.get("uuid"))
            elif status == 404:
                if ABSENT not in state.possible:
                    fail(
                        "acknowledged key reads as missing",
                        f"slot {op.slots[0]}: possible {[p[:60] for p in state.possible]}",
                    )
                state.settle(ABSENT, None)
            return
        if unknown:
            for state, value in zip(slots, values, strict=True):
                state.maybe(value)
            return
        if op.action in ("put", "cas"):
            state = slots[0]
            if status == 200 and isinstance(body, dict):
                state.settle(values[0], body.get("uuid"))
                state.acked += 1
                self.stats.model_acked += 1
            elif status == 409 and op.action == "cas":
                current = body.get("current_uuid") if isinstance(body, dict) else None
                if sent_uuid is not None and sent_uuid != FAKE_UUID and state.uuid == sent_uuid:
                    fail(
                        "If-Match with the acknowledged version refused (409)",
                        f"slot {op.slots[0]}: sent {sent_uuid}, current {current}",
                    )
            elif status not in (409, 429, 503, 408):
                fail(
                    f"writer's put refused: {status}", f"slot {op.slots[0]}: {answer.body[:200]!r}"
                )
        elif op.action == "delete":
            state = slots[0]
            if status == 204:
                state.settle(ABSENT, None)
                self.stats.model_acked += 1
            elif status == 404:
                if ABSENT not in state.possible:
                    fail(
                        "delete of an acknowledged key answered 404",
                        f"slot {op.slots[0]}: possible {[p[:60] for p in state.possible]}",
                    )
                state.settle(ABSENT, None)
            elif status not in (429, 503, 408):
                fail(f"writer's delete refused: {status}", f"{answer.body[:200]!r}")
        elif op.action == "batch":
            if status == 200 and isinstance(body, dict) and isinstance(body.get("results"), list):
                for state, value, result in zip(slots, values, body["results"], strict=False):
                    state.settle(value, result.get("uuid") if value is not ABSENT else None)
                    state.acked += 1
                self.stats.model_acked += 1
            elif status not in (429, 503, 408):
                fail(f"writer's batch refused: {status}", f"{answer.body[:200]!r}")

    def check_model(self) -> None:
        """After the run: every node holds, for every model key, one of the values the
        acknowledged writes allow, and all nodes agree (replication has settled)."""
        import httpx

        deadline = time.monotonic() + self.options.settle_timeout
        token = self.ctx.tokens["writer"]
        pending = list(range(MODEL_SLOTS))
        seen: dict[int, list[str]] = {}
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while pending and time.monotonic() < deadline:
                still = []
                for slot in pending:
                    got = []
                    for node in self.cluster.nodes:
                        if not node.alive():
                            continue
                        try:
                            r = client.get(
                                f"{node.url}/kv/{self.plan.model_key(slot)}",
                                headers={"Authorization": f"Bearer {token}"},
                            )
                            got.append(
                                _canon(r.json().get("data"))
                                if r.status_code == 200
                                else ABSENT
                                if r.status_code == 404
                                else f"<status {r.status_code}>"
                            )
                        except (httpx.HTTPError, ValueError) as exc:
                            got.append(f"<{type(exc).__name__}>")
                    seen[slot] = got
                    possible = self.slots[slot].possible
                    if len(set(got)) > 1 or (got and got[0] not in possible):
                        still.append(slot)
                pending = still
                if pending:
                    time.sleep(0.5)
        for slot in pending:
            self.findings.add(
                Finding(
                    "model",
                    "acknowledged writes not readable on every node after settling",
                    -1,
                    slot % len(self.cluster.nodes),
                    f"slot {slot} ({self.plan.model_key(slot)}): nodes answer "
                    f"{[g[:80] for g in seen.get(slot, [])]}; possible "
                    f"{[p[:80] for p in self.slots[slot].possible]}",
                )
            )
