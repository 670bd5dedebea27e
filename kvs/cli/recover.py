"""`kvs admin recover [CONFIG]`: a fresh root token for an administrator locked out (every
token expired or lost), on the node's host, by whoever can read the node's config.

Possession of the config, and so of the cluster secret, is the proof (see
docs/security.md, "Admin recovery"). The token goes to stdout and nothing else does;
messages go to stderr.

- Node running (its store is in use): `POST /api/admin/recover` to the node's own address
  in its own scheme (kvs/cli/local.py), proving the secret with a timestamped, single-use
  HMAC bound to the node's id (kvs/auth/recovery.py). The node issues and audits it.
- Node stopped: the store is opened here and the token issued and audited the way the node
  does (kvs/node.py `Node.recover_offline`); the node accepts it once it starts (and, with a
  cluster secret, every node of the cluster does once it has replicated).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kvs.cli.client import positive_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ADMIN_EXAMPLES = """\
examples:
  kvs admin recover config.yaml > root.token
  kvs admin recover /etc/kvs/node1.yaml
"""


def register_admin(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="administrator tools run on a node's host")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    recover = admin_sub.add_parser(
        "recover",
        help="print a fresh root token (needs read access to the node's config)",
        description="Print a fresh root-scoped token on stdout, whether the node runs or not.\n"
        "Run it on the node's host: reading the config (its cluster secret) is the proof.\n"
        "The recovery is written to the node's audit log.",
        epilog=ADMIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recover.add_argument("config", nargs="?", default="config.yaml", help="the node's config")
    recover.add_argument(
        "--timeout", type=positive_seconds, default=10.0, help="seconds to wait for a running node"
    )
    recover.set_defaults(func=cmd_recover)


def _say(message: str) -> None:
    print(f"kvs: {message}", file=sys.stderr)


def cmd_recover(args: argparse.Namespace) -> int:
    from kvs import config as config_mod
    from kvs.store.layout import DATA_FILE, in_use

    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        _say(str(exc))
        return EXIT_USAGE
    if not config.auth_enabled:
        _say(f"{args.config}: auth_enabled is false on this node: no token is needed")
        return EXIT_USAGE
    data = config.data_path
    if not (data / DATA_FILE).is_file():
        _say(f"{data} holds no store: start the node once (its first start makes a root token)")
        return EXIT_FAILED
    try:
        running = in_use(data)
    except OSError as exc:
        _say(f"cannot tell whether the node runs: {exc.strerror or exc}")
        return EXIT_FAILED
    issued = _ask_running(config, args.timeout) if running else _issue_offline(config)
    if issued is None:
        return EXIT_FAILED
    token, token_id, expires_at, how = issued
    print(token, flush=True)
    _say(f"issued root token {token_id} ({how}), valid until {_iso(expires_at)}; audited")
    return EXIT_OK


def _ask_running(config: Any, timeout: float) -> tuple[str, str, int, str] | None:
    import httpx

    from kvs.auth.recovery import RECOVER_HEADER, recover_proof
    from kvs.cli import local
    from kvs.client.operations import connection_failed
    from kvs.clock import system_wall_ms

    proof = recover_proof(config.primary_secret, config.node_id, system_wall_ms(), os.urandom(16))
    if proof is None:
        _say(
            "the node runs and has no cluster_secret to prove: stop it, then run"
            " `kvs admin recover` again (it then works on the stopped node's store)"
        )
        return None
    url = local.base_url(config) + "/api/admin/recover"
    try:
        response = httpx.post(
            url,
            headers={RECOVER_HEADER: proof},
            timeout=timeout,
            verify=local.trust(config),
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        _say(f"the node's store is in use but {connection_failed(url, exc).message}")
        return None
    except (OSError, ValueError) as exc:  # a certificate file that cannot be read
        _say(f"cannot check the node's certificate: {exc}")
        return None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or "token" not in body:
        message = body.get("error") if isinstance(body, dict) else None
        _say(f"the node refused: {response.status_code} {message or response.text[:200]}")
        return None
    return body["token"], str(body.get("id")), int(body.get("expires_at", 0)), "by the running node"


def _issue_offline(config: Any) -> tuple[str, str, int, str] | None:
    import trio

    from kvs.node import Node
    from kvs.store import StoreError

    try:
        issued = trio.run(Node(config).recover_offline)
    except (StoreError, OSError) as exc:
        _say(f"cannot open the stopped node's store: {exc}")
        return None
    return issued.token, issued.token_id, issued.expires_at, "in the stopped node's store"


def _iso(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
