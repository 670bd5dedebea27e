"""Hostile HTTP interactions for a KVS node, generated from a seed (issue 12).

`Generator.interaction(index)` describes interaction `index` completely: which node, who
calls (anonymous, a bad token, a token of some scope), and the bytes and pauses of each
connection it opens. Every choice comes from one `random.Random(seed)` (it hands out one
sub-seed per index, so `interaction(n)` needs no run of the ones before), and nothing
depends on what a node answered: a seed replays the same inputs. Values only known at run
time (tokens, user ids, ports) are placeholders such as `{{tok:reader}}`, filled in when the
bytes are sent (kvs.testing.fuzz_http).

The parts: `http_plan` (what the setup creates; what an interaction is), `http_vocab`
(tables of hostile values), the generator's floors `http_requests` (credentials, keys,
bytes), `http_bodies`, `http_endpoints`, then `http_kinds` and `http_upgrades` (each kind of
interaction), and here the `Generator` that picks interaction `index`'s kind and node.

Rule: nothing here opens a socket, reads a clock or looks at a node.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from kvs.testing.http_kinds import Kinds
from kvs.testing.http_plan import Deadlines, Interaction, Plan
from kvs.testing.http_upgrades import UpgradeKinds

# --- the generator -------------------------------------------------------------------------------

# How often each kind of interaction is drawn.
# fmt: off
KIND_WEIGHTS: dict[str, int] = {
    "request": 40, "garbage": 14, "model": 12, "half_close": 5, "stall": 4, "trickle": 3,
    "pipeline": 5, "rst": 4, "flood": 2, "websocket": 3, "h2_prior": 4, "h2c_upgrade": 2,
    "big_body": 1, "slow_reader": 1,
}
# fmt: on
KINDS = tuple(KIND_WEIGHTS)


class Generator(Kinds, UpgradeKinds):
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
