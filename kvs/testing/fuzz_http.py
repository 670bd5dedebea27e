"""A seeded hostile HTTP fuzzer: real node processes, anonymous and authenticated abuse, and
a monitor that says when one request took a node down (issue 12).

    python -m kvs.testing.fuzz_http --seconds 60 [--seed N] [--nodes 3]
    python -m kvs.testing.fuzz_http --seed N --replay 12,57      one interaction at a time
    python -m kvs.testing.fuzz_http --seed N --show 12           its bytes, for a reproduction

The parts:

1. The inputs (kvs.testing.http_inputs): interaction `n` of a seed, always the same bytes.
2. The runner (here). Starts a cluster (kvs.testing.http_cluster) with auth on, seeds users,
   a group, tokens of several scopes, public keys and private keys (0xF00, owned by one
   user, their values holding a random marker), then runs interactions on many connections
   at once for the given time and judges every answer: no 5xx but the allowed 503s, 4xx
   errors in JSON (or the HTTP parser's own bare 400/408/413/431/505), HTTP/2 refused with
   GOAWAY(HTTP_1_1_REQUIRED), no upgrade accepted, deadlines kept (when the node has them),
   the marker never shown to a caller who may not read it, and a small model of the writes
   only the fuzzer makes, checked on every node once replication has settled.
3. The monitor (kvs.testing.http_monitor): every node stays up, /health answers within a
   second, RSS stays under 4x idle, no traceback on stderr; each failure names the
   interactions in flight on that node when it was seen, for `--replay`.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import random
import re
import resource
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from kvs.testing import http_wire as wire
from kvs.testing.http_cluster import NodeCluster, supported_config_keys
from kvs.testing.http_inputs import (
    GRACE,
    KINDS,
    MODEL_SLOTS,
    TOKEN_SCOPES,
    Big,
    Conn,
    Deadlines,
    Generator,
    Interaction,
    ModelOp,
    Plan,
    describe,
    dump,
    tok,
)
from kvs.testing.http_monitor import (
    Finding,
    FindingGroup,
    Findings,
    Monitor,
    NodeWatch,
    Tracker,
    shape,
)
from kvs.testing.procs import HOST

# --- run time: placeholders ------------------------------------------------------------------------

_PLACEHOLDER = re.compile(rb"\{\{(tok|tokmut|user|group|tokid|port|now|uuid)(?::([^}]*))?\}\}")
FAKE_UUID = "00000000-0000-4000-8000-000000000000"


@dataclass
class Context:
    """What the setup created, for filling in placeholders."""

    ports: list[int]
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def resolve(self, data: bytes) -> bytes:
        if b"{{" not in data:
            return data
        return _PLACEHOLDER.sub(self._one, data)

    def _one(self, match: re.Match[bytes]) -> bytes:
        kind = match.group(1).decode()
        arg = (match.group(2) or b"").decode()
        if kind == "tok":
            return self.tokens.get(arg, "missing").encode()
        if kind == "tokmut":
            name, _, how = arg.partition(":")
            return mutate_token(self.tokens.get(name, "a.b.c"), how).encode()
        if kind == "user":
            return self.users.get(arg, FAKE_UUID).encode()
        if kind == "group":
            return self.groups.get(arg, FAKE_UUID).encode()
        if kind == "tokid":
            return self.token_ids.get(arg, FAKE_UUID).encode()
        if kind == "port":
            return str(self.ports[int(arg) % len(self.ports)]).encode()
        if kind == "now":
            return str(time.time_ns() // 1_000_000).encode()
        return FAKE_UUID.encode()


def mutate_token(token: str, how: str) -> str:
    """A real token made invalid in one way (the node must answer 401)."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if how == "flipsig" and signature:
        return f"{header}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    if how == "trunc":
        return token[:-10]
    if how == "nosig":
        return f"{header}.{payload}."
    if how == "algnone":
        none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        return f"{none}.{payload}."
    if how == "payload" and payload:
        return f"{header}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"
    return token + "x"


# --- run time: one connection ---------------------------------------------------------------------

RAW_KEEP = 1 << 20  # bytes of each connection's received data kept for judging


@dataclass
class ConnResult:
    started: float
    answers: list[wire.Answer] = field(default_factory=list)
    pending: wire.Answer | None = None  # a stream's head (a watch)
    upgraded: bytes | None = None
    garbage: bytes = b""
    raw: bytearray = field(default_factory=bytearray)
    server_closed_at: float | None = None
    reset: bool = False
    we_ended_at: float | None = None
    mark: float | None = None
    connect_error: str = ""
    send_error: str = ""
    marker_seen: bool = False


async def run_conn(conn: Conn, port: int, ctx: Context, marker: bytes) -> ConnResult:
    """Open one connection, perform its steps while reading whatever comes back, hang up
    once the expected answers are in, the server closed, or `read_timeout` passed."""
    res = ConnResult(started=time.monotonic())
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(HOST, port)
    except (OSError, trio.TooSlowError) as exc:
        res.connect_error = type(exc).__name__
        return res
    reader = wire.AnswerReader(head_requests=list(conn.heads))
    closed = trio.Event()
    answered = trio.Event()
    ended_by_us = False
    tail = b""

    async def read_loop() -> None:
        nonlocal tail
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                if len(res.raw) < RAW_KEEP:
                    res.raw += data[: RAW_KEEP - len(res.raw)]
                if marker in tail + data:
                    res.marker_seen = True
                tail = data[-len(marker) :]
                if not conn.h2:
                    reader.feed(data)
                    done = len(reader.answers) >= (conn.expect or 0)
                    other = reader.upgraded is not None or bool(reader.garbage)
                    if other and _looks_like_h2(res.raw):
                        continue  # an HTTP/2 refusal: judged with the close that must follow
                    if conn.expect is not None and (done or other):
                        answered.set()  # all answers in, or no more HTTP/1.1 to come
        except trio.BrokenResourceError:
            res.reset = True
        except trio.ClosedResourceError:
            return  # we closed it
        if not ended_by_us:
            res.server_closed_at = time.monotonic()
        closed.set()

    async def wait_closed(seconds: float) -> None:
        with trio.move_on_after(seconds):
            await closed.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_loop)
        try:
            for step in conn.steps:
                what = step[0]
                if what == "send":
                    await stream.send_all(ctx.resolve(step[1]))
                elif what == "big":
                    big = step[1]
                    big = Big(ctx.resolve(big.head), big.fill, big.count, ctx.resolve(big.tail))
                    for piece in big.pieces():
                        if closed.is_set():
                            break
                        await stream.send_all(piece)
                elif what == "trickle":
                    data, interval = step[1], step[2]
                    for i in range(len(data)):
                        if closed.is_set():
                            break
                        await stream.send_all(data[i : i + 1])
                        await wait_closed(interval)
                elif what == "sleep":
                    await wait_closed(step[1])
                elif what == "mark":
                    res.mark = time.monotonic()
                elif what == "eof":
                    await stream.send_eof()
                elif what in ("rst", "close"):
                    ended_by_us = True
                    if what == "rst":
                        with contextlib.suppress(OSError):
                            stream.socket.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            res.send_error = type(exc).__name__
        if not ended_by_us and not closed.is_set():
            with trio.move_on_after(conn.read_timeout):
                if conn.expect is None:
                    await closed.wait()
                else:
                    async with trio.open_nursery() as waiters:

                        async def first(event: trio.Event) -> None:
                            await event.wait()
                            waiters.cancel_scope.cancel()

                        waiters.start_soon(first, closed)
                        waiters.start_soon(first, answered)
        ended_by_us = True
        res.we_ended_at = time.monotonic()
        with contextlib.suppress(OSError):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    if res.server_closed_at is not None:
        reader.close()
    res.answers = reader.answers
    res.pending = reader.pending() if conn.stream or res.server_closed_at is None else None
    res.upgraded = reader.upgraded
    res.garbage = reader.garbage
    return res


# --- judging ------------------------------------------------------------------------------------

PARSER_STATUSES = (400, 408, 413, 431, 505)  # what the HTTP parser may answer bare, before the app


def judge(
    inter: Interaction, conn: Conn, res: ConnResult, stats: Stats, marker: bytes
) -> list[Finding]:
    out: list[Finding] = []

    def fail(kind: str, signature: str, detail: str) -> None:
        out.append(Finding(kind, signature, inter.index, inter.node, detail))

    label = conn.labels[0] if conn.labels else inter.what
    answers = list(res.answers)
    if res.pending is not None and (not answers or conn.stream):
        answers.append(res.pending)
    for n, answer in enumerate(answers):
        stats.statuses[answer.status] += 1
        stats.kind_statuses[(inter.kind, answer.status)] += 1
        which = conn.labels[n] if n < len(conn.labels) else label
        body = answer.body[:300].decode("utf-8", "replace")
        if answer.status >= 500:
            if answer.status != 503:
                shown = shape(body[:60]) if body.strip() else "(empty body)"
                fail("http-5xx", f"{answer.status} {shown}", f"{which}: {body}")
            elif answer.header(b"retry-after") is None and b'"mode"' not in answer.body:
                fail("http-503-unexplained", _route(which), f"{which}: {body}")
        elif answer.status == 101:
            if conn.upgrade != "h2c":  # an accepted h2c upgrade is judged as HTTP/2 served
                fail("upgrade-accepted", f"101 {conn.upgrade or 'unasked'}", f"{which}")
        elif (
            400 <= answer.status < 500
            and answer.complete
            and not (n < len(conn.heads) and conn.heads[n])
        ):
            if not _json_error(answer.body) and not (
                answer.status in PARSER_STATUSES and not answer.body.strip().startswith(b"{")
            ):
                fail("http-4xx-not-json", f"{answer.status} {_route(which)}", f"{which}: {body}")
        elif answer.status == 0:
            fail("http-garbled", _route(which), repr(res.raw[:200]))
    speaks_h2 = conn.h2 or _looks_like_h2(res.garbage) or _looks_like_h2(res.upgraded or b"")
    if res.garbage and not speaks_h2 and inter.kind in ("request", "pipeline", "model"):
        fail("http-garbled", _route(label), repr(res.garbage[:200]))
    if res.marker_seen and not conn.may_see_marker:
        leaked = [
            (conn.labels[n] if n < len(conn.labels) else label, a)
            for n, a in enumerate(answers)
            if marker in a.body
        ]
        which, shown = leaked[0] if leaked else (label, None)
        text = shown.body[:400] if shown is not None else bytes(res.raw[:400])
        status = shown.status if shown is not None else "?"
        fail("marker-leak", _route(which), f"{inter.who}: {which} -> {status}: {text!r}")
    if conn.upgrade == "h2c" and res.upgraded is not None:
        fail("http2-served", "h2c upgrade accepted (101)", label)
    elif speaks_h2:
        # The prior-knowledge preface (or bytes the server took for one): the answer must be
        # a refusal (SETTINGS, GOAWAY HTTP_1_1_REQUIRED, close), never a served stream.
        data = bytes(res.garbage) if res.garbage else bytes(res.raw)
        out.extend(_judge_h2(inter, label, data, res, lenient=conn.lenient))
    if conn.deadline is not None and res.mark is not None:
        limit = res.mark + conn.deadline + GRACE
        answered = any(a.complete for a in res.answers)
        closed = res.server_closed_at
        ended = res.we_ended_at or time.monotonic()
        if not answered and (closed is None or closed > limit) and ended >= limit:
            waited = (closed or ended) - res.mark
            fail(
                "no-deadline",
                label.split(" ")[0] + " " + label.split(" ")[1],
                f"{label}: still open {waited:.1f} s after the clock started "
                f"(deadline {conn.deadline} s + {GRACE} s grace)",
            )
    return out


def _route(label: str) -> str:
    return label[:80]


def _json_error(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and "error" in document


def _looks_like_h2(data: bytes) -> bool:
    """A server SETTINGS frame (what an HTTP/2 server sends first)."""
    return len(data) >= 9 and data[3] == wire.SETTINGS and data[5:9] == b"\x00\x00\x00\x00"


def _judge_h2(
    inter: Interaction, label: str, data: bytes, res: ConnResult, *, lenient: bool
) -> list[Finding]:
    frames, _ = wire.parse_frames(data)
    names = [f.name for f in frames]
    served = [n for n in names if n in ("HEADERS", "DATA", "PUSH_PROMISE", "CONTINUATION")]
    codes = [f.goaway_code() for f in frames if f.kind == wire.GOAWAY]
    first_ok = bool(frames) and frames[0].kind == wire.SETTINGS and not frames[0].flags & wire.ACK
    closed = res.server_closed_at is not None
    detail = f"{label}: frames {names[:12]} goaway codes {codes}; closed={closed}"

    def finding(kind: str, signature: str) -> list[Finding]:
        return [Finding(kind, signature, inter.index, inter.node, detail)]

    if data.startswith(b"HTTP/1"):
        return finding("http2-not-refused", "answered as HTTP/1.1")
    if served:
        return finding("http2-served", "server sent " + "/".join(sorted(set(served))))
    if lenient:  # we hung up early: only what was sent is judged
        return []
    if not (first_ok and wire.HTTP_1_1_REQUIRED in codes and closed):
        sig = f"frames {'/'.join(dict.fromkeys(names)) or 'none'} goaway {codes} closed={closed}"
        return finding("http2-not-refused", shape(sig))
    return []


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
class Stats:
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    kind_statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    connections: int = 0
    connect_errors: int = 0
    bytes_sent: int = 0
    model_acked: int = 0


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
    out: Callable[[str], None] = print


@dataclass
class Report:
    seed: int
    seconds: float
    nodes: int
    stats: Stats
    findings: list[FindingGroup]
    watch: list[NodeWatch]
    interactions: int
    deadlines: Deadlines
    replay_hint: str

    @property
    def ok(self) -> bool:
        return not self.findings

    def text(self) -> str:
        lines = [
            f"fuzz_http report: seed={self.seed} seconds={self.seconds:.1f} nodes={self.nodes} "
            f"interactions={self.interactions} connections={self.stats.connections} "
            f"answers={sum(self.stats.statuses.values())}",
            "interactions by kind: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.kinds.items())),
            "statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.statuses.items())),
            "statuses by kind: "
            + "; ".join(
                f"{kind} "
                + " ".join(
                    f"{status}={n}"
                    for (k, status), n in sorted(self.stats.kind_statuses.items())
                    if k == kind
                )
                for kind in sorted({k for k, _ in self.stats.kind_statuses})
            ),
            f"connect errors: {self.stats.connect_errors}; acknowledged model writes: "
            f"{self.stats.model_acked}; deadlines judged: header={self.deadlines.header} "
            f"body={self.deadlines.body}",
        ]
        for i, w in enumerate(self.watch):
            lines.append(
                f"node{i + 1}: RSS idle {w.idle_rss_kb / 1024:.0f} MiB max {w.max_rss_kb / 1024:.0f} "
                f"MiB ({w.max_rss_kb / max(1, w.idle_rss_kb):.1f}x); /health max "
                f"{w.max_health_s * 1000:.0f} ms over {w.health_checks} checks; exits {w.deaths}"
            )
        if not self.findings:
            lines.append("no failures")
        else:
            lines.append(f"{len(self.findings)} distinct failure(s):")
        for n, group in enumerate(self.findings, 1):
            lines.append(
                f"[{n}] {group.kind}: {group.signature} (x{group.count}, nodes "
                f"{sorted(x + 1 for x in group.nodes)}, interactions {group.indices or 'see detail'})"
            )
            lines.extend("      " + ln for ln in group.detail.splitlines()[:24])
        lines.append(self.replay_hint)
        return "\n".join(lines)


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


# --- setup ----------------------------------------------------------------------------------------


def seed_cluster(cluster: NodeCluster, plan: Plan) -> Context:
    """Users, a group, tokens of each scope, public and private keys; waits until every node
    has them (replication)."""
    import httpx

    ctx = Context(ports=[n.port for n in cluster.nodes])
    root = cluster.root_token()
    ctx.tokens["root"] = root
    base = cluster.nodes[0].url

    with httpx.Client(timeout=30.0, trust_env=False) as client:

        def call(method: str, path: str, token: str, body: Any = None, want: int = 200) -> Any:
            r = client.request(
                method, base + path, headers={"Authorization": f"Bearer {token}"}, json=body
            )
            if r.status_code != want:
                raise RuntimeError(f"setup: {method} {path} answered {r.status_code}: {r.text}")
            return r.json() if r.content else None

        for name in TOKEN_SCOPES:
            user = call("POST", "/api/users", root, {"nickname": f"fz-{plan.tag}-{name}"}, 201)
            ctx.users[name] = user["uuid"]
        group = call(
            "POST",
            "/api/groups",
            root,
            {"groupname": f"fz-{plan.tag}-team", "members": [ctx.users["writer"]]},
            201,
        )
        ctx.groups["team"] = group["uuid"]
        for name, scopes in TOKEN_SCOPES.items():
            issued = call(
                "POST",
                "/api/tokens",
                root,
                {"user_uuid": ctx.users[name], "scopes": scopes, "expires_in": "6h"},
                201,
            )
            ctx.tokens[name] = issued["token"]
            ctx.token_ids[name] = issued["id"]
        writer, owner = ctx.tokens["writer"], ctx.tokens["owner"]
        for n, key in enumerate(plan.public_keys):
            call("PUT", f"/kv/{quote(key)}", writer, {"public": n, "note": "nothing secret"})
        # Others may create under pub/a: the owner puts a private key there.
        parent = plan.public_keys[0].rsplit("/", 1)[0] + "/a"
        call("PUT", f"/kv/{quote(parent)}/metadata", writer, {"permissions": 0xF39})
        for n, key in enumerate(plan.private_keys + plan.deleted_private_keys):
            call("PUT", f"/kv/{quote(key)}", owner, {"secret": plan.marker, "n": n})
            call("PUT", f"/kv/{quote(key)}/metadata", owner, {"permissions": 0xF00})
            call("PUT", f"/kv/{quote(key)}", owner, {"secret": plan.marker, "n": n, "v": 2})
        for key in plan.deleted_private_keys:
            call("DELETE", f"/kv/{quote(key)}", owner, want=204)
        # Every node has it all: the last private key readable by its owner everywhere,
        # the deleted ones gone everywhere, and the tokens work everywhere.
        deadline = time.monotonic() + 30
        last = plan.private_keys[-1]
        for node in cluster.nodes:
            while True:
                r1 = client.get(
                    f"{node.url}/kv/{quote(last)}", headers={"Authorization": f"Bearer {owner}"}
                )
                r2 = client.get(
                    f"{node.url}/kv/{quote(plan.deleted_private_keys[-1])}",
                    headers={"Authorization": f"Bearer {owner}"},
                )
                if r1.status_code == 200 and r2.status_code == 404:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"setup: {node.name} never got the seeded keys")
                time.sleep(0.1)
    return ctx


# --- entry points ---------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run(options: Options) -> Report:
    """Start the nodes, seed them, fuzz for `options.seconds` (or replay indices), judge,
    stop the nodes; the report lists every distinct failure."""
    out = options.out
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**63)
    out(f"fuzz_http: seed={seed} (replay with --seed {seed})")
    raise_fd_limit()
    supported = supported_config_keys()
    deadlines = Deadlines()
    settings: dict[str, object] = {"tamper_logging_enabled": True, "sync_interval": 1.0}
    if options.header_timeout is not None and "http_header_timeout" in supported:
        settings["http_header_timeout"] = options.header_timeout
        deadlines.header = options.header_timeout
    if options.body_timeout is not None and "http_body_timeout" in supported:
        settings["http_body_timeout"] = options.body_timeout
        deadlines.body = options.body_timeout
    assumed = options.assume_deadlines or Deadlines()
    if deadlines.header is None and assumed.header is not None:
        deadlines.header = assumed.header
        out(f"fuzz_http: no http_header_timeout here; judging headers against {assumed.header} s")
    if deadlines.body is None and assumed.body is not None:
        deadlines.body = assumed.body
        out(f"fuzz_http: no http_body_timeout here; judging bodies against {assumed.body} s")
    if deadlines.header is None and deadlines.body is None:
        out(
            "fuzz_http: this node has no http_header_timeout/http_body_timeout: deadlines not judged"
        )
    per_node: list[dict[str, object]] = [{} for _ in range(options.nodes)]
    if options.nodes > 1:
        per_node[-1]["allow_anonymous_read"] = True  # anonymous paths, on one node
    gen = Generator(seed, options.nodes, deadlines=deadlines, kinds=options.kinds)
    made_dir = options.directory is None
    directory = options.directory or Path(tempfile.mkdtemp(prefix="kvs-fuzz-http-"))
    started = time.monotonic()
    cluster = NodeCluster(directory, options.nodes, settings=settings, per_node=per_node)
    with cluster:
        cluster.start()
        ctx = seed_cluster(cluster, gen.plan)
        gen.resolve = ctx.resolve
        runner = Runner(options, cluster, gen, ctx)
        monitor = Monitor(
            cluster.nodes,
            runner.findings,
            runner.tracker,
            restart=options.restart,
            health_limit=options.health_limit,
            rss_factor=options.rss_factor,
        )
        monitor.measure_idle()
        runner.is_down = lambda node: monitor.down[node].is_set()
        monitor.start()
        fuzz_started = time.monotonic()
        try:
            if options.replay:
                trio.run(runner.replay, list(options.replay))
                time.sleep(1.5)  # let the monitor see what the replay did
            else:
                trio.run(runner.fire, options.seconds, options.workers)
        finally:
            fuzz_seconds = time.monotonic() - fuzz_started
            runner.check_model()  # on the nodes that are up
            monitor.stop()
            runner.tracker.close()
        for i, node in enumerate(cluster.nodes):
            if not node.alive():
                continue
            code, took = node.stop()
            if code is None:
                runner.findings.add(
                    Finding(
                        "shutdown",
                        "SIGTERM did not stop the node within 30 s",
                        -1,
                        i,
                        node.stderr_tail(10),
                    )
                )
            elif code != 0:
                runner.findings.add(
                    Finding(
                        "shutdown", f"exit status {code} after SIGTERM", -1, i, node.stderr_tail(10)
                    )
                )
        monitor.stop()
    hint = (
        f"replay: python -m kvs.testing.fuzz_http --seed {seed} --nodes {options.nodes} "
        f"--replay <interaction,...>   (logs in {directory})"
    )
    report = Report(
        seed,
        fuzz_seconds,
        options.nodes,
        runner.stats,
        runner.findings.sorted(),
        monitor.watch,
        runner.ran,
        deadlines,
        hint,
    )
    out(report.text())
    out(f"fuzz_http: total {time.monotonic() - started:.1f} s")
    if made_dir and not options.keep and report.ok:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvs.testing.fuzz_http",
        description="Seeded hostile HTTP fuzzer against real KVS node processes.",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=12, help="interactions at once")
    parser.add_argument("--dir", type=Path, default=None, help="where configs and logs go")
    parser.add_argument("--keep", action="store_true", help="keep the directory after success")
    parser.add_argument(
        "--kinds", default="", help=f"only these kinds (comma list of {','.join(KINDS)})"
    )
    parser.add_argument("--skip", default="", help="not these kinds (comma list)")
    parser.add_argument("--replay", default="", help="run only these interaction indices, in order")
    parser.add_argument("--no-restart", action="store_true", help="leave a crashed node down")
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--body-timeout", type=float, default=3.0)
    parser.add_argument(
        "--judge-deadlines",
        default="",
        metavar="HEADER,BODY",
        help="judge deadlines (seconds) even where the node has no http_*_timeout key",
    )
    parser.add_argument("--show", default="", help="print interactions (indices) and exit")
    args = parser.parse_args(argv)
    kinds = [k for k in (args.kinds.split(",") if args.kinds else KINDS) if k]
    skip = set(filter(None, args.skip.split(",")))
    unknown = (set(kinds) | skip) - set(KINDS)
    if unknown:
        parser.error(f"unknown kind(s): {sorted(unknown)}")
    kinds = [k for k in kinds if k not in skip]
    if args.show:
        if args.seed is None:
            parser.error("--show needs --seed")
        gen = Generator(args.seed, args.nodes, kinds=kinds)
        for index in _indices(args.show):
            print(describe(gen.interaction(index)))
        return 0
    options = Options(
        seconds=args.seconds,
        seed=args.seed,
        nodes=args.nodes,
        workers=args.workers,
        directory=args.dir,
        keep=args.keep,
        kinds=kinds,
        replay=_indices(args.replay) if args.replay else (),
        restart=not args.no_restart,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        assume_deadlines=_deadlines(args.judge_deadlines),
    )
    return 0 if run(options).ok else 1


def _deadlines(text: str) -> Deadlines | None:
    if not text:
        return None
    header, _, body = text.partition(",")
    return Deadlines(float(header) if header else None, float(body) if body else None)


def _indices(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


if __name__ == "__main__":
    sys.exit(main())
