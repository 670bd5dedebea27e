"""Hostile HTTP interactions for a KVS node, generated from a seed (issue 12).

`Generator.interaction(index)` describes interaction `index` completely: which node, who
calls (anonymous, a bad token, a token of some scope), and the bytes and pauses of each
connection it opens. Every choice comes from one `random.Random(seed)` (it hands out one
sub-seed per index, so `interaction(n)` needs no run of the ones before), and nothing
depends on what a node answered: a seed replays the same inputs. Values only known at run
time (tokens, user ids, ports) are placeholders such as `{{tok:reader}}`, filled in when the
bytes are sent (kvs.testing.fuzz_http).

Rule: nothing here opens a socket, reads a clock or looks at a node.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kvs.testing import http_wire as wire
from kvs.testing.procs import HOST

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
    may_see_marker: bool = False  # sent a token of a caller allowed to read private values


@dataclass
class ModelOp:
    """A write to keys only the fuzzer writes (one node per slot, one op at a time)."""

    action: str  # put, delete, cas, batch, read
    slots: list[int]
    values: list[Any]  # per slot: the JSON value (put), None (delete)


@dataclass
class Interaction:
    index: int
    kind: str
    node: int
    who: str
    what: str
    conns: list[Conn]
    model: ModelOp | None = None


# --- building blocks of hostile input ------------------------------------------------------------

# fmt: off  (tables of hostile values, kept dense)
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
SAFE_METHODS = [b"GET", b"HEAD", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"]
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
# fmt: on


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


MARKER_READ_TOKENS = tuple(tok(name) for name in MARKER_READERS)


# --- the generator -------------------------------------------------------------------------------

# How often each kind of interaction, and each endpoint of a plain request, is drawn.
# fmt: off
KIND_WEIGHTS: dict[str, int] = {
    "request": 40, "garbage": 14, "model": 12, "half_close": 5, "stall": 4, "trickle": 3,
    "pipeline": 5, "rst": 4, "flood": 2, "websocket": 3, "h2_prior": 4, "h2c_upgrade": 2,
    "big_body": 1, "slow_reader": 1,
}
ENDPOINT_WEIGHTS: dict[str, int] = {
    "kv_get": 10, "kv_put": 9, "kv_delete": 4, "ls": 5, "tree": 5, "batch": 7, "watch": 3,
    "metadata_get": 3, "metadata_put": 4, "kv_changes": 3, "history": 4, "users": 4,
    "groups": 3, "tokens": 4, "audit": 2, "backup": 1, "cluster": 4, "cluster_info": 3,
    "bootstrap": 1, "health": 2, "unknown": 3,
}
# fmt: on
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
        resolve: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.seed = seed
        # Fills in placeholders ({{tok:reader}}...) before any length is computed over them
        # (Content-Length, chunk sizes, HPACK): the runner passes its context's; without
        # one (--show, unit tests) the placeholders stay as they are.
        self.resolve: Callable[[bytes], bytes] = resolve or (lambda data: data)
        self._may_see = False
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
        self._may_see = False
        inter = build(rng, index, node)
        for conn in inter.conns:
            conn.may_see_marker = self._may_see
        return inter

    def _request_bytes(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        **how: Any,
    ) -> bytes:
        """wire.request_bytes over resolved parts; notes a token that may read the marker."""
        r = self.resolve
        self._note_tokens(target, body, *(v for _, v in headers))
        resolved = [(r(n), r(v)) for n, v in headers]
        return wire.request_bytes(r(method), r(target), resolved, r(body), **how)

    def _header_block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        self._note_tokens(*(v for _, v in fields))
        return wire.header_block([(self.resolve(n), self.resolve(v)) for n, v in fields])

    def _note_tokens(self, *parts: bytes) -> None:
        if any(t in part for part in parts for t in MARKER_READ_TOKENS):
            self._may_see = True

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
        choice = rng.choices(list(ENDPOINT_WEIGHTS), list(ENDPOINT_WEIGHTS.values()))[0]
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
        if rng.random() < 0.08:  # the wrong method on a real route (never a write by a
            # caller who may read the marker: it could change who may read a private key)
            method = rng.choice(SAFE_METHODS if who in MARKER_READERS else METHODS)
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
        data = self._request_bytes(method, target, headers, body, framing=framing)
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
                body = self.resolve(body or b'{"a":1}')  # the lengths are of what is sent
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
            data = self._request_bytes(
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
            tail = self._request_bytes(
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
        head = self._request_bytes(
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
        head = self._request_bytes(
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
        head = self._request_bytes(
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
                one = self._request_bytes(b"GET", b"/health", [(b"Host", b"x")])
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
                steps = [("send", self._request_bytes(b"GET", b"/health", [(b"Host", b"x")]))]
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
        data = self._request_bytes(
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
        well_framed = rng.random() < 0.6
        if well_framed:
            # Well-framed: empty SETTINGS, then one HEADERS frame that ends headers and
            # stream, so the server gets as far as reading its fields (one of them odd).
            frames.append(wire.settings())
            block = self._header_block(self._h2_request_fields(rng, node))
            flags = wire.END_HEADERS | wire.END_STREAM
            frames.append(wire.frame(wire.HEADERS, flags, 1, block))
        elif rng.random() < 0.9:
            setting = (rng.choice([1, 2, 3, 4, 5, 6, 99]), rng.choice([0, 1, 2**31, 2**32 - 1]))
            frames.append(wire.settings([setting]))
        # Frames behind a well-framed request are few: a broken one is refused before the
        # request's fields are even looked at.
        for _ in range(rng.choice([0, 0, 0, 1, 2] if well_framed else [1, 1, 2, 5])):
            frames.append(self._h2_frame(rng, node))
        data = b"".join(frames)
        label = "h2 prior-knowledge"
        conn = Conn([("send", data)], [label], expect=None, h2=True, read_timeout=3.0)
        return Interaction(index, "h2_prior", node, "anon", label, [conn])

    def _h2_request_fields(self, rng: random.Random, node: int) -> list[tuple[bytes, bytes]]:
        """A valid GET /health with exactly one thing wrong (or nothing)."""
        base = {
            b":method": b"GET",
            b":scheme": b"http",
            b":path": b"/health",
            b":authority": f"{HOST}:{{{{port:{node}}}}}".encode(),
        }
        odd = rng.choice(
            [
                (b":path", b"/\xff"),
                (b":path", b"/kv/\xc3\xa9"),
                (b":method", "GÉT".encode()),
                (b":method", b"CONNECT"),  # and no :path, below
                (b":scheme", b"\xff"),
                (b":authority", b"\xff"),
                (b":path", b""),
                (b":path", b"*"),
                (b":path", b"?a=1"),
                (b"x-odd", b"\xff\xfe"),
                (b"x-nul", b"a\x00b"),
                (b"host", b"a" * 64),
                None,
            ]
        )
        if odd is not None:
            base[odd[0]] = odd[1]
            if odd == (b":method", b"CONNECT"):
                del base[b":path"], base[b":scheme"]
        return list(base.items())

    def _h2_fields(self, rng: random.Random, node: int) -> list[tuple[bytes, bytes]]:
        path = rng.choice(
            [b"/health", b"/kv/a", b"/\xff", b"", b"*", b"/kv/" + b"a" * 5000, b"http://x/"]
        )
        method = rng.choice([b"GET", b"POST", b"CONNECT", b"G\xc3\xa9T", b"", b"get"])
        fields = [
            (b":method", method),
            (b":scheme", rng.choice([b"http", b"https", b"\xff"])),
            (b":path", path),
            (b":authority", f"{HOST}:{{{{port:{node}}}}}".encode()),
        ]
        if rng.random() < 0.3:
            fields = [f for f in fields if f[0] != rng.choice([b":path", b":method", b":scheme"])]
        if rng.random() < 0.2:
            odd = [(b"Upper", b"x"), (b"connection", b"close"), (b"te", b"gzip"), (b":bogus", b"1")]
            fields.append(rng.choice([*odd, (b"x", b"\x00")]))
        return fields

    def _h2_frame(self, rng: random.Random, node: int) -> bytes:
        stream = rng.choice([1, 1, 3, 2, 0, 2**31 - 1])
        choice = rng.randrange(12)
        fields = self._h2_fields(rng, node)
        if choice < 6:
            flags = rng.choice(
                [wire.END_HEADERS | wire.END_STREAM, wire.END_HEADERS, 0, wire.PADDED]
            )
            block = self._header_block(fields)
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
        data = self._request_bytes(method, target, headers, body)
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
            [
                "batch_ok",
                "batch_oversize_op",
                "batch_bad_tail",
                "kv_put",
                "array",
                "admin",
                "floats",
            ]
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
            elif shape == "floats":
                big = Big(
                    b'{"ops":[{"op":"put","key":"x","data":[',
                    b"1.5," * 1024,
                    size_mib * 256,
                    b"0]}]}",
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
                head = self._request_bytes(
                    method, target, [*headers, (b"Transfer-Encoding", b"chunked")], framing="none"
                )
                fill = b"%x\r\n" % len(big.fill) + big.fill + b"\r\n"
                start = b"%x\r\n" % len(big.head) + big.head + b"\r\n" if big.head else b""
                end = (
                    b"%x\r\n" % len(big.tail) + big.tail + b"\r\n" if big.tail else b""
                ) + b"0\r\n\r\n"
                payload = Big(head + start, fill, big.count, end)
            else:
                head = self._request_bytes(
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
        one = self._request_bytes(
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
