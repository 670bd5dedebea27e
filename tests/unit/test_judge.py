"""kvs.testing.judge: the swarm's judge finds each kind of wrong it is there for, from
hand-made commits, acknowledgements and reads (its own rule, not the code's)."""

from __future__ import annotations

from kvs.model import Record, Version, hlc_pack
from kvs.store import Change
from kvs.testing.judge import Judge, rank

T = 1_767_225_600_000
EARLY, LATE = 1_000, 2_000  # joined timestamps


def version(
    ms: int, uuid: str, joined: int = EARLY, origin: str = "a", logical: int = 0
) -> Version:
    return Version(hlc_pack(ms, logical), joined, origin, uuid)


def rec(key: str, v: Version, value: bytes | None = b"1", expires_at: int | None = None) -> Record:
    return Record(key, value, v, expires_at)


def commit(judge: Judge, node: str, old: Record | None, new: Record | None, local: bool) -> None:
    judge.listener(node, lambda: 0.0)([Change(old, new, local)])


def test_rank_is_the_documented_rule_ties_to_the_earlier_joined_node() -> None:
    assert rank(version(T + 1, "a")) > rank(version(T, "z"))
    assert rank(version(T, "a", joined=EARLY)) > rank(version(T, "z", joined=LATE))
    assert rank(version(T, "b")) > rank(version(T, "a"))


def test_a_replica_going_back_to_an_older_version_is_found() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    early = rec("k", version(T, "u1", joined=EARLY, origin="a"))
    late = rec("k", version(T, "u2", joined=LATE, origin="b"))
    commit(judge, "a", None, early, True)
    commit(judge, "b", None, late, True)
    commit(judge, "a", None, late, False)  # fine on its own: a new key
    assert judge.violations == []
    commit(judge, "b", late, early, False)  # the earlier-joined one wins the tie: fine
    assert judge.violations == []
    commit(judge, "c", early, late, False)  # the tie given to the later-joined node
    assert len(judge.violations) == 1 and "went back" in judge.violations[0]


def test_a_version_or_value_no_client_wrote_is_found() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    commit(judge, "b", None, rec("k", version(T, "ghost")), False)
    made = rec("k", version(T, "u1"), b'{"w":1}')
    commit(judge, "a", None, made, True)
    commit(judge, "b", None, rec("k", made.version, b'{"w":2}'), False)
    assert len(judge.violations) == 2
    judge.served("a", "k", "nobody", b"1", (T, T), 0.0)
    assert "no client wrote" in judge.violations[-1]


def test_an_expired_value_served_by_a_replica_past_its_expiry_is_found() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    commit(judge, "a", None, rec("k", version(T, "u1"), b"1", expires_at=T + 500), True)
    judge.served("b", "k", "u1", b"1", (T + 499, T + 499), 0.0)
    assert judge.violations == []
    judge.served("b", "k", "u1", b"1", (T + 500, T + 501), 0.0)
    assert "expired" in judge.violations[0]


def test_read_your_writes_and_monotonic_reads() -> None:
    judge = Judge(tombstone_ttl_ms=10_000, max_clock=lambda: T)
    old, new = rec("k", version(T, "u1")), rec("k", version(T + 5, "u2"))
    commit(judge, "a", None, old, True)
    commit(judge, "a", old, new, True)
    judge.acknowledged("a", "k", "u2", value=b"1", clock=(T, T))
    assert judge.violations == []
    judge.served("a", "k", "u1", b"1", (T, T), 0.0)  # older than its own write
    assert "read-your-writes" in judge.violations[-1]
    judge.served("b", "k", "u2", b"1", (T, T), 0.0)
    judge.served("b", "k", "u1", b"1", (T, T), 0.0)  # went back on one node
    assert "monotonic reads" in judge.violations[-1]
    count = len(judge.violations)
    judge.served("a", "k", None, None, (T, T), 0.0)  # 404 with nothing gone: both fail
    assert len(judge.violations) == count + 2 and "404" in judge.violations[-1]
    gone = rec("k", version(T + 9, "u3"), None)
    commit(judge, "c", None, gone, True)  # a newer delete somewhere explains a 404
    judge.served("a", "k", None, None, (T, T), 0.0)
    assert len(judge.violations) == count + 2


def test_acknowledgements_are_checked_against_what_was_committed() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    prev = rec("k", version(T, "u0"))
    commit(judge, "a", None, prev, True)
    commit(judge, "a", prev, rec("k", version(T + 1, "u1"), b"1", expires_at=T + 2_000), True)
    judge.acknowledged("a", "k", "u1", value=b"1", ttl_ms=2_000, clock=(T, T + 1), if_match="u0")
    assert judge.violations == []
    judge.acknowledged("a", "k", "u1", value=b"1", ttl_ms=5_000, clock=(T, T + 1))
    assert "expires at" in judge.violations[-1]
    judge.acknowledged("a", "k", "u1", value=b"1", ttl_ms=2_000, clock=(T, T), if_match="zz")
    assert "If-Match" in judge.violations[-1]
    judge.acknowledged("a", "k", "never", value=b"1")
    assert "never committed" in judge.violations[-1]
    judge.acknowledged("a", "k", "u1", value=b"2", ttl_ms=2_000, clock=(T, T))
    assert "something else" in judge.violations[-1]


def test_at_the_end_a_lost_write_or_an_early_collection_is_found() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    put = rec("k", version(T, "u1"))
    delete = rec("k", version(T + 1_000, "u2"), None)
    commit(judge, "a", None, put, True)
    commit(judge, "a", put, delete, True)
    judge.acknowledged("a", "k", "u1", value=b"1")
    judge.acknowledged("a", "k", None, value=None)
    judge.check_replica("b", {"k": put}, T + 2_000, T + 2_000)  # the delete undone
    assert "older than the acknowledged" in judge.violations[-1]
    judge.check_replica("b", {}, T + 5_000, T + 5_000)  # the tombstone gone too early
    assert "too young" in judge.violations[-1]
    count = len(judge.violations)
    judge.check_replica("b", {}, T + 11_000, T + 11_000)  # collected in time
    judge.check_replica("b", {"k": delete}, T + 5_000, T + 5_000)
    assert len(judge.violations) == count


def test_a_tombstone_older_than_tombstone_ttl_taken_from_a_peer_is_found() -> None:
    judge = Judge(tombstone_ttl_ms=10_000)
    put = rec("k", version(T, "u1"))
    old_delete = rec("k", version(T + 1, "u2"), None)
    commit(judge, "a", None, put, True)
    commit(judge, "a", put, old_delete, True)
    on_b = judge.listener("b", lambda: 0.0, lambda: T + 5_000)
    on_b([Change(put, old_delete, False)])  # 5 s old: taken as it should be
    assert judge.violations == []
    on_c = judge.listener("c", lambda: 0.0, lambda: T + 20_000)
    on_c([Change(put, old_delete, False)])  # 20 s old: it may have been collected here
    assert "tombstone" in judge.violations[-1] and "19999 ms old" in judge.violations[-1]
