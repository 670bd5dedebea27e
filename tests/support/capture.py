"""A wiretap on the loopback interface: every IPv4 UDP datagram and TCP segment to or from a
set of ports, as tcpdump would see it (a raw AF_PACKET socket; needs root or CAP_NET_RAW).

The reader is a plain thread (it touches no Trio object) that keeps what it saw in lists;
`stop()` ends it. TCP segments are grouped into connections by their 4-tuple, so a test can
read (or replay) the bytes a client sent on one connection, from its SYN on.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
ETH_HEADER = 14
PACKET_OUTGOING = 4  # sll_pkttype of our own copy of a sent frame: loopback shows it twice
TCP_SYN, TCP_ACK = 0x02, 0x10

Address = tuple[str, int]


@dataclass(frozen=True)
class Datagram:
    src: Address
    dst: Address
    data: bytes


@dataclass
class Connection:
    """One TCP connection, client (the side that sent the SYN) to server."""

    client: Address
    server: Address
    isn: int | None = None  # the client's initial sequence number, from its SYN
    segments: dict[int, bytes] = field(default_factory=dict)  # client's seq -> payload
    replies: list[bytes] = field(default_factory=list)  # server's payloads, in arrival order

    def client_bytes(self) -> bytes:
        """What the client sent, in order, retransmissions counted once."""
        return b"".join(self.segments[seq] for seq in sorted(self.segments))

    def all_bytes(self) -> bytes:
        return self.client_bytes() + b"".join(self.replies)


def can_capture() -> str | None:
    """Why a capture cannot run here, or None if it can."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except (AttributeError, PermissionError, OSError) as e:
        return f"no raw packet socket here ({type(e).__name__}: needs Linux and root)"
    sock.close()
    return None


class LoopbackCapture:
    """Capture loopback traffic touching `ports` (UDP and TCP) until `stop()`."""

    def __init__(self, ports: Iterable[int]) -> None:
        self.ports = frozenset(ports)
        self.datagrams: list[Datagram] = []
        self.connections: dict[tuple[Address, Address], Connection] = {}
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # Room for bursts while the reader thread waits for the GIL on a loaded machine.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 2**20)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="loopback-capture", daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    def payloads(self) -> list[bytes]:
        """Every captured payload (datagrams and both directions of every connection)."""
        with self._lock:
            out = [d.data for d in self.datagrams]
            out += [c.all_bytes() for c in self.connections.values()]
        return out

    def whole_connections(self) -> list[Connection]:
        """Connections seen from their SYN on, that carried client bytes."""
        with self._lock:
            return [c for c in self.connections.values() if c.isn is not None and c.segments]

    # --- the reader thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self._sock.recvfrom(65_600)
            except TimeoutError:
                continue
            except OSError:
                return
            if where[2] == PACKET_OUTGOING:
                continue
            with contextlib.suppress(struct.error, IndexError):
                self._packet(frame[ETH_HEADER:])

    def _packet(self, ip: bytes) -> None:
        if ip[0] >> 4 != 4:
            return
        header = (ip[0] & 0x0F) * 4
        total, proto = struct.unpack_from("!H", ip, 2)[0], ip[9]
        src_ip, dst_ip = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        body = ip[header:total]
        if proto == socket.IPPROTO_UDP:
            sport, dport = struct.unpack_from("!HH", body)
            if sport in self.ports or dport in self.ports:
                with self._lock:
                    self.datagrams.append(Datagram((src_ip, sport), (dst_ip, dport), body[8:]))
        elif proto == socket.IPPROTO_TCP:
            sport, dport, seq = struct.unpack_from("!HHI", body)
            offset, flags = (body[12] >> 4) * 4, body[13]
            if sport in self.ports or dport in self.ports:
                self._segment((src_ip, sport), (dst_ip, dport), seq, flags, body[offset:])

    def _segment(self, src: Address, dst: Address, seq: int, flags: int, payload: bytes) -> None:
        with self._lock:
            if flags & TCP_SYN and not flags & TCP_ACK:  # a client opens a connection
                self.connections[(src, dst)] = Connection(src, dst, isn=seq)
                return
            if (src, dst) in self.connections:
                conn = self.connections[(src, dst)]
                if payload:
                    start = conn.isn if conn.isn is not None else seq
                    conn.segments[(seq - start) % 2**32] = payload
            elif (dst, src) in self.connections:
                if payload:
                    self.connections[(dst, src)].replies.append(payload)
            elif payload:  # opened before the capture started: keep its bytes to search them
                self.connections[(src, dst)] = Connection(src, dst)
                self.connections[(src, dst)].segments[seq] = payload
