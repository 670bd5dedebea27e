"""Free loopback ports for the nodes that tests, fuzzers, benchmarks and the launcher start."""

from __future__ import annotations

import contextlib
import socket

HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free for both TCP and UDP on `host` a moment ago.

    A node's gossip port takes both, so a port free for TCP only is passed over. The sockets
    are held together while picking, so the kernel hands out distinct ports; another process
    could take one before the node binds it, which is rare enough for tests."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind((host, port))
            except OSError:
                continue  # free for TCP but not UDP: keep it held and pick another
            ports.append(port)
        return ports


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]
