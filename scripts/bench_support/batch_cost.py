"""`bench.py batch-cost`: CPU time per key of a bulk write `POST /kv/_batch`, in process.

The HTTP benchmark's bulk figure mixes the client, the sockets and a shared machine's noise;
this one is the node's own cost: a real `Node` (real LMDB, `durability: os`, clustering
off) without sockets, its ASGI app called directly with pre-encoded 1,000-key bodies of
~100-byte documents (the HTTP benchmark's), fresh keys every round. CPU seconds
(`time.process_time`) over the calls, divided by the keys; the median of R rounds after a
warm-up round. `--token` sends the root token with auth on; `--profile FILE` writes a
cProfile of one more round (`python -m pstats FILE`).
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import time
from typing import Any

import msgpack
import orjson
import trio

from bench_support.inprocess import inprocess_node
from bench_support.targets import KVS_BATCH_MAX, doc, kvs_batch_body
from kvs.api.writelink import WriteLinkServer, encode_write
from kvs.memory import tune_gc
from kvs.model import canonical_json
from kvs.store import Put


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=20_000, help="keys per round (default 20,000)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds; the median is shown")
    p.add_argument("--token", action="store_true", help="auth on, the root token on each call")
    p.add_argument("--profile", metavar="FILE", help="also write a cProfile of one round")
    p.add_argument(
        "--link",
        action="store_true",
        help="the node's share when an HTTP worker parsed the batch: its write-link frames",
    )


def _frames(tag: str, keys: int) -> list[bytes]:
    """The write-link frames an HTTP worker sends for `_bodies(tag, keys)` (same documents)."""
    frames = []
    for lo in range(0, keys, KVS_BATCH_MAX):
        ops = [
            Put(f"bench/{tag}/{i}", canonical_json(doc(i)))
            for i in range(lo, min(lo + KVS_BATCH_MAX, keys))
        ]
        frames.append(encode_write(ops, "", "batch")[4:])  # without its length prefix
    return frames


class _LinkCaller:
    """The node's side of the write link: decodes a worker's frame, writes its ops, encodes
    the answer (the socket's own cost, one send and one receive per 1,000 keys, left out)."""

    def __init__(self, server: WriteLinkServer) -> None:
        self.server = server

    async def round(self, frames: list[bytes]) -> float:
        started = time.process_time()
        for frame in frames:
            answer = await self.server.answer(msgpack.unpackb(frame, raw=False))
            if answer[4] != 0x92 or answer[5] != 0:  # [OK, outcomes]
                raise RuntimeError(f"the write link refused: {answer[:300]!r}")
        return time.process_time() - started


def _bodies(tag: str, keys: int) -> list[bytes]:
    """Pre-encoded `_batch` bodies for `keys` fresh keys under `bench/{tag}/`."""
    return [
        kvs_batch_body(
            [f"bench/{tag}/{i}" for i in range(lo, min(lo + KVS_BATCH_MAX, keys))], doc, lo
        )
        for lo in range(0, keys, KVS_BATCH_MAX)
    ]


class _Caller:
    """Calls the node's ASGI app with one `_batch` body and checks every op succeeded."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
        if token is not None:
            self.headers.append((b"authorization", b"Bearer " + token.encode()))

    async def post(self, body: bytes) -> None:
        scope = {
            "type": "http",
            "http_version": "1.1",
            "scheme": "http",
            "root_path": "",
            "method": "POST",
            "path": "/kv/_batch",
            "query_string": b"",
            "headers": [*self.headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8080),
        }
        sent = False
        status: list[int] = []
        answer: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await trio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))

        await self.app(scope, receive, send)
        results = orjson.loads(b"".join(answer)).get("results") if status == [200] else None
        if not results or any("uuid" not in r for r in results):
            raise RuntimeError(f"_batch answered {status}: {b''.join(answer)[:300]!r}")

    async def round(self, bodies: list[bytes]) -> float:
        """CPU seconds to send `bodies`, one after another."""
        started = time.process_time()
        for body in bodies:
            await self.post(body)
        return time.process_time() - started


async def _measure(args: argparse.Namespace) -> list[float]:
    """µs of CPU per key, one figure per measured round."""
    async with inprocess_node("kvs-batch-cost-", auth=args.token) as node:
        token = node.root_token_path.read_text().strip() if args.token else None
        caller: _Caller | _LinkCaller = _Caller(node.api.app.asgi_app, token)
        make = _bodies
        if args.link:
            caller, make = _LinkCaller(WriteLinkServer(node)), _frames
        tune_gc()  # as `kvs serve` does once the node is up
        await caller.round(make("warm", min(args.keys, 5 * KVS_BATCH_MAX)))
        per_key = []
        for r in range(args.rounds):
            bodies = make(f"r{r}", args.keys)
            per_key.append(await caller.round(bodies) / args.keys * 1e6)
        if args.profile:
            bodies = make("profile", args.keys)
            profiler = cProfile.Profile()
            profiler.enable()
            await caller.round(bodies)
            profiler.disable()
            profiler.dump_stats(args.profile)
        return per_key


def run(args: argparse.Namespace) -> int:
    per_key = trio.run(_measure, args)
    auth = "auth on, root token" if args.token else "auth off"
    rounds = ", ".join(f"{us:.1f}" for us in per_key)
    what = "the node's side of POST /kv/_batch through an HTTP worker (its write-link frames)"
    print(
        f"{what if args.link else 'POST /kv/_batch in process'}"
        f" ({auth}, durability os, {KVS_BATCH_MAX:,}-key bodies): "
        f"{statistics.median(per_key):.1f} µs of CPU per key "
        f"(median of {args.rounds} rounds x {args.keys:,} keys: {rounds})"
    )
    if args.profile:
        print(f"cProfile of one more round written to {args.profile}")
    return 0
