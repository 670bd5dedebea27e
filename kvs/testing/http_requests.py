"""The ground floor of the HTTP fuzzer's generator: who calls and with which credentials,
which key, which Host, and a request's bytes with the run-time placeholders resolved.
`http_inputs.Generator` is built in floors: `RequestParts` (here), `http_bodies.Bodies`,
`http_endpoints.Endpoints`, then the kinds of interaction (`http_kinds`, `http_h2`).

Rule: nothing here opens a socket, reads a clock or looks at a node; every choice comes
from the `rng` passed in, in a fixed order (a seed replays the same bytes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from kvs.testing import http_wire as wire
from kvs.testing.http_plan import (
    MARKER_READERS,
    PRINCIPALS,
    Deadlines,
    Plan,
)
from kvs.testing.http_vocab import (
    HOSTS,
    MARKER_READ_TOKENS,
    NASTY_STRINGS,
    NUMBERS,
    fake_jwt,
    pct,
    tok,
)
from kvs.testing.procs import HOST

Headers = list[tuple[bytes, bytes]]
Drawn = tuple[bytes, bytes, Headers, bytes]  # method, target, extra headers, body


class RequestParts:
    """Draws the parts of a request; the state is the generator's (see Generator)."""

    plan: Plan
    nodes: int
    deadlines: Deadlines
    resolve: Callable[[bytes], bytes]
    _may_see: bool

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
            b"Bearer " + fake_jwt(rng),
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
