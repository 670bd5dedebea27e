"""The swarm's independent judge: a reference model of the store kept from what clients were
told, checked against every replica during the run and at its end.

Rule: this file decides what is right. It never asks the code under test which version wins
(`Version.newer_than`, `resolve`, `Record.live` are not called): it orders versions by its
own reading of the documented rule, newer HLC, then the earlier-joined origin, then the
larger UUID, then the origin's id, and it decides expiry and garbage collection from the
client's own TTL and each replica's clock. It never awaits and never raises into the node:
what it finds goes into `violations`, which the runner reports.

What it is told:
- `created(node, change)`: every change a node's store commits (a store listener): which
  versions exist at all and what each holds. Only the judge's copy of facts is kept, never a
  verdict of the node's;
- `acknowledged(...)`: a client was answered 2xx for a write (the only writes the model
  takes as promised);
- `served(...)`: what a GET answered, with the node's clock read before and after it.

The checks:
- no replica ever replaces a version by one the rule orders before it (a merge that keeps
  the older version; a tie given to the later-joined node);
- no version that no client wrote, and no value other than the one written with it;
- monotonic reads per node, read-your-writes on the acknowledging node, and no expired
  value served by a replica whose own clock has passed the expiry;
- at the end, on every replica: each key holds the model's winner or a newer version some
  client wrote; a key may be missing only if a tombstone at least as new was old enough to
  be collected (`tombstone_ttl`) by the most advanced clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvs.model import HLC_LOGICAL_BITS, SYSTEM_PREFIX, Record, Version

__all__ = ["Judge", "Made", "rank"]

MAX_VIOLATIONS = 50  # enough to read; a broken run would otherwise collect thousands


def rank(v: Version) -> tuple[int, int, str, str]:
    """The judge's own total order on versions: the greater rank wins."""
    return (v.hlc, -v.origin_joined, v.uuid, v.origin)


def _ms(v: Version) -> int:
    return v.hlc >> HLC_LOGICAL_BITS


def _no_clock() -> int:
    return 0


@dataclass
class Made:
    """One version a node's client write created, as the judge saw it committed."""

    key: str
    version: Version
    value: bytes | None  # None: a delete
    expires_at: int | None
    node: str
    previous_uuid: str | None  # the version it replaced on that node (If-Match checks)
    owner: str = ""  # the owning user's uuid (with auth on)
    replaced: Record | None = None  # the record it replaced on that node, as it was there

    def gone_by(self, now_ms: int) -> bool:
        """A delete, or a value whose TTL is up by a clock reading `now_ms`."""
        return self.value is None or (self.expires_at is not None and self.expires_at <= now_ms)


@dataclass
class Judge:
    tombstone_ttl_ms: int
    max_clock: Callable[[], int] = _no_clock
    """The most advanced wall clock in the cluster now (ms): a replica whose clock is ahead
    sweeps an expired value first, and anti-entropy hands its tombstone (same version) on,
    so a value may vanish from a replica before that replica's own clock reaches the expiry."""
    violations: list[str] = field(default_factory=list)
    made: dict[str, Made] = field(default_factory=dict)  # by uuid
    by_key: dict[str, list[Made]] = field(default_factory=dict)
    model: dict[str, Made] = field(default_factory=dict)  # the acknowledged winner per key
    sent_values: set[bytes] = field(default_factory=set)
    last_delete: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, key) -> uuid
    last_served: dict[tuple[str, str], Made] = field(default_factory=dict)
    own_floor: dict[tuple[str, str], Made] = field(default_factory=dict)
    acks: int = 0
    reads: int = 0
    changes_seen: int = 0

    def fail(self, message: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(message)

    # --- what the stores commit -----------------------------------------------------------

    def listener(
        self, node: str, now: Callable[[], float], wall_ms: Callable[[], int] = _no_clock
    ) -> Callable[[list[Any]], None]:
        """A store listener for `node` (attach it at each start); `wall_ms`: its clock."""

        def on_commit(changes: list[Any]) -> None:
            for change in changes:
                self._committed(node, change.old, change.new, change.local, now())
                if not change.local and change.new is not None:
                    self._too_old(node, change.old, change.new, wall_ms(), now())

        return on_commit

    def _too_old(self, node: str, old: Record | None, new: Record, wall: int, at: float) -> None:
        """Replicas never take a tombstone older than `tombstone_ttl` from a peer: it may
        have been collected already, and taking it back would undo that collection."""
        if new.value is not None or (old is not None and old.version == new.version) or not wall:
            return
        age = wall - _ms(new.version)
        if age > self.tombstone_ttl_ms + 1_000:
            self.fail(
                f"t={at:.3f} {node}: took {new.key}'s tombstone {new.version.uuid} from a peer,"
                f" {age} ms old (tombstone_ttl {self.tombstone_ttl_ms} ms)"
            )

    def _committed(
        self, node: str, old: Record | None, new: Record | None, local: bool, at: float
    ) -> None:
        if (new or old) is not None and (new or old).key.startswith(SYSTEM_PREFIX):  # type: ignore[union-attr]
            return  # users, groups, tokens: the auth service's records, not client data
        self.changes_seen += 1
        if new is None:
            return  # tombstone GC: judged at the end (a missing key must have been collectable)
        if local:
            made = Made(
                new.key,
                new.version,
                new.value,
                new.expires_at,
                node,
                None if old is None else old.version.uuid,
                new.owner,
                old,
            )
            if new.version.uuid in self.made:
                self.fail(f"t={at:.3f} {node}: uuid {new.version.uuid} made twice")
            self.made[new.version.uuid] = made
            self.by_key.setdefault(new.key, []).append(made)
            if new.value is None:
                self.last_delete[(node, new.key)] = new.version.uuid
        else:
            known = self.made.get(new.version.uuid)
            if known is None or known.key != new.key or known.version != new.version:
                self.fail(f"t={at:.3f} {node}: holds {new.key} at a version no client wrote")
            elif new.value is not None and new.value != known.value:
                self.fail(f"t={at:.3f} {node}: {new.key} holds another value than was written")
        if old is not None and old.version != new.version and rank(new.version) < rank(old.version):
            self.fail(
                f"t={at:.3f} {node}: {new.key} went back from {old.version.uuid} to the older"
                f" {new.version.uuid}"
            )
        expiry = new.value is None and old is not None and old.expires_at is not None
        if old is not None and old.version == new.version and new.value != old.value and not expiry:
            self.fail(f"t={at:.3f} {node}: {new.key} changed value under the same version")

    # --- what clients were told -----------------------------------------------------------

    def sent(self, value: bytes) -> None:
        self.sent_values.add(value)

    def acknowledged(
        self,
        node: str,
        key: str,
        uuid: str | None,
        *,
        value: bytes | None,
        ttl_ms: int | None = None,
        clock: tuple[int, int] = (0, 0),
        if_match: str | None = None,
        user: str | None = None,
        at: float = 0.0,
    ) -> None:
        """A 2xx for a write of `key` on `node`; `uuid` None for a delete (its version is the
        last delete `node` made of `key`). `clock`: the node's wall clock before and after."""
        self.acks += 1
        if uuid is None:
            uuid = self.last_delete.get((node, key))
        made = self.made.get(uuid) if uuid is not None else None
        what = (
            f"t={at:.3f} {node}: acknowledged {'put' if value is not None else 'delete'} of {key}"
        )
        if made is None or made.key != key or made.node != node:
            self.fail(f"{what} names a version it never committed ({uuid})")
            return
        if (made.value is None) != (value is None) or (value is not None and made.value != value):
            self.fail(f"{what}: the committed version holds something else")
            return
        if ttl_ms is None:
            if made.expires_at is not None:
                self.fail(f"{what}: expires at {made.expires_at} though no TTL was asked")
        elif made.expires_at is None or not (
            clock[0] + ttl_ms <= made.expires_at <= clock[1] + ttl_ms
        ):
            self.fail(f"{what}: expires at {made.expires_at}, asked for {ttl_ms} ms from {clock}")
        if if_match is not None and made.previous_uuid != if_match:
            self.fail(f"{what}: If-Match {if_match} but it replaced {made.previous_uuid}")
        if user is not None:
            self._check_owner(what, made, user, clock[1])
        current = self.model.get(key)
        if current is None or rank(made.version) > rank(current.version):
            self.model[key] = made
        floor = self.own_floor.get((node, key))
        if floor is None or rank(made.version) > rank(floor.version):
            self.own_floor[(node, key)] = made

    def _check_owner(self, what: str, made: Made, user: str, now_ms: int) -> None:
        """With auth on and the default bits (0xF31: others may only read; the swarm's users
        share no group), a user may replace or delete only a key it owns, or one that is
        not live: the version this write replaced must not be another user's live value."""
        previous = made.replaced  # as that node held it (an expiry may have reached it)
        if previous is None or previous.value is None:
            return
        if previous.expires_at is not None and previous.expires_at <= now_ms:
            return
        if previous.owner != user:
            self.fail(
                f"{what} by {user}: it replaced {previous.owner}'s live {previous.version.uuid}"
            )

    def refused_write(self, what: str, status: int, expected: tuple[int, ...]) -> None:
        """A write that must be refused (no token, a forged one, a read-only scope)."""
        if status not in expected and status < 500:
            self.fail(f"{what} answered {status}, not {' or '.join(map(str, expected))}")

    # --- what reads answered --------------------------------------------------------------

    def served(
        self,
        node: str,
        key: str,
        uuid: str | None,
        value: bytes | None,
        clock: tuple[int, int],
        at: float,
    ) -> None:
        """A GET of `key` on `node` answered `uuid`/`value` (None, None: 404)."""
        self.reads += 1
        where = f"t={at:.3f} {node}: GET {key}"
        if uuid is None:
            for label, seen in (
                ("read-your-writes", self.own_floor.get((node, key))),
                ("monotonic reads", self.last_served.get((node, key))),
            ):
                if seen is not None and not self._superseded_by_gone(
                    seen, max(clock[1], self.max_clock())
                ):
                    self.fail(f"{where} 404 after {seen.version.uuid} ({label})")
            return
        made = self.made.get(uuid)
        if made is None or made.key != key or made.value is None:
            self.fail(f"{where} served version {uuid}, which no client wrote")
            return
        if value is not None and value != made.value:
            self.fail(f"{where} served {value[:40]!r}, not what {uuid} holds")
        if made.expires_at is not None and made.expires_at <= clock[0]:
            self.fail(
                f"{where} served {uuid}, expired at {made.expires_at} by its clock {clock[0]}"
            )
        for label, seen in (
            ("read-your-writes", self.own_floor.get((node, key))),
            ("monotonic reads", self.last_served.get((node, key))),
        ):
            if seen is not None and rank(made.version) < rank(seen.version):
                self.fail(f"{where} served {uuid}, older than {seen.version.uuid} ({label})")
        self.last_served[(node, key)] = made

    def watched(self, node: str, event: dict[str, Any], last: dict[str, Made], at: float) -> None:
        """One event of a watch stream on `node`; `last`: that stream's latest version by
        key. A node applies only versions newer than what it holds (an expiry keeps its
        version), so a stream never goes back."""
        key, uuid = event.get("key"), event.get("uuid")
        made = self.made.get(uuid) if isinstance(uuid, str) else None
        if made is None or made.key != key:
            self.fail(f"t={at:.3f} {node}: watch event for {key} at a version no client wrote")
            return
        before = last.get(made.key)
        if before is not None and rank(made.version) < rank(before.version):
            self.fail(
                f"t={at:.3f} {node}: the watch of {made.key} went back from"
                f" {before.version.uuid} to {made.version.uuid}"
            )
        if bool(event.get("deleted")) != (made.value is None) and not (
            event.get("deleted") and made.expires_at is not None
        ):
            self.fail(f"t={at:.3f} {node}: watch event for {made.key} says deleted wrongly")
        last[made.key] = made

    def _superseded_by_gone(self, seen: Made, now_ms: int) -> bool:
        """Whether a 404 may follow `seen`: it expired, or some version at least as new is a
        delete or an expired value."""
        if seen.gone_by(now_ms):
            return True
        return any(
            rank(m.version) > rank(seen.version) and m.gone_by(now_ms)
            for m in self.by_key.get(seen.key, ())
        )

    # --- the end ------------------------------------------------------------------------------

    def check_replica(
        self, node: str, records: dict[str, Record], now_ms: int, max_now: int
    ) -> None:
        """Compare one replica's whole store (`records` by key, tombstones included) with the
        model. `now_ms`: its clock; `max_now`: the most advanced clock in the cluster."""
        for key, record in records.items():
            made = self.made.get(record.version.uuid)
            if made is None or made.key != key or made.version != record.version:
                self.fail(f"end {node}: {key} holds a version no client wrote")
            elif record.value is not None and record.value != made.value:
                self.fail(f"end {node}: {key} holds another value than its version's")
            elif record.value is None and made.value is not None and not made.gone_by(max_now):
                self.fail(f"end {node}: {key} was made a tombstone before its TTL was up")
        for key, winner in self.model.items():
            record = records.get(key)
            if record is None:
                if not self._collectable(key, winner, max_now):
                    self.fail(
                        f"end {node}: {key} is missing, but the acknowledged {winner.version.uuid}"
                        " (or a newer tombstone) is too young to have been collected"
                    )
                continue
            if rank(record.version) < rank(winner.version):
                self.fail(
                    f"end {node}: {key} holds {record.version.uuid}, older than the acknowledged"
                    f" {winner.version.uuid} (a lost write, or a delete undone)"
                )

    def _collectable(self, key: str, winner: Made, max_now: int) -> bool:
        limit = max_now - self.tombstone_ttl_ms
        return any(
            rank(m.version) >= rank(winner.version)
            and m.gone_by(max_now)
            and _ms(m.version) <= limit
            for m in self.by_key.get(key, ())
        )

    def summary(self) -> str:
        return (
            f"{self.acks} acknowledged writes, {self.reads} reads, {len(self.made)} versions,"
            f" {self.changes_seen} commits judged"
        )
