"""A seeded hostile HTTP fuzzer: real node processes, anonymous and authenticated abuse, and
a monitor that says when one request took a node down (issue 12).

    python -m kvs.testing.fuzz_http --seconds 60 [--seed N] [--nodes 3] [--replay 12,57]

Three parts, in this order in the file:

1. The generator. `Generator.interaction(index)` describes interaction `index` completely:
   which node, who calls (anonymous, a bad token, a token of some scope), and the bytes and
   pauses of each connection it opens. Every choice comes from one `random.Random(seed)`
   (it hands out one sub-seed per index), and nothing depends on what the nodes answered,
   so a seed replays the same inputs and `--replay INDEX` re-runs one interaction alone.
   Values only known at run time (tokens, user ids) are placeholders (`{{tok:reader}}`)
   filled in when the bytes are sent.
2. The runner. Starts a cluster (kvs.testing.http_cluster), seeds users, tokens, public
   and private keys, then runs interactions on many connections at once for the given time,
   and judges every answer: no 5xx but the allowed 503s, JSON 4xx errors, no HTTP/2 or
   WebSocket upgrade served, deadlines kept, the private marker never shown to a caller who
   may not read it, and a small model of the writes only the fuzzer makes.
3. The monitor. One thread per node: the process stays up, /health answers within a second,
   RSS stays under 4x idle, no "Traceback" appears in its stderr. Each failure names the
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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from kvs.testing import http_wire as wire
from kvs.testing.http_cluster import (
    HOST,
    NodeCluster,
    NodeProcess,
    http_get,
    supported_config_keys,
)

# --- the plan: what the setup creates, derived from the seed -----------------------------------

PRINCIPALS = ("anon", "bad", "root", "owner", "reader", "writer", "admin", "noscope")
MARKER_READERS = ("root", "owner")  # the only callers who may ever see the private marker
TOKEN_SCOPES = {
    "owner": ["read", "write", "delete"],
    "reader": ["read"],
    "writer": ["read", "write", "delete"],
    "admin": [
        "read",
        "admin:users:create",
        "admin:users:read",
        "admin:users:update",
        "admin:users:delete",
        "admin:groups:create",
        "admin:groups:read",
        "admin:groups:update",
        "admin:groups:delete",
        "admin:tokens:create",
        "admin:tokens:revoke",
        "admin:metadata:read",
        "admin:audit:read",
        "admin:backup:read",
    ],
    "noscope": [],
}
ALL_SCOPES = (
    "read",
    "write",
    "delete",
    "admin:users:create",
    "admin:users:read",
    "admin:users:update",
    "admin:users:delete",
    "admin:groups:create",
    "admin:groups:read",
    "admin:groups:update",
    "admin:groups:delete",
    "admin:tokens:create",
    "admin:tokens:revoke",
    "admin:metadata:read",
    "admin:metadata:update",
    "admin:audit:read",
    "admin:cluster:bootstrap",
    "admin:backup:read",
    "admin:backup:create",
)
MODEL_SLOTS = 24
GRACE = 3.0
PIPELINE_BYTES = 1 << 20  # a pipeline stops growing past this
MAX_FUZZ_BODY = (
    8 << 20
)  # generated bodies stay under this (the big_body kind streams more)  # beyond a configured deadline before "the server never cut it off" is a failure


@dataclass(frozen=True)
class Plan:
    """What the setup creates; a pure function of the seed."""

    seed: int
    tag: str  # names this run's keys, users and groups
    marker: str  # the secret inside every private value
    public_keys: tuple[str, ...]
    private_keys: tuple[str, ...]  # 0xF00, owned by `owner`, values (and history) hold the marker
    deleted_private_keys: tuple[str, ...]  # the same, then deleted by the owner

    @classmethod
    def from_rng(cls, seed: int, rng: random.Random) -> Plan:
        tag = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
        marker = "MARK" + "".join(rng.choice("0123456789abcdef") for _ in range(28))
        public = [f"fzd-{tag}/pub/{name}" for name in ("a", "b", "c")]
        public += [f"fzd-{tag}/pub/a/{name}" for name in ("x", "y", "ünï", "deep/er/still")]
        private = [f"fzd-{tag}/priv/{name}" for name in ("k1", "k2", "room/secret")]
        private.append(f"fzd-{tag}/pub/a/hidden")  # a private key under a public one
        deleted = [f"fzd-{tag}/priv/gone1", f"fzd-{tag}/gone2"]
        return cls(seed, tag, marker, tuple(public), tuple(private), tuple(deleted))

    def model_key(self, slot: int) -> str:
        return f"fzm-{self.tag}/s{slot}"

    @property
    def junk_prefix(self) -> str:
        return f"fzj-{self.tag}"


# --- interactions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Big:
    """A large payload sent in pieces without being built whole: head + fill * count + tail."""

    head: bytes
    fill: bytes
    count: int
    tail: bytes

    def __len__(self) -> int:
        return len(self.head) + len(self.fill) * self.count + len(self.tail)

    def pieces(self, size: int = 1 << 16) -> Iterable[bytes]:
        yield self.head
        per = max(1, size // max(1, len(self.fill)))
        left = self.count
        while left > 0:
            n = min(per, left)
            yield self.fill * n
            left -= n
        yield self.tail


# Steps of one connection: ("send", bytes), ("big", Big), ("trickle", bytes, interval),
# ("sleep", seconds), ("mark",) (the clock of a deadline starts), ("eof",) (shutdown SHUT_WR),
# ("rst",) (SO_LINGER 0 and close: a reset), ("close",).
Step = tuple[Any, ...]


@dataclass
class Conn:
    steps: list[Step]
    labels: list[str] = field(default_factory=list)  # the request(s) it carries, for reports
    heads: list[bool] = field(default_factory=list)  # per expected answer: a HEAD request?
    expect: int | None = 1  # answers after which we hang up (None: read until close/timeout)
    read_timeout: float = 3.0  # after the last step, how long to wait for answers
    h2: bool = False  # starts with the exact HTTP/2 preface: judged as HTTP/2
    upgrade: str = ""  # "websocket" or "h2c": a 101 would mean the server took it
    deadline: float | None = None  # the server must close within this long after ("mark",)
    stream: bool = False  # a watch: the answer never completes
    lenient: bool = False  # we hang up early on purpose: judge what came, not what did not


@dataclass
class ModelOp:
    """A write to keys only the fuzzer writes (one node per slot, one op at a time)."""

    action: str  # put, delete, cas, batch, read
    slots: list[int]
    values: list[Any]  # per slot: the JSON value (put), None (delete)
    raw_ttl: bool = False


@dataclass
class Interaction:
    index: int
    kind: str
    node: int
    who: str
    what: str
    conns: list[Conn]
    model: ModelOp | None = None
    concurrent: bool = True  # open all connections at once (else one after the other)


# --- building blocks of hostile input ------------------------------------------------------------

NUMBERS = [
    "0",
    "1",
    "-1",
    "100",
    "1001",
    "5001",
    "999999999999999999999999",
    "²",
    "١٢",
    "𝟗",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e3",
    "1.5",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "1_000",
    "",
    "true",
    "null",
    "[]",
    "9" * 4301,
    "9" * 5000,
    "-" + "9" * 5000,
    "0" * 5000 + "1",
    "²³",
    "1e400",
    "-0",
    "18446744073709551616",
    "9223372036854775808",
    "140737488355328",
]
DURATIONS = [
    "30s",
    "1h",
    "500ms",
    "0",
    "0s",
    "-1s",
    "1e400",
    "1e400s",
    "NaN",
    "nans",
    "infs",
    "inf",
    "²s",
    "²",
    "١s",
    "1e-9s",
    "9" * 5000,
    "9" * 5000 + "s",
    "1y",
    "30",
    "1.5m",
    " ",
    "𝟗s",
    "100000000000000d",
    "3153600001",
    "0.0001ms",
    "1" + "0" * 308 + "ms",
    "-0",
    "1_0s",
]
HOSTS = [
    "a" * 64,
    "a" * 64 + ".example",
    "x." * 130 + "x",
    "ünï.example",
    "xn--",
    "[::1]:80",
    "[::1",
    "h:99999",
    "h:-1",
    "h:²",
    "h:",
    ":80",
    "h h",
    "h/x",
    "%00",
    "a" * 10000,
    "h:80:80",
    "localhost",
    "a..b",
    ".",
    "-a-.example",
    "h:0",
    "h:65536",
    "h:" + "9" * 5000,
    "1.2.3.4.5",
    "[zz]",
    "a_b",
    "\u212a.example",
]
NASTY_STRINGS = [
    "",
    " ",
    "\u0000",
    "\ud7ff",
    "\u2028",
    "ünïcødé",
    "😀" * 50,
    "x" * 300,
    "x" * 100_000,
    "../../etc/passwd",
    "%00",
    "²",
    "NaN",
    "null",
    "{}",
    "\u202e",
    "a\nb",
    "a\r\nX-Injected: 1",
]
BAD_JSON = [
    b"",
    b" ",
    b"{",
    b"}",
    b"[1,]",
    b"{'a': 1}",
    b'{"a" 1}',
    b'{"a": 1} trailing',
    b"NaN",
    b"[NaN]",
    b'{"a": Infinity}',
    b"[-Infinity]",
    b"1e400",
    b"[1e400, -1e400]",
    b'{"a": "\xff\xfe"}',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"\\ud800"',
    b'{"a": "\\ud83d"}',
    b"\xef\xbb\xbf{}",
    b"\x00",
    b"[" + b"1," * 10 + b"]",
    b'{"a":1,"a":2}',
    b'{"":0}',
    b"0" * 5000,
    b"9" * 5000,
    b"-" + b"9" * 5000,
    b"[" + b"9" * 5000 + b"]",
    b'"\\u0000"',
    b"true",
    b"null",
    b"[]",
    b'"string"',
    b"-0",
    b"1.0e-400",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\t\n\r ",
    b'{"a":[1,2,{"b":null}]}',
]
METHODS = [b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"]
WEIRD_METHODS = [
    b"get",
    b"GE T",
    b"GET\x00",
    b"\xffGET",
    b"X" * 10000,
    b"PRI",
    b"M-SEARCH",
    b"G\rET",
    b"",
    b"PROPFIND",
    b"\xc3\xa9T",
    b"GET\t",
]
WEIRD_TARGETS = [
    b"*",
    b"?a=1",
    b"http://127.0.0.1/kv/a",
    b"http://evil.example/health",
    b"https://[::1]:99999/kv/a",
    b"//kv//a",
    b"/%",
    b"/%zz",
    b"/kv/%00",
    b"/kv/a\x00b",
    b"/kv/\xff\xfe",
    b"/" + b"a" * 100_000,
    b"/kv/" + b"%2F" * 200,
    b"",
    b"#",
    b"/kv/a#frag",
    b"/../../etc/passwd",
    b"/kv/..%2F..%2Fx",
    b"/kv/a?%",
    b"/kv/a?a=%zz&&&=&",
    b"/kv/a?" + b"a=1&" * 5000,
    b"\\kv\\a",
    b"/kv/a b",
    b"/health?" + b"x" * 60000,
    b"/kv/%C2%B2",
    b"/kv/_ls?limit=%C2%B2",
    b"/kv/\xc2\xb2/_ls",
    b"/cluster/info?x=1",
    b"?",
    b"/kv/_watch?since=%C2%B2",
    b"/kv/%ED%A0%80",
    b"/kv/%FF",
    b"/api/data/%FF/history",
    b"/kv/a%2F%2E%2E",
]
VERSIONS = [
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/9.9",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"HTTP/1",
    b"",
    b"HTTP/1.1\x00",
    b"HTTP/11.1",
    b"XTTP/1.1",
    b"HTTP/3",
]


class Raw:
    """JSON text spliced in as is by `dump` (NaN, 5000-digit numbers, deep nesting...)."""

    def __init__(self, text: bytes) -> None:
        self.text = text


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs: duplicates allowed."""


def dump(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return b"{" + b",".join(dump(str(k)) + b":" + dump(v) for k, v in value) + b"}"
    if isinstance(value, dict):
        return b"{" + b",".join(dump(str(k)) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def pct(text: str) -> bytes:
    return quote(text, safe="/").encode()


def tok(name: str) -> bytes:
    return b"{{tok:" + name.encode() + b"}}"


# --- the generator -------------------------------------------------------------------------------

KIND_WEIGHTS: dict[str, int] = {
    "request": 40,
    "garbage": 14,
    "model": 12,
    "half_close": 5,
    "stall": 4,
    "trickle": 3,
    "pipeline": 5,
    "rst": 4,
    "flood": 2,
    "websocket": 3,
    "h2_prior": 4,
    "h2c_upgrade": 2,
    "big_body": 1,
    "slow_reader": 1,
}
KINDS = tuple(KIND_WEIGHTS)


@dataclass
class Deadlines:
    """The node's request deadlines when the fuzzer set them (None: not judged)."""

    header: float | None = None
    body: float | None = None


class Generator:
    """Interaction `index` for a seed, the same on every run (see the module docstring)."""

    def __init__(
        self,
        seed: int,
        nodes: int,
        *,
        deadlines: Deadlines | None = None,
        kinds: Sequence[str] = KINDS,
    ) -> None:
        self.seed = seed
        self.nodes = nodes
        self.deadlines = deadlines or Deadlines()
        master = random.Random(seed)
        self.plan = Plan.from_rng(seed, random.Random(master.getrandbits(64)))
        self._master = master
        self._seeds: list[int] = []
        self.kinds = [k for k in KINDS if k in kinds]
        self.weights = [KIND_WEIGHTS[k] for k in self.kinds]

    def seed_of(self, index: int) -> int:
        while len(self._seeds) <= index:
            self._seeds.append(self._master.getrandbits(64))
        return self._seeds[index]

    def interaction(self, index: int) -> Interaction:
        rng = random.Random(self.seed_of(index))
        # The kind is drawn over every kind, then mapped into the enabled ones, so that
        # disabling a kind does not change what the others generate for the same index.
        kind = rng.choices(KINDS, [KIND_WEIGHTS[k] for k in KINDS])[0]
        if kind not in self.kinds:
            kind = random.Random(index ^ self.seed).choices(self.kinds, self.weights)[0]
        node = rng.randrange(self.nodes)
        build: Callable[[random.Random, int, int], Interaction] = getattr(self, f"_kind_{kind}")
        return build(rng, index, node)

    # --- principals and keys -------------------------------------------------------------------

    def _who(self, rng: random.Random) -> str:
        return rng.choices(PRINCIPALS, [14, 14, 10, 10, 12, 14, 10, 6])[0]

    def _auth_headers(self, rng: random.Random, who: str) -> list[tuple[bytes, bytes]]:
        if who == "anon":
            return []
        if who != "bad":
            scheme = rng.choice([b"Bearer ", b"Bearer ", b"Bearer ", b"bearer ", b"Bearer  "])
            return [(b"Authorization", scheme + tok(who))]
        victim = rng.choice(["reader", "writer", "root", "owner", "admin"]).encode()
        options = [
            b"",
            b"Bearer",
            b"Bearer ",
            b"Bearer x",
            b"Basic Zm9vOmJhcg==",
            b"Bearer a.b.c",
            b"Bearer e30.e30.",
            b"Bearer " + b"A" * rng.choice([100, 5000, 70000]),
            b"Bearer \xff\xfe",
            b"Bearer {{tokmut:" + victim + b":flipsig}}",
            b"Bearer {{tokmut:" + victim + b":trunc}}",
            b"Bearer {{tokmut:" + victim + b":nosig}}",
            b"Bearer {{tokmut:" + victim + b":algnone}}",
            b"Bearer {{tokmut:" + victim + b":payload}}",
            b"Bearer {{tok:" + victim + b"}}x",
            b"Negotiate " + b"YII" * 30,
            b"Bearer " + _fake_jwt(rng),
            b"Bearer\x00{{tok:" + victim + b"}}",
            "Bearer ünï".encode(),
        ]
        headers = [(b"Authorization", rng.choice(options))]
        if rng.random() < 0.15:  # two Authorization headers, one bad
            headers.append((b"Authorization", rng.choice(options)))
        return headers

    def _key(self, rng: random.Random, who: str, *, mutating: bool) -> str:
        """A key to act on. Callers that may read the marker never get to change a private
        key (that would change who may read it), and nothing but model ops touches model keys."""
        plan = self.plan
        pools: list[Sequence[str]] = [plan.public_keys, [self._junk_key(rng)]]
        weights = [3, 4]
        if not (mutating and who in MARKER_READERS):
            pools.append(plan.private_keys + plan.deleted_private_keys)
            weights.append(3)
        pool = rng.choices(pools, weights)[0]
        return rng.choice(list(pool))

    def _junk_key(self, rng: random.Random) -> str:
        base = self.plan.junk_prefix
        shapes = [
            lambda: f"{base}/{rng.randrange(1000)}",
            lambda: f"{base}/{rng.randrange(50)}/{rng.randrange(50)}",
            lambda: f"{base}/" + rng.choice(NASTY_STRINGS[:12]),
            lambda: f"{base}//x",
            lambda: f"{base}/./x",
            lambda: f"{base}/../x",
            lambda: f"{base}/_x",
            lambda: f"{base}/" + "k" * rng.choice([200, 1020, 1025, 5000]),
            lambda: f"{base}/a\x01b",
            lambda: f"{base}/a\x7f",
            lambda: f"{base}/",
            lambda: "/" + base,
            lambda: "_sys/users/x",
            lambda: f"{base}/metadata",
            lambda: f"{base}/history",
            lambda: f"{base}/" + "/".join("s" for _ in range(300)),
            lambda: f"{base}/ünï/😀",
            lambda: f"{base}/\u00b2",
            lambda: f"{base}/%41",
        ]
        return rng.choice(shapes)()

    def _host(self, rng: random.Random, node: int) -> list[tuple[bytes, bytes]]:
        roll = rng.random()
        if roll < 0.85:
            return [(b"Host", f"{HOST}:{{{{port:{node}}}}}".encode())]
        if roll < 0.9:
            return []
        if roll < 0.95:
            return [(b"Host", b"a"), (b"Host", b"b")]
        return [(b"Host", rng.choice(HOSTS).encode("utf-8", "surrogatepass"))]

    def _number(self, rng: random.Random) -> bytes:
        value = rng.choice(NUMBERS)
        return value.encode() if rng.random() < 0.3 else pct(value)

    # --- endpoints -----------------------------------------------------------------------------

    def _endpoint(self, rng: random.Random, who: str) -> tuple[str, bytes, bytes, list, bytes]:
        """(label, method, target, extra headers, body) for one API call."""
        plan = self.plan
        choice = rng.choices(
            [
                "kv_get",
                "kv_put",
                "kv_delete",
                "ls",
                "tree",
                "batch",
                "watch",
                "metadata_get",
                "metadata_put",
                "kv_changes",
                "history",
                "users",
                "groups",
                "tokens",
                "audit",
                "backup",
                "cluster",
                "cluster_info",
                "bootstrap",
                "health",
                "unknown",
            ],
            [10, 9, 4, 5, 5, 7, 3, 3, 4, 3, 4, 4, 3, 4, 2, 1, 4, 3, 1, 2, 3],
        )[0]
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        method = b"GET"
        if choice == "kv_get":
            method = rng.choice([b"GET", b"GET", b"HEAD"])
            target = b"/kv/" + pct(self._key(rng, who, mutating=False))
            if rng.random() < 0.3:
                headers.append((b"If-None-Match", self._etag_garbage(rng)))
        elif choice == "kv_put":
            method = b"PUT"
            target = b"/kv/" + pct(self._key(rng, who, mutating=True))
            if rng.random() < 0.3:
                target += b"?ttl=" + pct(rng.choice(DURATIONS))
            if rng.random() < 0.2:
                headers.append((b"X-KVS-TTL", rng.choice(DURATIONS).encode()))
            if rng.random() < 0.25:
                headers.append((b"If-Match", self._etag_garbage(rng)))
            body = self._json_body(rng)
        elif choice == "kv_delete":
            method = b"DELETE"
            target = b"/kv/" + pct(self._key(rng, who, mutating=True))
            if rng.random() < 0.2:
                body = self._json_body(rng)
        elif choice in ("ls", "tree"):
            prefix = rng.choice(["", self.plan.public_keys[0], f"fzd-{plan.tag}", "nope/x"])
            if rng.random() < 0.2:
                prefix = self._junk_key(rng)
            name = "_ls" if choice == "ls" else "_tree"
            target = b"/kv/" + (pct(prefix) + b"/" if prefix else b"") + name.encode()
            params = ["limit", "include_metadata"] if choice == "ls" else ["limit", "depth"]
            target += self._query(rng, params + (["format"] if choice == "tree" else []))
            method = rng.choice([b"GET", b"GET", b"GET", b"HEAD", b"POST"])
        elif choice == "batch":
            method = rng.choice([b"POST"] * 9 + [b"GET", b"PUT"])
            target = b"/kv/_batch"
            body = self._batch_body(rng, who)
        elif choice == "watch":
            prefix = rng.choice(["", self.plan.public_keys[0], f"fzd-{plan.tag}/priv"])
            target = b"/kv/" + (pct(prefix) + b"/" if prefix else b"") + b"_watch"
            if rng.random() < 0.5:
                target += b"?since=" + self._since(rng)
            if rng.random() < 0.2:
                headers.append((b"Last-Event-ID", self._since(rng)))
            method = rng.choice([b"GET"] * 8 + [b"POST", b"HEAD"])
        elif choice == "metadata_get":
            target = (
                b"/kv/"
                + pct(self._key(rng, who, mutating=False))
                + rng.choice([b"/metadata", b"/_metadata"])
            )
        elif choice == "metadata_put":
            method = b"PUT"
            target = (
                b"/kv/"
                + pct(self._key(rng, who, mutating=True))
                + rng.choice([b"/metadata", b"/_metadata"])
            )
            body = self._metadata_body(rng)
        elif choice == "kv_changes":
            target = b"/kv_changes" + self._query(rng, ["since", "limit"])
        elif choice == "history":
            key = self._key(rng, who, mutating=False)
            target = b"/api/data/" + pct(key) + b"/history"
            if rng.random() < 0.5:
                target += b"/" + self._number(rng)
        elif choice in ("users", "groups"):
            method, target, body = self._directory(rng, who, choice)
        elif choice == "tokens":
            method, target, body = self._tokens(rng, who)
        elif choice == "audit":
            target = rng.choice([b"/api/audit", b"/api/audit/verify"])
            target += self._query(rng, ["since", "limit"])
        elif choice == "backup":
            # A real backup copies the store: rare, and only a few per run.
            if rng.random() < 0.15:
                method, target = b"POST", b"/api/backup/run"
            else:
                method, target = b"GET", b"/api/backup/status"
        elif choice == "cluster":
            target = rng.choice(
                [b"/members/", b"/members", b"/cluster/stats", b"/merkle_tree/root", b"/metrics"]
            )
            method = rng.choice([b"GET"] * 6 + [b"HEAD", b"POST", b"DELETE"])
        elif choice == "cluster_info":
            target = b"/cluster/info"
            stamp = rng.choice(
                [
                    "²",
                    "9" * rng.choice([4300, 4301, 5000, 20]),
                    "0",
                    "-1",
                    "١٢٣",
                    "",
                    "1" + "0" * 12,
                    "{{now}}",
                    "𝟗𝟗",
                ]
            )
            tag = rng.choice(["", "x", "0" * 64, "ü" * 64, "g" * 10000])
            value = rng.choice([f"{stamp}.{tag}", stamp, f".{tag}", f"{stamp}..{tag}"])
            if rng.random() < 0.9:
                headers.append((b"X-KVS-Cluster-Auth", value.encode()))
        elif choice == "bootstrap":
            method = rng.choice([b"POST"] * 4 + [b"GET"])
            target = b"/auth/cluster-bootstrap"
            if rng.random() < 0.4:
                body = self._json_body(rng)
        elif choice == "health":
            method = rng.choice([b"GET"] * 5 + [b"HEAD", b"POST", b"PUT", b"OPTIONS"])
            target = b"/health" + (self._query(rng, ["x"]) if rng.random() < 0.2 else b"")
            if method in (b"POST", b"PUT"):
                body = self._json_body(rng)
        else:
            target = rng.choice(
                [
                    b"/",
                    b"/api",
                    b"/api/",
                    b"/api/users/" + b"f" * 65,
                    b"/kv",
                    b"/kv/",
                    b"/ui/",
                    b"/favicon.ico",
                    b"/kv_changes/x",
                    b"/api/data/a",
                    b"/api/audit/x",
                    b"/.env",
                    b"/metrics/x",
                    b"/health/",
                    b"/HEALTH",
                ]
            )
            method = rng.choice(METHODS)
        if rng.random() < 0.08:  # the wrong method on a real route
            method = rng.choice(METHODS)
        return choice, method, target, headers, body

    def _etag_garbage(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                b"*",
                b'"nope"',
                b'W/"x"',
                b"W/",
                b'""',
                b'"',
                b"0" * 36,
                b'"' + b"f" * 10000 + b'"',
                "ünï".encode(),
                b"\xff",
                b'"a", "b"',
                b"W/W/W/",
                b"{{uuid}}",
            ]
        )

    def _since(self, rng: random.Random) -> bytes:
        value = rng.choice(
            [
                *NUMBERS[:20],
                "123-" + "a" * 36,
                "1-" + "x" * 36 + "-d",
                "9" * 30 + "-" + "0" * 36,
                "0-" + "0" * 36,
                "-1-abc",
                "9" * 19 + "-" + "1" * 36,
                "²-" + "a" * 36,
            ]
        )
        return pct(value)

    def _query(self, rng: random.Random, names: list[str]) -> bytes:
        if rng.random() < 0.3:
            return b""
        parts = []
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            name = rng.choice([*names, "x", "", "limit[]", "ünï"])
            if name in ("include_metadata",):
                value = pct(rng.choice(["true", "false", "yes", "2", "", "TRUE", "ü", "\x00"]))
            elif name == "format":
                value = pct(rng.choice(["json", "nested", "xml", "", "JSON", "nested\x00"]))
            elif name == "since":
                value = self._since(rng)
            else:
                value = self._number(rng)
            parts.append(pct(name) + (b"=" + value if rng.random() < 0.95 else b""))
        if rng.random() < 0.1:
            parts.append(b"%zz=%")
        return b"?" + b"&".join(parts)

    # --- bodies --------------------------------------------------------------------------------

    def _nasty_value(self, rng: random.Random, depth: int = 0) -> Any:
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(NASTY_STRINGS)
        if roll < 0.3:
            return rng.choice([0, -1, 1, 2**53 + 1, 2**64, -(2**63) - 1, 1.5, 1e308, -0.0, True])
        if roll < 0.45:
            return Raw(rng.choice(BAD_JSON[8:14] + BAD_JSON[24:28]))
        if roll < 0.55:
            n = rng.choice([10, 1000, 100_000])
            return (
                Raw(b"[" * n + b"]" * n)
                if rng.random() < 0.5
                else Raw(b'{"a":' * n + b"1" + b"}" * n)
            )
        if roll < 0.62:
            return Raw(b"[" + b"1," * rng.choice([1000, 200_000]) + b"1]")
        if roll < 0.7:
            return "s" * rng.choice([1000, 2**20, 2**20 + 10])
        if roll < 0.8 and depth < 3:
            return {
                rng.choice(NASTY_STRINGS[:8]): self._nasty_value(rng, depth + 1) for _ in range(3)
            }
        if roll < 0.9 and depth < 3:
            return [self._nasty_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return rng.choice([None, [], {}, "", Pairs([("a", 1), ("a", 2)])])

    def _json_body(self, rng: random.Random) -> bytes:
        roll = rng.random()
        if roll < 0.35:
            return dump({"v": rng.randrange(1000), "s": rng.choice(NASTY_STRINGS[:10])})
        if roll < 0.6:
            return rng.choice(BAD_JSON)
        if roll < 0.67:
            n = rng.choice([1000, 100_000])
            return b"[" * n + b"]" * n
        return dump(self._nasty_value(rng))

    def _batch_body(self, rng: random.Random, who: str) -> bytes:
        roll = rng.random()
        if roll < 0.15:
            return self._json_body(rng)
        if roll < 0.2:
            return dump({"ops": self._nasty_value(rng)})
        count = rng.choice([0, 1, 2, 3, 5, 20, 1000, 1001, 5000])
        ops = []
        for _ in range(min(count, 20)):
            op: dict[str, Any] = {"op": rng.choice(["put", "put", "delete", "PUT", "x", None])}
            op["key"] = (
                self._key(rng, who, mutating=True) if rng.random() < 0.9 else self._nasty_value(rng)
            )
            if rng.random() < 0.8:
                op["data"] = (
                    {"v": rng.randrange(100)} if rng.random() < 0.6 else self._nasty_value(rng)
                )
            if rng.random() < 0.2:
                op["ttl"] = rng.choice([*DURATIONS, 1e400, -1, True, [], 2**70])
                if op["ttl"] == 1e400:
                    op["ttl"] = Raw(b"1e400")
            if rng.random() < 0.05:
                op["extra"] = 1
            ops.append(op)
        parts = [dump(op) for op in ops]
        if count > 20 and parts:  # the rest repeat the first, within the largest batch body
            repeat = min(count - 20, MAX_FUZZ_BODY // max(1, len(parts[0])))
            parts += [parts[0]] * repeat
        listed = b"[" + b",".join(parts) + b"]"
        if rng.random() < 0.1:
            return b'{"ops":[],"ops":' + listed + b"}"
        return b'{"ops":' + listed + b"}"

    def _metadata_body(self, rng: random.Random) -> bytes:
        body: dict[str, Any] = {}
        for name in ("permissions", "owner_uuid", "group_uuid", "ttl"):
            if rng.random() < 0.4:
                if name == "permissions":
                    body[name] = rng.choice(
                        [-1, 0, 3840, 4095, 4096, 2**70, "3840", 1.5, True, None, Raw(b"1e400")]
                    )
                elif name == "ttl":
                    body[name] = rng.choice([*DURATIONS, None, 0, -1, Raw(b"NaN"), 1e300])
                else:
                    body[name] = rng.choice(
                        ["", "nope", "{{user:reader}}", "{{group:team}}", 5, None, "x" * 5000]
                    )
        if rng.random() < 0.15:
            body["extra"] = self._nasty_value(rng)
        return dump(body) if rng.random() < 0.85 else self._json_body(rng)

    def _directory(self, rng: random.Random, who: str, kind: str) -> tuple[bytes, bytes, bytes]:
        name_field = "nickname" if kind == "users" else "groupname"
        list_field = "groups" if kind == "users" else "members"
        other = "group" if kind == "users" else "user"
        action = rng.choice(["create", "list", "get", "update", "delete"])
        base = b"/api/" + kind.encode()
        ident = self._ident(rng, kind[:-1], deletable=action == "delete")
        body: dict[str, Any] = {}
        if rng.random() < 0.9:
            body[name_field] = rng.choice(
                [f"fz-{self.plan.tag}-{rng.randrange(1000)}", *NASTY_STRINGS]
            )
        if rng.random() < 0.4:
            body[list_field] = rng.choice(
                [[], ["nope"], [f"{{{{{other}:{'team' if other == 'group' else 'reader'}}}}}"]]
                + [[self._nasty_value(rng)], self._nasty_value(rng), ["x"] * 1001]
            )
        if rng.random() < 0.1:
            body["uuid"] = "x"
        raw = dump(body) if rng.random() < 0.85 else self._json_body(rng)
        if action == "create":
            return b"POST", base, raw
        if action == "list":
            return b"GET", base, b""
        if action == "get":
            return b"GET", base + b"/" + ident, b""
        if action == "update":
            return b"PUT", base + b"/" + ident, raw
        return b"DELETE", base + b"/" + ident, b""

    def _ident(self, rng: random.Random, kind: str, *, deletable: bool) -> bytes:
        """A user/group/token id for a path. The setup's own users and tokens are never
        deleted or revoked: that would end the run's ability to judge."""
        garbage = [
            b"nope",
            b"0" * 36,
            b"f" * 65,
            b"%00",
            b"..",
            b"-" * 10,
            pct("ünï"),
            b"x" * 5000,
            b"%C2%B2",
            b"",
        ]
        if deletable or rng.random() < 0.5:
            return rng.choice(garbage)
        if kind == "user":
            return b"{{user:" + rng.choice([b"reader", b"writer", b"owner", b"admin"]) + b"}}"
        if kind == "group":
            return b"{{group:team}}"
        return b"{{tokid:" + rng.choice([b"reader", b"writer"]) + b"}}"

    def _tokens(self, rng: random.Random, who: str) -> tuple[bytes, bytes, bytes]:
        action = rng.choice(["create", "create", "list", "revoke"])
        if action == "list":
            query = rng.choice(
                [
                    b"",
                    b"?user_uuid={{user:reader}}",
                    b"?user_uuid=" + self._number(rng),
                    b"?user_uuid=",
                ]
            )
            return b"GET", b"/api/tokens" + query, b""
        if action == "revoke":
            return b"DELETE", b"/api/tokens/" + self._ident(rng, "token", deletable=True), b""
        body: dict[str, Any] = {}
        if rng.random() < 0.9:
            body["user_uuid"] = rng.choice(
                ["{{user:reader}}", "{{user:noscope}}", "nope", "", 5, None, "x" * 5000]
            )
        if rng.random() < 0.9:
            scopes = rng.sample(ALL_SCOPES, rng.randrange(4))
            if rng.random() < 0.2:
                scopes.append(rng.choice(["admin", "", "READ", "read ", "ünï", "*"]))
            body["scopes"] = scopes if rng.random() < 0.85 else self._nasty_value(rng)
        if rng.random() < 0.6:
            body["expires_in"] = rng.choice(
                [*DURATIONS, 1, 0, -1, 1e300, Raw(b"1e400"), Raw(b"NaN"), True, 2**70, 31536001]
            )
        raw = dump(body) if rng.random() < 0.85 else self._json_body(rng)
        return b"POST", b"/api/tokens", raw

    # --- one HTTP/1.1 request ------------------------------------------------------------------

    def _api_request(
        self, rng: random.Random, node: int, who: str, *, mutate: float = 0.15
    ) -> tuple[str, bytes, bytes, bool]:
        """(label, request bytes, body, is HEAD) for one API call by `who`, sometimes with a
        header mutated."""
        label, method, target, headers, body = self._endpoint(rng, who)
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        if body and rng.random() < 0.7:
            headers.append(
                (b"Content-Type", rng.choice([b"application/json", b"text/plain", b"\xff"]))
            )
        if rng.random() < mutate:
            headers = self._mutate_headers(rng, headers)
        framing = "chunked" if body and rng.random() < 0.15 else "length"
        data = wire.request_bytes(method, target, headers, body, framing=framing)
        return f"{label} {method.decode('latin-1')}", data, body, method == b"HEAD"

    def _mutate_headers(
        self, rng: random.Random, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        extra = rng.choice(
            [
                (b"Expect", b"100-continue"),
                (b"Connection", rng.choice([b"close", b"keep-alive", b"upgrade", b"\xff"])),
                (b"X-KVS-TTL", rng.choice(DURATIONS).encode()),
                (b"If-Match", self._etag_garbage(rng)),
                (b"If-None-Match", self._etag_garbage(rng)),
                (b"Last-Event-ID", self._since(rng)),
                (b"Cookie", b"a=" + b"b" * rng.choice([100, 10000])),
                (b"Accept-Encoding", b"gzip, br, zstd, " + b"x" * 100),
                (b"X-Forwarded-For", b"1.2.3.4, ::1, " + b"9" * 5000),
                (b"Content-Type", b"multipart/form-data; boundary=" + b"x" * 80),
                (b"Range", b"bytes=0-1,2-3"),
                (b"Transfer-Encoding", b"identity"),
                (b"Content-Encoding", b"gzip"),
                (b"X-KVS-Cluster-Auth", b"\xc2\xb2.x"),
            ]
        )
        return [*headers, extra]

    # --- kinds ---------------------------------------------------------------------------------

    def _kind_request(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, data, _, head = self._api_request(rng, node, who)
        conn = Conn([("send", data)], [label], [head])
        if label.startswith("watch"):
            conn.expect, conn.read_timeout, conn.stream = None, 1.0, True
        return Interaction(index, "request", node, who, label, [conn])

    def _kind_garbage(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, method, target, headers, body = self._endpoint(rng, who)
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        version = b"HTTP/1.1"
        framing = "length"
        mutations = rng.sample(
            ["method", "target", "version", "header", "framing", "chunked", "noise", "lines"],
            rng.choice([1, 1, 1, 2]),
        )
        tail = b""
        notes = []
        for mutation in mutations:
            notes.append(mutation)
            if mutation == "method":
                method = rng.choice(WEIRD_METHODS)
            elif mutation == "target":
                target = rng.choice(WEIRD_TARGETS)
            elif mutation == "version":
                version = rng.choice(VERSIONS)
            elif mutation == "header":
                headers = self._garbage_headers(rng, headers)
            elif mutation == "framing":
                framing = "none"
                body = body or b'{"a":1}'
                headers = headers + self._bad_framing(rng, body)
            elif mutation == "chunked":
                framing = "none"
                headers = [*headers, (b"Transfer-Encoding", b"chunked")]
                body = self._bad_chunks(rng)
            elif mutation == "lines":
                pass
        if "noise" in mutations:
            data = self._noise(rng)
        else:
            data = wire.request_bytes(
                method, target, headers, body, version=version, framing=framing
            )
            if "lines" in mutations:
                data = rng.choice(
                    [
                        data.replace(b"\r\n", b"\n"),
                        data.replace(b"\r\n", b"\r"),
                        b"\r\n" * rng.choice([1, 3, 1000]) + data,
                        data.replace(b"\r\n\r\n", b"\r\n \r\n", 1),
                    ]
                )
        expect = 1
        if rng.random() < 0.3:  # a well-formed request behind it: is the stream still in step?
            tail = wire.request_bytes(
                b"GET", b"/health", [(b"Host", f"{HOST}:{{{{port:{node}}}}}".encode())]
            )
            expect = 2
        conn = Conn(
            [("send", data + tail)],
            [f"garbage({'+'.join(notes)}) {label}"],
            [method == b"HEAD"],
            expect=expect,
        )
        conn.read_timeout = 2.0
        return Interaction(index, "garbage", node, who, conn.labels[0], [conn])

    def _garbage_headers(
        self, rng: random.Random, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        choice = rng.randrange(12)
        if choice == 0:
            return [*headers, (b"X-Fold", b"a\r\n b")]
        if choice == 1:
            return [*headers, (b"NoColonHere\r\nX", b"1")]
        if choice == 2:
            return [*headers, (b"X-Space ", b"1")]
        if choice == 3:
            return [*headers, (b"X-Nul", b"a\x00b")]
        if choice == 4:
            return [*headers, (b"X-Big", b"v" * rng.choice([8000, 20000, 100_000]))]
        if choice == 5:
            n = rng.choice([100, 1000, 10000])
            return headers + [(b"X-H%d" % i, b"v") for i in range(n)]
        if choice == 6:
            return [*headers, (b"", b"empty-name")]
        if choice == 7:
            return [*headers, (b"\xff\xfe", b"x"), (b"a b", b"c")]
        if choice == 8:
            return [(b"Host", b"x"), *headers, (b"Host", b"y")]
        if choice == 9:
            return [h for h in headers if h[0] != b"Host"]
        if choice == 10:
            return [*headers, (b"X-Bin", bytes(range(1, 32)))]
        return [*headers, (b"X-Unicode", "ünï😀".encode())]

    def _bad_framing(self, rng: random.Random, body: bytes) -> list[tuple[bytes, bytes]]:
        n = str(len(body)).encode()
        return rng.choice(
            [
                [(b"Content-Length", n), (b"Transfer-Encoding", b"chunked")],
                [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
                [(b"Transfer-Encoding", b"chunked, identity")],
                [(b"Transfer-Encoding", b"gzip")],
                [(b"Transfer-Encoding", b"xchunked")],
                [(b"Content-Length", b"-1")],
                [(b"Content-Length", b"+" + n)],
                [(b"Content-Length", n + b", " + n)],
                [(b"Content-Length", n), (b"Content-Length", b"1")],
                [(b"Content-Length", b"0x10")],
                [(b"Content-Length", b"9" * rng.choice([20, 5000]))],
                [(b"Content-Length", b"\xc2\xb2")],
                [(b"Content-Length", b" " + n)],
                [(b"Content-Length", b"1")],  # shorter than the body: the rest is "a request"
                [],  # a body and no framing at all
            ]
        )

    def _bad_chunks(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                b"zz\r\nab\r\n0\r\n\r\n",
                b"-1\r\nab\r\n0\r\n\r\n",
                b"ffffffffffffffffffff\r\nab\r\n",
                b"1;ext=" + b"x" * 10000 + b"\r\na\r\n0\r\n\r\n",
                b"2\r\nabc\r\n0\r\n\r\n",
                b"2\r\nab",
                b"0\r\nX-Trailer: \xff\r\nbad trailer\r\n\r\n",
                b"1\r\na\r\n" * 20000 + b"0\r\n\r\n",
                b"\r\n\r\n",
                b"2 \r\nab\r\n0\r\n\r\n",
                b"0x2\r\nab\r\n0\r\n\r\n",
                b"\xc2\xb2\r\nab\r\n0\r\n\r\n",
            ]
        )

    def _noise(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 16, 4096]))),
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\x00" * 20,
                b"SSH-2.0-OpenSSH_9.0\r\n",
                b"\x00" * 1000,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r",  # one byte short of a preface
                b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3,  # never finished
            ]
        )

    def _kind_model(self, rng: random.Random, index: int, node: int) -> Interaction:
        slots_here = [s for s in range(MODEL_SLOTS) if s % self.nodes == node]
        action = rng.choices(["put", "delete", "cas", "batch", "read"], [6, 2, 2, 2, 2])[0]
        if action == "batch":
            slots = sorted(rng.sample(slots_here, min(len(slots_here), rng.randrange(1, 4))))
        else:
            slots = [rng.choice(slots_here)]
        values: list[Any] = []
        for slot in slots:
            if action == "delete" or (action == "batch" and rng.random() < 0.3):
                values.append(None)
            else:
                values.append({"slot": slot, "i": index, "pad": "p" * rng.choice([0, 10, 3000])})
        op = ModelOp(action, slots, values)
        return Interaction(index, "model", node, "writer", f"model {action} {slots}", [], op)

    def _kind_half_close(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, method, target, headers, body = self._endpoint(rng, who)
        if rng.random() < 0.3:
            method, target = rng.choice([(b"POST", b"/health"), (b"GET", b"/health")])
            label = "health"
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        declared = rng.choice([1, 100, 4096, 10**6])
        sent = rng.choice([0, 1, 2, 50])
        head = wire.request_bytes(
            method, target, [*headers, (b"Content-Length", str(declared).encode())], framing="none"
        )
        partial = (body or b'{"a":' + b"1" * 100)[: min(sent, declared - 1)]
        cut_in_headers = rng.random() < 0.2
        data = head[: rng.randrange(1, len(head))] if cut_in_headers else head + partial
        conn = Conn([("send", data), ("eof",)], [f"half-close {label} {method.decode('latin-1')}"])
        conn.expect, conn.read_timeout = None, 4.0
        return Interaction(index, "half_close", node, who, conn.labels[0], [conn])

    def _kind_stall(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["anon", "writer", "root"])
        key = self._junk_key(rng)
        in_body = rng.random() < 0.6
        head = wire.request_bytes(
            b"PUT",
            b"/kv/" + pct(key),
            [(b"Host", b"fuzz"), *self._auth_headers(rng, who), (b"Content-Length", b"64")],
            framing="none",
        )
        timeout = self.deadlines.body if in_body else self.deadlines.header
        if in_body:
            steps: list[Step] = [("send", head + b'{"v":'), ("mark",)]
            where = "body"
        else:
            cut = rng.randrange(1, len(head) - 2)
            steps = [("mark",), ("send", head[:cut])]
            where = "headers"
        conn = Conn(steps, [f"stall mid-{where} PUT /kv/{{junk}}"], expect=None)
        if timeout is not None:
            conn.deadline = timeout
            steps.append(("sleep", timeout + GRACE + 0.5))
        else:
            steps.append(("sleep", rng.uniform(0.5, 3.0)))
        steps.append(rng.choice([("close",), ("rst",)]))
        return Interaction(index, "stall", node, who, conn.labels[0], [conn])

    def _kind_trickle(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["anon", "writer", "root", "reader"])
        in_body = rng.random() < 0.6
        body = dump({"v": "t" * 200})
        head = wire.request_bytes(
            b"PUT",
            b"/kv/" + pct(self._junk_key(rng)),
            [
                *self._host(rng, node)[:1],
                *self._auth_headers(rng, who),
                (b"Content-Length", str(len(body)).encode()),
            ],
            framing="none",
        )
        interval = rng.choice([0.2, 0.5, 1.0])
        timeout = self.deadlines.body if in_body else self.deadlines.header
        budget = (timeout + GRACE + 0.5) if timeout is not None else rng.uniform(1.0, 4.0)
        count = int(budget / interval) + 1
        if in_body:
            steps: list[Step] = [("send", head), ("mark",), ("trickle", body[:count], interval)]
        else:
            steps = [("mark",), ("trickle", head[:count], interval)]
        conn = Conn(
            steps, [f"trickle {'body' if in_body else 'headers'} {interval}s/byte"], expect=None
        )
        conn.read_timeout = 1.0
        if timeout is not None and count < (len(body) if in_body else len(head)):
            conn.deadline = timeout
        return Interaction(index, "trickle", node, who, conn.labels[0], [conn])

    def _kind_pipeline(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        count = rng.choice([2, 5, 20, 100])
        data = b""
        labels, heads = [], []
        for _ in range(count):
            label, one, _, head = self._api_request(rng, node, who, mutate=0.05)
            if label.startswith(("watch", "backup")):
                one = wire.request_bytes(b"GET", b"/health", [(b"Host", b"x")])
                label, head = "health GET", False
            if len(data) + len(one) > PIPELINE_BYTES and labels:
                break
            data += one
            labels.append(label)
            heads.append(head)
        conn = Conn([("send", data)], labels, heads, expect=len(labels), read_timeout=5.0)
        return Interaction(index, "pipeline", node, who, f"pipeline x{count}", [conn])

    def _kind_rst(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, data, _, _ = self._api_request(rng, node, who)
        cut = rng.choice([len(data), len(data) // 2, 1])
        steps: list[Step] = [("send", data[:cut])]
        if rng.random() < 0.5:
            steps.append(("sleep", rng.choice([0.0, 0.01, 0.1])))
        steps.append(("rst",))
        conn = Conn(steps, [f"rst {label}"], expect=None)
        return Interaction(index, "rst", node, who, conn.labels[0], [conn])

    def _kind_flood(self, rng: random.Random, index: int, node: int) -> Interaction:
        count = rng.choice([20, 50, 120])
        conns = []
        for _ in range(count):
            shape = rng.randrange(5)
            if shape == 0:
                steps: list[Step] = [
                    ("sleep", rng.uniform(0, 1)),
                    rng.choice([("close",), ("rst",)]),
                ]
            elif shape == 1:
                steps = [("send", b"GET /hea"), ("sleep", rng.uniform(0, 1)), ("rst",)]
            elif shape == 2:
                steps = [
                    ("send", b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"),
                    ("eof",),
                ]
            elif shape == 3:
                steps = [("send", wire.request_bytes(b"GET", b"/health", [(b"Host", b"x")]))]
            else:
                steps = [("send", wire.PREFACE), ("sleep", rng.uniform(0, 0.5)), ("close",)]
            conn = Conn(steps, [f"flood shape {shape}"], expect=None if shape != 3 else 1)
            conn.lenient = shape != 3
            conn.read_timeout = 2.0
            conns.append(conn)
        return Interaction(index, "flood", node, "anon", f"flood x{count}", conns)

    def _kind_websocket(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        target = rng.choice(
            [
                b"/",
                b"/ws",
                b"/kv/_watch",
                b"/kv/a",
                b"/health",
                b"/api/users",
                b"/nope/" + b"x" * 100,
            ]
        )
        headers = self._host(rng, node) + self._auth_headers(rng, who)
        headers += [
            (b"Upgrade", rng.choice([b"websocket", b"WebSocket", b"websocket, h2c"])),
            (b"Connection", b"Upgrade"),
        ]
        if rng.random() < 0.8:
            headers.append(
                (b"Sec-WebSocket-Key", rng.choice([b"dGhlIHNhbXBsZSBub25jZQ==", b"x", b""]))
            )
        if rng.random() < 0.8:
            headers.append((b"Sec-WebSocket-Version", rng.choice([b"13", b"8", b"99", b"x"])))
        data = wire.request_bytes(
            rng.choice([b"GET"] * 5 + [b"POST"]), target, headers, framing="none"
        )
        if rng.random() < 0.4:  # a masked text frame right behind it
            data += b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        conn = Conn(
            [("send", data)], [f"websocket {target[:40].decode('latin-1')}"], upgrade="websocket"
        )
        conn.read_timeout = 2.0
        return Interaction(index, "websocket", node, who, conn.labels[0], [conn])

    def _kind_h2_prior(self, rng: random.Random, index: int, node: int) -> Interaction:
        frames = [wire.PREFACE]
        if rng.random() < 0.9:
            frames.append(
                wire.settings(
                    [(rng.choice([1, 2, 3, 4, 5, 6, 99]), rng.choice([0, 1, 2**31, 2**32 - 1]))]
                )
            )
        for _ in range(rng.choice([1, 1, 2, 5])):
            frames.append(self._h2_frame(rng, node))
        data = b"".join(frames)
        label = "h2 prior-knowledge"
        conn = Conn([("send", data)], [label], expect=None, h2=True, read_timeout=3.0)
        return Interaction(index, "h2_prior", node, "anon", label, [conn])

    def _h2_frame(self, rng: random.Random, node: int) -> bytes:
        stream = rng.choice([1, 1, 3, 2, 0, 2**31 - 1])
        choice = rng.randrange(12)
        path = rng.choice(
            [b"/health", b"/kv/a", b"/\xff", b"", b"*", b"/kv/" + b"a" * 5000, b"http://x/"]
        )
        method = rng.choice([b"GET", b"POST", b"CONNECT", b"G\xc3\xa9T", b"", b"get"])
        fields = [
            (b":method", method),
            (b":scheme", rng.choice([b"http", b"https", b"\xff"])),
            (b":path", path),
        ]
        fields.append((b":authority", f"{HOST}:{{{{port:{node}}}}}".encode()))
        if rng.random() < 0.3:
            fields = [f for f in fields if f[0] != rng.choice([b":path", b":method", b":scheme"])]
        if rng.random() < 0.2:
            fields.append(
                rng.choice(
                    [
                        (b"Upper", b"x"),
                        (b"connection", b"close"),
                        (b"te", b"gzip"),
                        (b":bogus", b"1"),
                        (b"x", b"\x00"),
                    ]
                )
            )
        if choice < 6:
            flags = rng.choice(
                [wire.END_HEADERS | wire.END_STREAM, wire.END_HEADERS, 0, wire.PADDED]
            )
            block = wire.header_block(fields)
            if flags & wire.PADDED:
                block = b"\xff" + block
            return wire.frame(wire.HEADERS, flags, stream, block)
        if choice == 6:
            return wire.frame(wire.DATA, wire.END_STREAM, stream, b"x" * rng.choice([0, 10, 20000]))
        if choice == 7:
            return wire.frame(
                wire.WINDOW_UPDATE, 0, stream, struct.pack(">I", rng.choice([0, 1, 2**31 - 1]))
            )
        if choice == 8:
            return wire.frame(wire.PRIORITY, 0, stream, struct.pack(">IB", stream, 0))
        if choice == 9:
            return wire.frame(
                rng.randrange(256), rng.randrange(256), stream, bytes(rng.randrange(20))
            )
        if choice == 10:
            return wire.frame(wire.CONTINUATION, 0, stream, b"\x00" * 100) * rng.choice([1, 50])
        return wire.frame(wire.HEADERS, 0, 1, b"", length=rng.choice([2**14 + 1, 2**24 - 1]))

    def _kind_h2c_upgrade(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = self._who(rng)
        label, method, target, headers, body = self._endpoint(rng, who)
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        headers += [
            (b"Connection", b"Upgrade, HTTP2-Settings"),
            (b"Upgrade", rng.choice([b"h2c", b"h2c", b"h2", b"h2c, websocket"])),
        ]
        if rng.random() < 0.8:
            headers.append(
                (b"HTTP2-Settings", rng.choice([b"AAMAAABkAAQAAP__", b"", b"!!!", b"A" * 1000]))
            )
        data = wire.request_bytes(method, target, headers, body)
        if rng.random() < 0.3:
            data += wire.PREFACE + wire.settings()
        conn = Conn([("send", data)], [f"h2c-upgrade {label}"], [method == b"HEAD"], upgrade="h2c")
        conn.read_timeout = 2.0
        if label.startswith("watch"):
            conn.expect, conn.stream = None, True
        return Interaction(index, "h2c_upgrade", node, who, conn.labels[0], [conn])

    def _kind_big_body(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["writer", "writer", "root", "anon", "bad", "reader"])
        count = rng.choice([1, 2, 3, 3, 4])
        conns = []
        shape = rng.choice(
            ["batch_ok", "batch_oversize_op", "batch_bad_tail", "kv_put", "array", "admin"]
        )
        for n in range(count):
            size_mib = rng.choice([5, 16, 29, 31, 40])
            key = f"{self.plan.junk_prefix}/big{n}"
            if shape == "batch_ok":
                op = dump({"op": "put", "key": key, "data": "a" * 29_000}) + b","
                repeat = min(999, size_mib * 2**20 // len(op))
                big = Big(b'{"ops":[', op, repeat, dump({"op": "delete", "key": key}) + b"]}")
                target = b"/kv/_batch"
            elif shape == "batch_oversize_op":
                op = dump({"op": "put", "key": key, "data": "a" * (1 << 20) + "a"}) + b","
                big = Big(b'{"ops":[', op, size_mib, b'{"op":"delete","key":"x"}]}')
                target = b"/kv/_batch"
            elif shape == "batch_bad_tail":
                big = Big(
                    b'{"ops":[{"op":"put","key":"x","data":"', b"a" * 4096, size_mib * 256, b""
                )
                target = b"/kv/_batch"
            elif shape == "array":
                big = Big(b"[", b"1," * 2048, size_mib * 256, b"1]")
                target = rng.choice(
                    [b"/kv/_batch", b"/api/users", b"/kv/" + pct(key) + b"/metadata"]
                )
            elif shape == "admin":
                big = Big(b'{"nickname":"', b"n" * 4096, size_mib * 256, b'"}')
                target = rng.choice([b"/api/users", b"/api/tokens", b"/auth/cluster-bootstrap"])
            else:
                big = Big(b'{"v":"', b"v" * 4096, size_mib * 256, b'"}')
                target = b"/kv/" + pct(key)
            method = b"PUT" if target.startswith(b"/kv/") and target != b"/kv/_batch" else b"POST"
            headers = [
                (b"Host", f"{HOST}:{{{{port:{node}}}}}".encode()),
                *self._auth_headers(rng, who),
            ]
            chunked = rng.random() < 0.25
            if chunked:
                # Each piece of the Big becomes one chunk (sent as its own chunk framing).
                head = wire.request_bytes(
                    method, target, [*headers, (b"Transfer-Encoding", b"chunked")], framing="none"
                )
                fill = b"%x\r\n" % len(big.fill) + big.fill + b"\r\n"
                start = b"%x\r\n" % len(big.head) + big.head + b"\r\n" if big.head else b""
                end = (
                    b"%x\r\n" % len(big.tail) + big.tail + b"\r\n" if big.tail else b""
                ) + b"0\r\n\r\n"
                payload = Big(head + start, fill, big.count, end)
            else:
                head = wire.request_bytes(
                    method,
                    target,
                    [*headers, (b"Content-Length", str(len(big)).encode())],
                    framing="none",
                )
                payload = Big(head + big.head, big.fill, big.count, big.tail)
            conn = Conn(
                [("big", payload)],
                [f"big {shape} {size_mib} MiB {method.decode()} {target[:30].decode('latin-1')}"],
            )
            conn.read_timeout = 15.0
            conns.append(conn)
        return Interaction(index, "big_body", node, who, f"big {shape} x{count}", conns)

    def _kind_slow_reader(self, rng: random.Random, index: int, node: int) -> Interaction:
        who = rng.choice(["root", "reader", "writer"])
        one = wire.request_bytes(
            b"GET",
            rng.choice(
                [b"/kv/_tree?limit=5000", b"/metrics", b"/kv_changes?limit=1000", b"/api/users"]
            ),
            [(b"Host", b"x"), *self._auth_headers(rng, who)],
        )
        count = rng.choice([50, 200])
        conn = Conn(
            [("send", one * count), ("sleep", rng.uniform(1.0, 3.0)), ("close",)],
            ["slow reader"],
            expect=None,
        )
        return Interaction(index, "slow_reader", node, who, f"slow reader x{count}", [conn])


def _fake_jwt(rng: random.Random) -> bytes:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = rng.choice(
        [b'{"alg":"none","typ":"JWT"}', b'{"alg":"HS512"}', b'{"alg":"RS256"}', b"{}", b"\xff"]
    )
    payload = rng.choice(
        [
            b'{"sub":"root","exp":99999999999}',
            b"{}",
            b'{"exp":"' + b"9" * 5000 + b'"}',
            b"[]",
            b"\x00",
        ]
    )
    return b64(header) + b"." + b64(payload) + b"." + rng.choice([b"", b"sig", b64(b"\x00" * 32)])


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

MARKER_READ_TOKENS = tuple(tok(name) for name in MARKER_READERS)
RAW_KEEP = 1 << 20  # bytes of each connection's received data kept for judging


@dataclass
class ConnResult:
    started: float
    answers: list[wire.Answer] = field(default_factory=list)
    pending: wire.Answer | None = None  # a stream's head (a watch)
    upgraded: bytes | None = None
    garbage: bytes = b""
    raw: bytearray = field(default_factory=bytearray)
    received: int = 0
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
                res.received += len(data)
                if len(res.raw) < RAW_KEEP:
                    res.raw += data[: RAW_KEEP - len(res.raw)]
                if marker in tail + data:
                    res.marker_seen = True
                tail = data[-len(marker) :]
                if not conn.h2:
                    reader.feed(data)
                    if conn.expect is not None and len(reader.answers) >= conn.expect:
                        answered.set()
                    if reader.upgraded is not None or reader.garbage:
                        answered.set() if conn.expect is not None else None
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


@dataclass
class Finding:
    kind: str
    signature: str
    index: int
    node: int
    detail: str


@dataclass
class FindingGroup:
    kind: str
    signature: str
    count: int = 0
    indices: list[int] = field(default_factory=list)
    nodes: set[int] = field(default_factory=set)
    detail: str = ""


class Findings:
    """Every failure seen, grouped by (kind, signature); thread-safe (monitor threads add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.groups: dict[tuple[str, str], FindingGroup] = {}

    def add(self, finding: Finding) -> None:
        with self._lock:
            key = (finding.kind, finding.signature)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = FindingGroup(finding.kind, finding.signature)
                group.detail = finding.detail
            group.count += 1
            if len(group.indices) < 12 and finding.index >= 0:
                group.indices.append(finding.index)
            group.nodes.add(finding.node)

    def __len__(self) -> int:
        return len(self.groups)

    def sorted(self) -> list[FindingGroup]:
        with self._lock:
            return sorted(self.groups.values(), key=lambda g: (g.kind, g.signature))


def _shape(text: str) -> str:
    """A message with its numbers and ids blanked, so one bug is one signature."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    return re.sub(r"\d+", "N", text)[:200]


def judge(inter: Interaction, conn: Conn, res: ConnResult, stats: Stats) -> list[Finding]:
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
                shown = _shape(body[:60]) if body.strip() else "(empty body)"
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
    if res.marker_seen and not conn_may_see_marker(conn):
        fail("marker-leak", _route(label), f"{inter.who}: {label}: {bytes(res.raw[:400])!r}")
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


def conn_may_see_marker(conn: Conn) -> bool:
    for step in conn.steps:
        if step[0] in ("send", "trickle") and any(t in step[1] for t in MARKER_READ_TOKENS):
            return True
    return False


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
        return finding("http2-not-refused", _shape(sig))
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


# --- the monitor ---------------------------------------------------------------------------------


class Tracker:
    """Which interactions ran on which node when (wall-clock time, to match the timestamps
    of a node's log lines), for naming the suspects of a failure; optionally a log file."""

    def __init__(self, log: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.active: dict[int, tuple[int, str, float]] = {}
        self.recent: collections.deque[tuple[int, int, str, float, float]] = collections.deque(
            maxlen=20000
        )
        self._log = open(log, "a", encoding="utf-8") if log is not None else None  # noqa: SIM115

    def begin(self, inter: Interaction) -> None:
        with self._lock:
            self.active[inter.index] = (inter.node, inter.kind, time.time())

    def end(self, inter: Interaction) -> None:
        with self._lock:
            node, kind, started = self.active.pop(inter.index, (inter.node, inter.kind, 0.0))
            ended = time.time()
            self.recent.append((inter.index, node, kind, started, ended))
            if self._log is not None:
                stamp = time.strftime("%H:%M:%S", time.localtime(started))
                self._log.write(
                    f"{stamp}.{int(started * 1000) % 1000:03d} +{ended - started:.3f}s "
                    f"#{inter.index} {kind} node{node + 1} {inter.who}: {inter.what}\n"
                )

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def suspects(self, node: int, start: float, end: float | None = None) -> list[str]:
        """Interactions on `node` that were running at some moment in [start, end]."""
        end = time.time() if end is None else end
        with self._lock:
            found = [
                (i, k) for i, (n, k, began) in self.active.items() if n == node and began <= end
            ]
            found += [
                (i, k)
                for i, n, k, began, ended in self.recent
                if n == node and began <= end and ended >= start
            ]
        return [f"{i}:{k}" for i, k in dict.fromkeys(sorted(found))][:30]


def log_time(block: str) -> float | None:
    """The wall-clock time of the log line that introduced a traceback."""
    match = LOG_LINE.search(block)
    if match is None:
        return None
    try:
        stamp = time.mktime(time.strptime(match.group(0), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None
    millis = re.match(r",(\d{3})", block[match.end() :])
    return stamp + (int(millis.group(1)) / 1000 if millis else 0.0)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)


def traceback_blocks(text: str) -> list[str]:
    """Each traceback in a node's stderr, with the log line that introduced it."""
    blocks = []
    for match in re.finditer(r"Traceback \(most recent call last\)", text):
        start = text.rfind("\n", 0, max(0, text.rfind("\n", 0, match.start()))) + 1
        following = LOG_LINE.search(text, match.end())
        end = following.start() if following else len(text)
        blocks.append(text[start:end].rstrip())
    merged: list[str] = []
    for block in blocks:  # chained tracebacks ("During handling ...") are one block
        if merged and block in merged[-1]:
            continue
        merged.append(block)
    return merged


def traceback_signature(block: str) -> str:
    """The exception line and the innermost frames outside trio's internals: one bug, one
    signature, whichever request hit it."""
    lines = [ln.strip(" |+-") for ln in block.splitlines() if ln.strip(" |+-")]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Group|Exit)\b.*", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else "?")
    frames = []
    for line in lines:
        match = re.match(r'File "([^"]+)", line \d+, in (\S+)', line)
        if match and "/trio/" not in match.group(1):
            frames.append(f"{Path(match.group(1)).stem}.{match.group(2)}")
    where = " < ".join(reversed(frames[-3:]))
    return _shape(f"{last} @ {where}")


@dataclass
class NodeWatch:
    idle_rss_kb: int = 0
    max_rss_kb: int = 0
    max_health_s: float = 0.0
    health_checks: int = 0
    deaths: int = 0
    stderr_offset: int = 0
    rss_reported: bool = False


class Monitor:
    """One thread per node: alive, /health within `health_limit`, RSS under `rss_factor` x
    idle, new tracebacks on stderr. A dead node is restarted when `restart` is set."""

    def __init__(
        self,
        nodes: list[NodeProcess],
        findings: Findings,
        tracker: Tracker,
        *,
        restart: bool,
        health_limit: float,
        rss_factor: float,
        interval: float = 0.5,
    ) -> None:
        self.nodes = nodes
        self.findings = findings
        self.tracker = tracker
        self.restart = restart
        self.health_limit = health_limit
        self.rss_factor = rss_factor
        self.interval = interval
        self.watch = [NodeWatch() for _ in nodes]
        self.stopping = threading.Event()
        self.down = [threading.Event() for _ in nodes]  # set while a node is dead/restarting
        self._threads: list[threading.Thread] = []

    def measure_idle(self) -> None:
        for node, watch in zip(self.nodes, self.watch, strict=True):
            samples = []
            for _ in range(3):
                samples.append(node.rss_kb() or 0)
                time.sleep(0.1)
            watch.idle_rss_kb = max(samples)
            watch.max_rss_kb = watch.idle_rss_kb
            watch.stderr_offset = len(node.stderr_bytes())

    def start(self) -> None:
        for i in range(len(self.nodes)):
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for i in range(len(self.nodes)):
            self._scan_stderr(i)

    def _loop(self, i: int) -> None:
        while not self.stopping.wait(self.interval):
            self.tick(i)

    def tick(self, i: int) -> None:
        node, watch = self.nodes[i], self.watch[i]
        self._scan_stderr(i)
        if not node.alive():
            watch.deaths += 1
            code = node.returncode()
            tail = node.stderr_tail(25)
            blocks = traceback_blocks(node.stderr_bytes().decode("utf-8", "replace"))
            why = traceback_signature(blocks[-1]) if blocks else f"exit status {code}"
            suspects = self.tracker.suspects(i, time.time() - 1.5)
            self.findings.add(
                Finding(
                    "node-exit",
                    why,
                    -1,
                    i,
                    f"{node.name} exited with status {code}; in flight on it: {suspects}\n{tail}",
                )
            )
            if not self.restart:
                self.down[i].set()
                self.stopping.wait()  # nothing more to watch on this node
                return
            self.down[i].set()
            try:
                node.start()
                node.wait_ready()
                watch.stderr_offset = len(node.stderr_bytes())
            except Exception as exc:  # noqa: BLE001 - reported, and the node stays down
                self.findings.add(
                    Finding("node-restart-failed", type(exc).__name__, -1, i, str(exc))
                )
                self.stopping.wait()
                return
            finally:
                self.down[i].clear() if node.alive() else None
            return
        rss = node.rss_kb()
        if rss:
            watch.max_rss_kb = max(watch.max_rss_kb, rss)
            if rss > self.rss_factor * watch.idle_rss_kb and not watch.rss_reported:
                watch.rss_reported = True
                suspects = self.tracker.suspects(i, time.time() - 1.0)
                self.findings.add(
                    Finding(
                        "rss",
                        f"RSS over {self.rss_factor:g}x idle",
                        -1,
                        i,
                        f"{node.name}: {rss // 1024} MiB vs idle {watch.idle_rss_kb // 1024} MiB; "
                        f"in flight: {suspects}",
                    )
                )
        started = time.monotonic()
        wall = time.time()
        try:
            status, _ = http_get(node.port, "/health", timeout=max(5.0, self.health_limit * 3))
            error = "" if status == 200 else f"status {status}"
        except (OSError, ConnectionError) as exc:
            error = type(exc).__name__
        took = time.monotonic() - started
        if error:  # a node on its way out refuses first: that is its exit, judged next tick
            for _ in range(20):
                if not node.alive():
                    return
                time.sleep(0.1)
        if not node.alive():
            return
        watch.health_checks += 1
        watch.max_health_s = max(watch.max_health_s, took)
        if error or took > self.health_limit:
            suspects = self.tracker.suspects(i, wall - 0.5, wall + took)
            what = f"/health {error}" if error else f"/health slower than {self.health_limit:g} s"
            self.findings.add(
                Finding(
                    "health",
                    what,
                    -1,
                    i,
                    f"{node.name}: {took:.2f} s {error}; in flight: {suspects}",
                )
            )

    def _scan_stderr(self, i: int) -> None:
        node, watch = self.nodes[i], self.watch[i]
        data = node.stderr_bytes()
        if len(data) <= watch.stderr_offset:
            return
        # Only whole lines: a traceback being written is read on the next tick.
        end = data.rfind(b"\n", watch.stderr_offset) + 1
        if end <= watch.stderr_offset:
            return
        new = data[watch.stderr_offset : end].decode("utf-8", "replace")
        if "Traceback" not in new and "Exception Group" not in new:
            watch.stderr_offset = end
            return
        # Wait for a traceback to be complete (a following log line or a quiet moment).
        blocks = traceback_blocks(new)
        for block in blocks:
            when = log_time(block)
            suspects = (
                self.tracker.suspects(i, when - 0.3, when + 0.05)
                if when is not None
                else self.tracker.suspects(i, time.time() - 2.0)
            )
            self.findings.add(
                Finding(
                    "traceback",
                    traceback_signature(block),
                    -1,
                    i,
                    f"{node.name}; in flight: {suspects}\n" + "\n".join(block.splitlines()[-14:]),
                )
            )
        watch.stderr_offset = end


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
                return
            for finding in judge(inter, conn, res, self.stats):
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
            runner.check_model() if all(n.alive() for n in cluster.nodes) or True else None
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
    )
    return 0 if run(options).ok else 1


def _indices(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def describe(inter: Interaction) -> str:
    """An interaction as text: what `--show` prints, for a reproduction by hand."""
    lines = [f"#{inter.index} {inter.kind} node{inter.node + 1} who={inter.who}: {inter.what}"]
    if inter.model is not None:
        lines.append(f"  model op {inter.model}")
    for n, conn in enumerate(inter.conns[:5]):
        lines.append(f"  conn {n}: expect={conn.expect} deadline={conn.deadline}")
        for step in conn.steps:
            if step[0] in ("send", "trickle"):
                data = step[1]
                shown = (
                    data
                    if len(data) <= 600
                    else data[:400] + b"...(%d bytes)..." % len(data) + data[-100:]
                )
                lines.append(
                    f"    {step[0]} {shown!r}"
                    + (f" every {step[2]} s" if step[0] == "trickle" else "")
                )
            elif step[0] == "big":
                big = step[1]
                lines.append(
                    f"    big {len(big)} bytes: {big.head[:300]!r} + {big.fill[:60]!r} x {big.count} + {big.tail[:60]!r}"
                )
            else:
                lines.append(f"    {step}")
    if len(inter.conns) > 5:
        lines.append(f"  ... {len(inter.conns) - 5} more connections")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
