"""SWIM membership with the Lifeguard refinements, as a state machine without I/O.

Inputs are decoded messages, push-pull tables and the current time; outputs are datagrams to
send, push-pull exchanges to start and membership events. A thin Trio layer
(`kvs.net.membership`) feeds it from a `Transport`, and the simulator feeds it from a
simulated network -- the core never sleeps, reads a clock or touches a socket.

The protocol (SWIM, with memberlist's and Lifeguard's refinements):
- every probe interval, ping the next member of a shuffled round-robin list; no ack within
  the probe timeout: ask `indirect_checks` others to ping it (ping-req); no ack by the end
  of the interval: suspect it;
- a suspicion carries the suspect's incarnation; the suspect refutes it by raising its
  incarnation; unrefuted, it becomes dead after a timeout that starts at
  `suspicion_max_timeout_mult` times the minimum and shrinks towards the minimum as
  independent confirmations arrive (Lifeguard);
- "awareness" (Lifeguard local health): a node that misses nacks or must refute suspicions
  about itself is probably the slow one, so it stretches its own probe interval and timeout
  instead of accusing healthy peers;
- updates ride on pings and acks (piggybacking) and on periodic gossip datagrams, each
  retransmitted about `retransmit_mult * log10(N+1)` times, least-sent first;
- a periodic TCP push-pull of whole member tables repairs what UDP lost and heals
  partitions; joining is a push-pull with a seed.

This module decides; its parts keep state, each as pure as the core: the member table and
probe order (`members.py`), probes (`probes.py`), suspicion timers (`suspicion.py`) and the
dissemination queue (`broadcasts.py`). Its inputs and outputs are plain values
(`messages.py`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from kvs.net.broadcasts import Broadcasts
from kvs.net.members import Member, MemberTable
from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_SEQ,
    Ack,
    Action,
    Address,
    Alive,
    Dead,
    Gossip,
    IncarnationChanged,
    Leave,
    MemberChanged,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    SendDatagram,
    StartPushPull,
    State,
    Suspect,
)
from kvs.net.probes import IndirectProbe, Probe, nack_after
from kvs.net.suspicion import Suspicion, Suspicions
from kvs.net.swim_settings import SwimSettings

# pack(first, more) -> (datagram, how many of `more` fit): the wire codec's packer.
Packer = Callable[[Sequence[Message], Sequence[Message]], tuple[bytes, int]]


def incarnation_at_start(stored: object) -> tuple[int, bool]:
    """The incarnation to start with, given the one persisted by the previous run (None on
    a first start), and whether that one had to be discarded.

    Normally one more than the stored value, so that a restarted node out-ranks rumours of
    its death. A stored value that leaves no room to rise (MAX_INCARNATION, or beyond it:
    2**63 - 1 was persisted by a forged "dead" claim before the wire bounded incarnations)
    or that is not an incarnation at all is discarded, and the node starts again from 1
    rather than refusing to start: refutation then lifts it above any rumour still held
    about it (each is below MAX_INCARNATION), which a node pinned at the ceiling could
    never do."""
    if stored is None:
        return 1, False
    if type(stored) is not int or not 0 <= stored < MAX_INCARNATION:
        return 1, True
    return stored + 1, False


class Swim:
    """One node's view of the cluster. Call `tick(now)` at `next_deadline()` and after every
    input; drain `take_actions()` after each call."""

    def __init__(
        self, me: MemberInfo, config: SwimSettings, rng: random.Random, packer: Packer
    ) -> None:
        if not 0 <= me.incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation must be in 0..{MAX_INCARNATION} (incarnation_at_start)")
        self.config = config
        self.rng = rng
        self._pack = packer
        self.me = me.node_id
        self._table = MemberTable(me, rng)
        self.members: dict[str, Member] = self._table.members  # the table's own dict
        self.awareness = 0
        self._actions: list[Action] = []
        self._seq = 0
        self._probe: Probe | None = None
        self._indirect: dict[int, IndirectProbe] = {}
        self._suspicions = Suspicions()
        self._broadcasts = Broadcasts()
        self._started = False
        self._next_probe_at = 0.0
        self._next_gossip_at = 0.0
        self._next_push_pull_at = 0.0
        self._next_reap_at = 0.0
        self.left = False
        self.stats = {
            "probes": 0,
            "probe_failures": 0,
            "refutations": 0,
            "misdirected": 0,
            "last_call_answered": 0,
            # Claims about us at MAX_INCARNATION: no higher incarnation exists to refute them.
            "unrefutable_claims": 0,
            # News of a member beyond max_members.
            "members_refused": 0,
        }

    # --- queries -------------------------------------------------------------------------------

    @property
    def me_info(self) -> MemberInfo:
        return self.members[self.me].info

    def live_count(self) -> int:
        """Members (ourselves included) neither dead nor left: the N of the formulas."""
        return self._table.live_count()

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float:
        """When `tick` next has work; never in the past once `tick(now)` ran (a driver that
        sleeps until this time would otherwise spin)."""
        if not self._started or self.left:
            return math.inf  # tick does nothing before start() or after leave()
        deadlines = [
            self._next_probe_at,
            self._next_gossip_at,
            self._next_push_pull_at,
            self._next_reap_at,
        ]
        if self._probe is not None:
            deadlines.append(self._probe.deadline())
        deadlines.extend(p.deadline for p in self._indirect.values())
        deadlines.extend(self._suspicions.deadlines())
        return min(deadlines)

    def local_state(self, *, join: bool = False) -> PushPull:
        return PushPull(
            source=self.me,
            members=tuple(MemberState(m.info, m.state) for m in self._table.sorted()),
            join=join,
        )

    # --- scaling -------------------------------------------------------------------------------

    def _scale(self) -> int:
        return self.awareness + 1

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = min(self.config.awareness_max - 1, max(0, self.awareness + delta))

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self.live_count() + 1)))

    def _push_pull_interval(self) -> float:
        # Larger clusters push-pull less often per node, so the cluster-wide rate stays flat.
        n = self.live_count()
        scale = max(1.0, math.ceil(math.log2(n) - math.log2(32))) if n > 32 else 1.0
        return self.config.push_pull_interval * scale

    # --- time ----------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the periodic work, each loop at a random phase so nodes don't move in step."""
        self._started = True
        self.members[self.me].last_change = now
        # Announce ourselves: whoever learns of us through this re-gossips it. Without it a
        # joiner was known only to its seed and to those its seed happened to tell.
        self._queue(self.me, Alive(self.me_info))
        c = self.config
        self._next_probe_at = now + self.rng.random() * c.probe_interval
        self._next_gossip_at = now + self.rng.random() * c.gossip_interval
        self._next_push_pull_at = now + c.push_pull_interval * (0.5 + self.rng.random())
        self._next_reap_at = now + c.dead_member_retention / 4

    def tick(self, now: float) -> None:
        if not self._started or self.left:
            return
        c = self.config
        probe = self._probe
        if probe is not None:
            if probe.helpers_due(now):
                self._send_indirect(probe, now)
            if now >= probe.end_at:
                self._finish_probe(probe, now)
        for seq, pending in list(self._indirect.items()):
            if now >= pending.deadline:
                del self._indirect[seq]
                self._send(pending.requester, [Nack(pending.requester_seq, self.me)])
        for node_id, suspicion in list(self._suspicions.by_member.items()):
            if now < suspicion.deadline():
                continue
            if suspicion.final_at is None:
                self._last_call(node_id, suspicion, now)
                continue
            self._declare_dead(node_id, suspicion.incarnation, now)
        if now >= self._next_probe_at:
            self._start_probe(now)
            self._next_probe_at = now + c.probe_interval * self._scale()
        if now >= self._next_gossip_at:
            self._gossip(now)
            self._next_gossip_at = now + c.gossip_interval
        if now >= self._next_push_pull_at:
            self._start_push_pull()
            self._next_push_pull_at = now + self._push_pull_interval()
        if now >= self._next_reap_at:
            self._reap(now)
            self._next_reap_at = now + c.dead_member_retention / 4

    # --- probing -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        # Wraps (to 1) rather than grow past what the wire carries; a seq is only compared.
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        return self._seq

    def _start_probe(self, now: float) -> None:
        if self._probe is not None:
            self._finish_probe(self._probe, now)
        target_id = self._table.next_probe_target()
        if target_id is None:
            return
        target = self.members[target_id]
        seq = self._next_seq()
        scale = self._scale()
        c = self.config
        self._probe = Probe.start(
            target_id, seq, now, c.probe_timeout * scale, c.probe_interval * scale
        )
        self.stats["probes"] += 1
        first: list[Message] = [Ping(seq, self.me, target_id)]
        if target.state is State.SUSPECT:
            # Tell the suspect it is suspected, so it can refute at once; before the ping, so
            # that the refutation rides back to us on its ack.
            first.insert(0, Suspect(target_id, target.incarnation, self.me))
        self._send(target.info.gossip, first)

    def _send_indirect(self, probe: Probe, now: float) -> None:
        probe.indirect_sent = True
        target = self.members.get(probe.target)
        if target is None:
            return
        helpers = [
            k
            for k in self._table.reachable()
            if k != probe.target and self.members[k].state is State.ALIVE
        ]
        self.rng.shuffle(helpers)
        chosen = helpers[: self.config.indirect_checks]
        probe.expected_nacks = len(chosen)
        for helper in chosen:
            self._send(
                self.members[helper].info.gossip,
                [PingReq(probe.seq, self.me, probe.target, target.info.gossip)],
            )

    def _finish_probe(self, probe: Probe, now: float) -> None:
        self._probe = None
        if probe.acked:
            return
        self.stats["probe_failures"] += 1
        # Lifeguard: if the helpers we asked did not even nack, the problem is likely ours.
        self._adjust_awareness(probe.missing_nacks())
        member = self.members.get(probe.target)
        # Failing to reach a suspect is our independent confirmation (Lifeguard).
        if member is not None and member.state in (State.ALIVE, State.SUSPECT):
            self._suspect(probe.target, member.incarnation, self.me, now)

    # --- inputs --------------------------------------------------------------------------------

    def handle_messages(self, messages: Sequence[Message], source: Address, now: float) -> None:
        """Apply every message of one datagram from `source`."""
        if self.left:
            return
        for message in messages:
            match message:
                case Ping():
                    self._on_ping(message, source)
                case Ack():
                    self._on_ack(message, now)
                case PingReq():
                    self._on_ping_req(message, source, now)
                case Nack():
                    if self._probe is not None and self._probe.seq == message.seq:
                        self._probe.nacks += 1
                case Alive():
                    self._on_alive(message.member, now)
                case Suspect():
                    self._suspect(message.node_id, message.incarnation, message.source, now)
                case Dead():
                    self._on_dead(message, now)
                case Leave():
                    self._on_leave(message, now)

    def _on_ping(self, ping: Ping, source: Address) -> None:
        if ping.target != self.me:
            self.stats["misdirected"] += 1  # an old address now used by someone else
            return
        self._send(source, [Ack(ping.seq, self.me)])

    def _on_ack(self, ack: Ack, now: float) -> None:
        if self._suspicions.is_last_call(ack.seq):
            # Alive, but its refutation has not reached us: suspect it afresh (with the
            # confirmations so far) rather than declare a live node dead.
            if self._suspicions.answered(ack.seq, now):
                self.stats["last_call_answered"] += 1
            return
        probe = self._probe
        if probe is not None and probe.seq == ack.seq:
            if not probe.acked:
                probe.acked = True
                self._adjust_awareness(-1)
            return
        pending = self._indirect.pop(ack.seq, None)
        if pending is not None:
            self._send(pending.requester, [Ack(pending.requester_seq, pending.target)])

    def _on_ping_req(self, req: PingReq, source: Address, now: float) -> None:
        seq = self._next_seq()
        self._indirect[seq] = IndirectProbe(
            source, req.seq, req.target, now + nack_after(self.config)
        )
        self._send(req.target_address, [Ping(seq, self.me, req.target)])

    def _on_alive(self, info: MemberInfo, now: float) -> None:
        if info.node_id == self.me:
            if info.incarnation > self.me_info.incarnation or (
                info.incarnation == self.me_info.incarnation and info != self.me_info
            ):
                self._refute(info.incarnation, now)
            return
        member = self.members.get(info.node_id)
        if member is None:
            if len(self.members) >= self.config.max_members:
                self.stats["members_refused"] += 1
                return
            self._table.add(info, now)
            self._queue(info.node_id, Alive(info))
            self._actions.append(MemberChanged(info, State.ALIVE, None))
            return
        if info.incarnation <= member.incarnation:
            return
        previous = member.state
        member.info = info
        if previous is not State.ALIVE:
            member.state = State.ALIVE
            self._table.changed()
            member.last_change = now
        self._suspicions.end(info.node_id)
        self._queue(info.node_id, Alive(info))
        self._actions.append(MemberChanged(info, State.ALIVE, previous))

    def _suspect(self, node_id: str, incarnation: int, source: str, now: float) -> None:
        if node_id == self.me:
            if incarnation >= self.me_info.incarnation:
                self._adjust_awareness(1)
                self._refute(incarnation, now)
            else:
                self._reannounce()
            return
        member = self.members.get(node_id)
        if member is None or incarnation < member.incarnation:
            return
        if member.state in (State.DEAD, State.LEFT):
            return
        if member.state is State.SUSPECT and incarnation == member.incarnation:
            if self._suspicions.confirm(node_id, source):
                self._queue(node_id, Suspect(node_id, incarnation, source))
            return
        previous = member.state
        member.state = State.SUSPECT
        self._table.changed()
        member.info = replace(member.info, incarnation=incarnation)
        member.last_change = now
        self._suspicions.open(node_id, incarnation, source, now, self.live_count(), self.config)
        self._queue(node_id, Suspect(node_id, incarnation, source))
        self._actions.append(MemberChanged(member.info, State.SUSPECT, previous))

    def _last_call(self, node_id: str, suspicion: Suspicion, now: float) -> None:
        """Before declaring a death, ask the suspect itself once more, directly and through
        `indirect_checks` others, as a probe does. The direct ping carries the suspicion, so
        an alive suspect refutes on its ack; any ack, even one relayed without the refutation,
        proves it alive and restarts the suspicion instead (see `_on_ack`). A false death then
        needs every one of those paths to fail as well as every refutation gossip carried:
        this is what lets the suspicion timeout be short (measured: no false death at 10%
        loss). An answer takes a round trip, so one probe timeout is long enough to wait."""
        seq = self._next_seq()
        final_at = now + self.config.probe_timeout * self._scale()
        self._suspicions.calling(node_id, suspicion, seq, final_at)
        member = self.members[node_id]
        self._send(
            member.info.gossip,
            [Suspect(node_id, suspicion.incarnation, self.me), Ping(seq, self.me, node_id)],
        )
        helpers = [
            k
            for k in self._table.reachable()
            if k != node_id and self.members[k].state is State.ALIVE
        ]
        self.rng.shuffle(helpers)
        for helper in helpers[: self.config.indirect_checks]:
            self._send(
                self.members[helper].info.gossip,
                [PingReq(seq, self.me, node_id, member.info.gossip)],
            )

    def _declare_dead(self, node_id: str, incarnation: int, now: float) -> None:
        self._on_dead(Dead(node_id, incarnation, self.me), now)

    def _on_dead(self, dead: Dead, now: float) -> None:
        if dead.node_id == self.me:
            if dead.incarnation >= self.me_info.incarnation:
                self._refute(dead.incarnation, now)
            else:
                self._reannounce()
            return
        member = self.members.get(dead.node_id)
        if member is None or dead.incarnation < member.incarnation:
            return
        if member.state in (State.DEAD, State.LEFT):
            return
        self._set_down(member, State.DEAD, dead.incarnation, now)
        self._queue(dead.node_id, dead)

    def _on_leave(self, leave: Leave, now: float) -> None:
        if leave.node_id == self.me:
            if not self.left and leave.incarnation >= self.me_info.incarnation:
                self._refute(leave.incarnation, now)  # a rumour from an earlier life
            return
        member = self.members.get(leave.node_id)
        if member is None or leave.incarnation < member.incarnation or member.state is State.LEFT:
            return
        if member.state is State.DEAD and leave.incarnation == member.incarnation:
            pass  # a node that left, seen as dead by some: "left" is the truer word
        self._set_down(member, State.LEFT, leave.incarnation, now)
        self._queue(leave.node_id, leave)

    def _set_down(self, member: Member, state: State, incarnation: int, now: float) -> None:
        previous = member.state
        member.state = state
        self._table.changed()
        member.info = replace(member.info, incarnation=incarnation)
        member.last_change = now
        self._suspicions.end(member.node_id)
        self._actions.append(MemberChanged(member.info, state, previous))

    def _refute(self, incarnation: int, now: float) -> None:
        """Someone says we are suspect/dead/other: out-rank the claim with a higher incarnation.

        A claim at MAX_INCARNATION cannot be out-ranked: it is refused and counted, and our
        incarnation stays where it is. (memberlist, whose incarnations are uint32, would add
        one and wrap to 0; here the claim would raise ours past what any peer, our own
        encoder included, accepts -- the node then failed at its next datagram, and at every
        restart after, having persisted it.) Only a forged claim comes near the ceiling."""
        if incarnation >= MAX_INCARNATION:
            self.stats["unrefutable_claims"] += 1
            return
        me = self.members[self.me]
        me.info = replace(me.info, incarnation=max(me.incarnation, incarnation) + 1)
        self.stats["refutations"] += 1
        self._queue(self.me, Alive(me.info))
        self._actions.append(IncarnationChanged(me.incarnation))

    def _reannounce(self) -> None:
        """A claim about us older than our incarnation: its sender missed our refutation (whose
        retransmits may be spent), and would declare us dead in the end. Say it again."""
        if self.me not in self._broadcasts:
            self._queue(self.me, Alive(self.me_info))

    # --- push-pull -----------------------------------------------------------------------------

    def _start_push_pull(self) -> None:
        candidates = [k for k in self._table.reachable() if self.members[k].state is State.ALIVE]
        if not candidates:
            return
        node_id = self.rng.choice(candidates)
        self._actions.append(StartPushPull(node_id, self.members[node_id].info.gossip))

    def merge_remote(self, remote: PushPull, now: float) -> None:
        """Merge a peer's whole table. A remote "dead" only makes us suspect (we may still
        reach the node), as in memberlist, so one confused peer cannot kill a healthy node."""
        if self.left:
            return
        for entry in remote.members:
            info = entry.member
            if entry.state is State.ALIVE:
                self._on_alive(info, now)
            elif entry.state in (State.SUSPECT, State.DEAD):
                if info.node_id not in self.members and info.node_id != self.me:
                    # Learn about it (as alive at that incarnation), then apply the suspicion.
                    self._on_alive(info, now)
                member = self.members.get(info.node_id)
                if member is None:
                    continue  # refused: the table is full
                if member.state is State.SUSPECT and member.incarnation == info.incarnation:
                    continue  # hearsay (maybe our own suspicion echoed): no confirmation
                self._suspect(info.node_id, info.incarnation, remote.source, now)
            elif entry.state is State.LEFT:
                if info.node_id not in self.members and info.node_id != self.me:
                    continue  # never heard of it, and it is gone: nothing to learn
                self._on_leave(Leave(info.node_id, info.incarnation), now)

    # --- leaving -------------------------------------------------------------------------------

    def leave(self, now: float) -> None:
        """Announce a graceful leave to several members; the driver sends, then stops."""
        me = self.members[self.me]
        leave = Leave(self.me, me.incarnation)
        targets = [k for k in self._table.reachable() if self.members[k].state is State.ALIVE]
        self.rng.shuffle(targets)
        for node_id in targets[: max(1, self.config.gossip_nodes * 2)]:
            self._send(self.members[node_id].info.gossip, [leave])
        me.state = State.LEFT
        self._table.changed()
        me.last_change = now
        self.left = True

    # --- dissemination -------------------------------------------------------------------------

    def _queue(self, about: str, message: Gossip) -> None:
        self._broadcasts.queue(about, message)

    def _send(self, to: Address, first: list[Message]) -> None:
        pending = self._broadcasts.pending()
        data, used = self._pack(first, [b.message for b in pending])
        self._broadcasts.sent(pending[:used], self._retransmit_limit())
        self._actions.append(SendDatagram(to, data))

    def _gossip(self, now: float) -> None:
        if not self._broadcasts:
            return
        targets = [
            k
            for k, m in sorted(self.members.items())
            if k != self.me
            and (
                m.state in (State.ALIVE, State.SUSPECT)
                or (m.state is State.DEAD and now - m.last_change < self.config.gossip_to_the_dead)
            )
        ]
        self.rng.shuffle(targets)
        for node_id in targets[: self.config.gossip_nodes]:
            if not self._broadcasts:
                break
            self._send(self.members[node_id].info.gossip, [])

    def _reap(self, now: float) -> None:
        for node_id in self._table.reap(now, self.config.dead_member_retention):
            self._broadcasts.forget(node_id)
