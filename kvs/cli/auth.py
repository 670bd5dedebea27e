"""Security subcommands: `kvs audit verify --data-dir DIR` and `kvs join URL --token T [CONFIG]`."""

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
        "verify", help="verify the whole hash chain; name the first broken entry"
    )
    verify.add_argument("--data-dir", required=True, help="the node's data_dir")
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
    from kvs.audit import verify_dir

    try:
        result = verify_dir(Path(args.data_dir))
    except FileNotFoundError as exc:
        print(f"kvs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # lmdb errors: a damaged or foreign directory
        print(f"kvs: cannot read the audit log: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result.to_json()))
    elif result.ok:
        print(f"audit log OK: {result.entries} entries, last hash {result.last_hash[:16]}...")
    else:
        print(
            f"audit log BROKEN at entry {result.first_bad}: {result.reason} "
            f"({result.entries} entries before it verify)"
        )
    return EXIT_OK if result.ok else EXIT_FAILED


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
