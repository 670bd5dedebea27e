"""What the HTTP fuzzer's setup creates (users, tokens, keys, a marker), derived from the seed,
and what an interaction is: its connections, their steps, and the model write it makes.

Rule: plain data; nothing here draws after the plan is made, opens a socket or reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Deadlines:
    """The node's request deadlines when the fuzzer set them (None: not judged)."""

    header: float | None = None
    body: float | None = None
