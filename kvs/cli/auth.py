"""Security subcommands: `kvs audit verify [CONFIG] [--data-dir DIR]`,
`kvs join URL --token T [CONFIG]` and `kvs admin recover [CONFIG]` (kvs/cli/recover.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kvs.cli.recover import register_admin
from kvs.client.env import TOKEN_ENV, TOKEN_HINT

SUBCOMMANDS = {"audit", "join", "admin"}
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

    # add_parser makes its parser with the subparsers' parser class; join's takes its
    # options and arguments in any order (IntermixedParser).
    plain, subparsers._parser_class = subparsers._parser_class, IntermixedParser
    try:
        join = _add_join(subparsers)
    finally:
        subparsers._parser_class = plain
    join.set_defaults(func=cmd_join)
    register_admin(subparsers)


def _add_join(subparsers: Any) -> argparse.ArgumentParser:
    join = subparsers.add_parser(
        "join",
        help="write a config that joins an existing cluster (asks it for the cluster secret)",
        description="Ask a running node for the cluster secret (with a token holding\n"
        "admin:cluster:bootstrap) and write a config that joins its cluster.\n"
        "Options and arguments may come in any order.",
        epilog=JOIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    join.add_argument("url", help="an existing node's HTTP(S) address, e.g. http://10.0.0.1:8080")
    join.add_argument("config", nargs="?", help="the config to write (default config.yaml)")
    join.add_argument(
        "--token", help=f"a token with admin:cluster:bootstrap (default ${TOKEN_ENV})"
    )
    join.add_argument("--port", type=int, default=8080, help="this node's HTTP port")
    join.add_argument(
        "--cacert",
        metavar="PATH",
        help="CA bundle (PEM) to check an https node with; written to the new config as"
        " tls_ca_file, so the new node checks its https seed with it too",
    )
    return join


JOIN_EXAMPLES = """\
examples:
  kvs join http://10.0.0.1:8080 --token "$ADMIN_TOKEN" node4.yaml
  kvs join https://10.0.0.1:8080 --token "$ADMIN_TOKEN" --cacert ca.pem --port 8090 node4.yaml
  kvs join https://10.0.0.1:8080 node4.yaml --port 8090 --token "$ADMIN_TOKEN"
"""


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser taking its options and positionals in any order (argparse's
    intermixed parsing: `kvs join URL --token T --port 8090 node4.yaml`). A plain parser
    takes the positionals in one run, so a positional after an option is refused."""

    _nested = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._nested:  # parse_known_intermixed_args calls us back: the plain parse
            return super().parse_known_args(args, namespace)
        self._nested = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._nested = False


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from kvs import config as config_mod
    from kvs.audit import audit_keys, verify_dir
    from kvs.sync.witness import read_report

    keys: tuple[bytes, ...] = ()
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.config is not None:
        try:
            config = config_mod.load(args.config)
        except config_mod.ConfigError as exc:
            print(f"kvs: {exc}", file=sys.stderr)
            return EXIT_USAGE
        keys = audit_keys(config.cluster_secrets)
        data_dir = data_dir or config.data_path
    if data_dir is None:
        print("kvs: audit verify needs the node's CONFIG (or --data-dir)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = verify_dir(data_dir, keys)
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
    from kvs.client.operations import connection_failed, resolve_verify

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"kvs: join needs --token (or ${TOKEN_ENV})", file=sys.stderr)
        return EXIT_USAGE
    config_path = args.config or "config.yaml"
    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        verify: Any = resolve_verify(args.cacert)
    except ValueError as exc:
        print(f"kvs: --cacert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        response = httpx.post(
            f"{url}/auth/cluster-bootstrap",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
            verify=verify,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        print(f"kvs: {connection_failed(url, exc).message}", file=sys.stderr)
        return EXIT_FAILED
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text[:200]
        hint = f" ({TOKEN_HINT})" if response.status_code == 401 else ""
        print(f"kvs: {url} refused: {response.status_code} {message}{hint}", file=sys.stderr)
        return EXIT_FAILED
    answer = response.json()
    try:
        text = config_mod.default_config_text(
            port=args.port, cluster_secret=answer["cluster_secret"]
        )
    except (KeyError, TypeError):
        print(f"kvs: {url} gave an unexpected answer", file=sys.stderr)
        return EXIT_FAILED
    seed = str(answer.get("seed", ""))
    if "://" not in seed and url.startswith("https://"):
        seed = "https://" + seed  # a node from before seeds had a scheme: ask it as we did
    text = text.replace("seed_nodes: []", f"seed_nodes: [{json.dumps(seed)}]", 1)
    if args.cacert:
        ca = json.dumps(str(Path(args.cacert).resolve()))
        text = text.replace("# tls_ca_file: ca.pem", f"tls_ca_file: {ca}", 1)
    path = Path(config_path)
    try:
        config_mod.write_text_private(path, text)
    except (config_mod.ConfigError, OSError) as exc:
        print(f"kvs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path}: joins {seed} (cluster secret received; file mode 0600)")
    return EXIT_OK
