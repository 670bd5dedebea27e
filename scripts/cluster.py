#!/usr/bin/env python3
"""The local cluster launcher: N real KVS node processes on loopback, in one directory.

    python scripts/cluster.py start -n 5 [--dir DIR] [--base-port 9000]
    python scripts/cluster.py status [--dir DIR]       exit 0 if every node is up, else 3
    python scripts/cluster.py stop [NODE...] [--dir DIR]  SIGTERM (graceful leave); all by default
    python scripts/cluster.py kill NODE [--dir DIR]    SIGKILL one node (`2` or `node2`)
    python scripts/cluster.py restart NODE [--dir DIR] start it again, same config and data

`start` writes, under DIR (default ./cluster): `nodeN.yaml` (a `kvs init` config with its
own HTTP, gossip and sync ports, the cluster's one shared cluster_secret, node 1's HTTP
address as seed for every other node), `data/nodeN/`, and `cluster.json` (the node list, no
secret). Each node runs as `python -m kvs DIR/nodeN.yaml` in its own session, so it outlives
the launcher; its output goes to `DIR/nodeN.log` and its pid to `DIR/nodeN.pid`. `start`
returns once every node sees every other as alive and prints their URLs. Starting a DIR
that already holds a stopped cluster starts it again with its configs and data; starting
one that is running is refused. `--base-port 0` lets the kernel pick free ports.

Node 1 has no seed: if it is restarted alone, the others find it again through their
periodic reconnection to dead members (seconds), and it finds them the same way.

Exit status: 0 done, 1 failed (the message says why), 2 bad usage, 3 `status`: not all up.
Runs with any Python 3.11: it re-runs itself with the checkout's .venv when the modules it
needs are missing (scripts/venv_check.py), or says in one line how to make the venv.
The library behind it is kvs/testing/launcher.py (`Cluster(Path(dir)).start(3, base_port=0)`,
used by the tests and the benchmarks).
"""

# ruff: noqa: E402 - venv_check.ensure runs before the imports it makes possible
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import venv_check

venv_check.ensure("cluster.py", "httpx", "trio", "yaml")

from kvs.testing.launcher import (
    DEFAULT_BASE_PORT,
    DEFAULT_DIR,
    DEFAULT_TIMEOUT,
    EXIT_DOWN,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Cluster,
    LauncherError,
    UsageError,
)

# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster.py", description="Run a local KVS cluster of real processes on loopback."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"the cluster's directory (default ./{DEFAULT_DIR})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", parents=[common], help="create and start a cluster")
    start.add_argument("-n", type=int, default=None, help="number of nodes (default 3)")
    start.add_argument(
        "--auth",
        action="store_true",
        help="a new cluster with auth_enabled: true (root token in DIR/data/node1/root.token)",
    )
    start.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="node i gets HTTP base+3(i-1), gossip +1, sync +2 (0: any free ports)",
    )
    start.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the cluster"
    )
    stop = sub.add_parser("stop", parents=[common], help="stop nodes gracefully (SIGTERM)")
    stop.add_argument("node", nargs="*", help="nodes to stop (default: all)")
    sub.add_parser("status", parents=[common], help="show each node; exit 3 unless all are up")
    kill = sub.add_parser("kill", parents=[common], help="SIGKILL one node")
    kill.add_argument("node", help="node name or number: node2 or 2")
    restart = sub.add_parser("restart", parents=[common], help="start one node again")
    restart.add_argument("node", help="node name or number: node2 or 2")
    restart.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for it"
    )
    restart.add_argument(
        "--no-wait", action="store_true", help="return once healthy, before the others see it"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cluster = Cluster(Path(args.dir), auth=getattr(args, "auth", False))
    try:
        if args.command == "start":
            if args.n is not None and args.n < 1:
                raise UsageError("-n must be at least 1")
            if not 0 <= args.base_port <= 65535:
                raise UsageError("--base-port must be between 0 and 65535")
            cluster.start(args.n, base_port=args.base_port, timeout=args.timeout)
            token = Path(args.dir) / "data" / "node1" / "root.token"
            if token.exists():
                print(f'root token: {token} (export KVS_TOKEN="$(cat {token})")')
            print(f"stop it with: {Path(sys.argv[0]).name} stop --dir {args.dir}")
        elif args.command == "stop":
            cluster.stop(*args.node)
        elif args.command == "kill":
            cluster.kill(args.node)
        elif args.command == "restart":
            cluster.restart(args.node, timeout=args.timeout, wait_cluster=not args.no_wait)
        elif args.command == "status":
            rows = cluster.status()
            print(f"{'NODE':8} {'PID':>8} {'HEALTH':>6} {'ALIVE':>5}  URL")
            for row in rows:
                pid = str(row.pid) if row.pid is not None else "-"
                health = str(row.health) if row.health is not None else "-"
                alive = str(row.members_alive) if row.members_alive is not None else "-"
                print(f"{row.name:8} {pid:>8} {health:>6} {alive:>5}  {row.url}")
            up = sum(row.up for row in rows)
            print(f"{up} of {len(rows)} nodes up")
            return EXIT_OK if up == len(rows) else EXIT_DOWN
    except UsageError as exc:
        print(f"cluster.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LauncherError as exc:
        print(f"cluster.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("cluster.py: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
