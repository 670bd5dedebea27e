"""Security subcommands: `kvs audit verify [CONFIG] [--data-dir DIR]` and
`kvs join URL --token T [CONFIG]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SUBCOMMANDS = {"audit", "join"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="check a node's tamper-evident log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="verify the whole keyed hash chain (name the first broken entry) and show what "
        "peers reported of their chains and of this node's",
    )
    verify.add_argument(
        "config", nargs="?", help="the node's config: its cluster_secret keys the chain"
    )
    verify.add_argument("--data-dir", help="the node's data_dir (default: the config's)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=cmd_audit_verify)

    join = subparsers.add_parser(
        "join",
        help="write a config that joins an existing cluster (asks it for the cluster secret)",
    )
    join.add_argument("url", help="an existing node's HTTP(S) address, e.g. http://10.0.0.1:8080")
    join.add_argument("config", nargs="?", help="the config to write (default config.yaml)")
    # `kvs join URL --token T CONFIG`: argparse cannot take a positional after an option that
    # follows the first positional, so --token takes the config too when it comes last.
    join.add_argument(
        "--token",
        required=True,
        nargs="+",
        metavar="TOKEN [CONFIG]",
        help="a token with admin:cluster:bootstrap",
    )
    join.add_argument("--port", type=int, default=8080, help="this node's HTTP port")
    join.add_argument("--cacert", help="CA certificate to verify an HTTPS node with")
    join.set_defaults(func=cmd_join)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from kvs import config as config_mod
    from kvs.audit import audit_key, verify_dir
    from kvs.sync.witness import read_report

    key = None
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.config is not None:
        try:
            config = config_mod.load(args.config)
        except config_mod.ConfigError as exc:
            print(f"kvs: {exc}", file=sys.stderr)
            return EXIT_USAGE
        key = audit_key(config.cluster_secret)
        data_dir = data_dir or config.data_path
    if data_dir is None:
        print("kvs: audit verify needs the node's CONFIG (or --data-dir)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = verify_dir(data_dir, key)
    except FileNotFoundError as exc:
        print(f"kvs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # lmdb errors: a damaged or foreign directory
        print(f"kvs: cannot read the audit log: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if result.needs_key:
        print(
            f"kvs: entry {result.first_bad} on is keyed: pass the node's CONFIG "
            f"(its cluster_secret keys the chain); {result.entries} unkeyed entries verify",
            file=sys.stderr,
        )
        return EXIT_USAGE
    witness = read_report(data_dir)
    if args.json:
        print(json.dumps({**result.to_json(), "witness": witness}))
    else:
        _print_verdict(result, witness)
    ok = result.ok and (witness is None or witness["ok"])
    return EXIT_OK if ok else EXIT_FAILED


def _print_verdict(result: Any, witness: dict[str, Any] | None) -> None:
    """The chain's check, then each peer's (see docs/operations.md)."""
    if result.ok:
        keyed = "keyed" if result.keyed else "NOT keyed (no cluster_secret)"
        sealed = f", the first {result.unkeyed_entries} unkeyed (sealed)" * bool(
            result.unkeyed_entries
        )
        print(
            f"audit log OK: {result.entries} entries, {keyed}{sealed}, "
            f"last hash {result.last_hash[:16]}..."
        )
    else:
        print(
            f"audit log BROKEN at entry {result.first_bad}: {result.reason} "
            f"({result.entries} entries before it verify)"
        )
    if witness is None:
        print("peers: none has exchanged chain heads with this node yet")
        return
    for peer, seen in witness["peers"].items():
        state = "OK" if not seen["findings"] else f"{seen['findings']} FINDINGS"
        print(f"peer {peer}: its chain {state}, {seen['entries']} entries when last seen")
        for note in seen["notes"]:
            print(f"  - {note}")
    for peer, said in witness["about_this_node"].items():
        print(f"peer {peer} REPORTS about this node's chain: {said['last']}")


def cmd_join(args: argparse.Namespace) -> int:
    import httpx

    from kvs import config as config_mod

    token, *rest = args.token
    configs = [c for c in (args.config, *rest) if c]
    if len(configs) > 1:
        print("kvs: join takes one URL, one token and at most one CONFIG", file=sys.stderr)
        return EXIT_USAGE
    config_path = configs[0] if configs else "config.yaml"
    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    verify: Any = args.cacert or True
    try:
        response = httpx.post(
            f"{url}/auth/cluster-bootstrap",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
            verify=verify,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        print(f"kvs: cannot reach {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text[:200]
        print(f"kvs: {url} refused: {response.status_code} {message}", file=sys.stderr)
        return EXIT_FAILED
    answer = response.json()
    try:
        text = config_mod.default_config_text(
            port=args.port, cluster_secret=answer["cluster_secret"]
        )
    except (KeyError, TypeError):
        print(f"kvs: {url} gave an unexpected answer", file=sys.stderr)
        return EXIT_FAILED
    text = text.replace("seed_nodes: []", f'seed_nodes: ["{answer["seed"]}"]', 1)
    path = Path(config_path)
    try:
        config_mod.write_text_private(path, text)
    except (config_mod.ConfigError, OSError) as exc:
        print(f"kvs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path}: joins {answer['seed']} (cluster secret received; file mode 0600)")
    return EXIT_OK
