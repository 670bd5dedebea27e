"""A seeded hostile HTTP fuzzer: real node processes, anonymous and authenticated abuse, and
a monitor that says when one request took a node down (issue 12).

    python -m kvs.testing.fuzz_http --seconds 60 [--seed N] [--nodes 3]
    python -m kvs.testing.fuzz_http --seed N --replay 12,57      one interaction at a time
    python -m kvs.testing.fuzz_http --seed N --show 12           its bytes, for a reproduction

The parts:

1. The inputs (kvs.testing.http_inputs): interaction `n` of a seed, always the same bytes.
2. The runner (here). Starts a cluster (kvs.testing.http_cluster) with auth on, seeds users,
   a group, tokens of several scopes, public keys and private keys (0xF00, owned by one
   user, their values holding a random marker), then runs interactions on many connections
   at once for the given time and judges every answer: no 5xx but the allowed 503s, 4xx
   errors in JSON (or the HTTP parser's own bare 400/408/413/431/505), HTTP/2 refused with
   GOAWAY(HTTP_1_1_REQUIRED), no upgrade accepted, deadlines kept (when the node has them),
   the marker never shown to a caller who may not read it, and a small model of the writes
   only the fuzzer makes, checked on every node once replication has settled.
3. The monitor (kvs.testing.http_monitor): every node stays up, /health answers within a
   second, RSS stays under 4x idle, no traceback on stderr; each failure names the
   interactions in flight on that node when it was seen, for `--replay`.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from kvs.testing.http_cluster import NodeCluster, supported_config_keys
from kvs.testing.http_context import Context
from kvs.testing.http_inputs import KINDS, Generator, describe
from kvs.testing.http_judge import Stats
from kvs.testing.http_monitor import (
    Finding,
    FindingGroup,
    Findings,
    Monitor,
    NodeWatch,
)
from kvs.testing.http_plan import (
    TOKEN_SCOPES,
    Deadlines,
    Plan,
)
from kvs.testing.http_runner import Options, Runner


@dataclass
class Report:
    seed: int
    seconds: float
    nodes: int
    stats: Stats
    findings: list[FindingGroup]
    watch: list[NodeWatch]
    interactions: int
    deadlines: Deadlines
    replay_hint: str

    @property
    def ok(self) -> bool:
        return not self.findings

    def text(self) -> str:
        lines = [
            f"fuzz_http report: seed={self.seed} seconds={self.seconds:.1f} nodes={self.nodes} "
            f"interactions={self.interactions} connections={self.stats.connections} "
            f"answers={sum(self.stats.statuses.values())}",
            "interactions by kind: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.kinds.items())),
            "statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.statuses.items())),
            "statuses by kind: "
            + "; ".join(
                f"{kind} "
                + " ".join(
                    f"{status}={n}"
                    for (k, status), n in sorted(self.stats.kind_statuses.items())
                    if k == kind
                )
                for kind in sorted({k for k, _ in self.stats.kind_statuses})
            ),
            f"connect errors: {self.stats.connect_errors}; acknowledged model writes: "
            f"{self.stats.model_acked}; deadlines judged: header={self.deadlines.header} "
            f"body={self.deadlines.body}",
        ]
        for i, w in enumerate(self.watch):
            lines.append(
                f"node{i + 1}: RSS idle {w.idle_rss_kb / 1024:.0f} MiB max {w.max_rss_kb / 1024:.0f} "
                f"MiB ({w.max_rss_kb / max(1, w.idle_rss_kb):.1f}x); /health max "
                f"{w.max_health_s * 1000:.0f} ms over {w.health_checks} checks; exits {w.deaths}"
            )
        if not self.findings:
            lines.append("no failures")
        else:
            lines.append(f"{len(self.findings)} distinct failure(s):")
        for n, group in enumerate(self.findings, 1):
            lines.append(
                f"[{n}] {group.kind}: {group.signature} (x{group.count}, nodes "
                f"{sorted(x + 1 for x in group.nodes)}, interactions {group.indices or 'see detail'})"
            )
            lines.extend("      " + ln for ln in group.detail.splitlines()[:24])
        lines.append(self.replay_hint)
        return "\n".join(lines)


# --- setup ----------------------------------------------------------------------------------------


def seed_cluster(cluster: NodeCluster, plan: Plan) -> Context:
    """Users, a group, tokens of each scope, public and private keys; waits until every node
    has them (replication)."""
    import httpx

    ctx = Context(ports=[n.port for n in cluster.nodes])
    root = cluster.root_token()
    ctx.tokens["root"] = root
    base = cluster.nodes[0].url

    with httpx.Client(timeout=30.0, trust_env=False) as client:

        def call(method: str, path: str, token: str, body: Any = None, want: int = 200) -> Any:
            r = client.request(
                method, base + path, headers={"Authorization": f"Bearer {token}"}, json=body
            )
            if r.status_code != want:
                raise RuntimeError(f"setup: {method} {path} answered {r.status_code}: {r.text}")
            return r.json() if r.content else None

        for name in TOKEN_SCOPES:
            user = call("POST", "/api/users", root, {"nickname": f"fz-{plan.tag}-{name}"}, 201)
            ctx.users[name] = user["uuid"]
        group = call(
            "POST",
            "/api/groups",
            root,
            {"groupname": f"fz-{plan.tag}-team", "members": [ctx.users["writer"]]},
            201,
        )
        ctx.groups["team"] = group["uuid"]
        for name, scopes in TOKEN_SCOPES.items():
            issued = call(
                "POST",
                "/api/tokens",
                root,
                {"user_uuid": ctx.users[name], "scopes": scopes, "expires_in": "6h"},
                201,
            )
            ctx.tokens[name] = issued["token"]
            ctx.token_ids[name] = issued["id"]
        writer, owner = ctx.tokens["writer"], ctx.tokens["owner"]
        for n, key in enumerate(plan.public_keys):
            call("PUT", f"/kv/{quote(key)}", writer, {"public": n, "note": "nothing secret"})
        # Others may create under pub/a: the owner puts a private key there.
        parent = plan.public_keys[0].rsplit("/", 1)[0] + "/a"
        call("PUT", f"/kv/{quote(parent)}/metadata", writer, {"permissions": 0xF39})
        for n, key in enumerate(plan.private_keys + plan.deleted_private_keys):
            call("PUT", f"/kv/{quote(key)}", owner, {"secret": plan.marker, "n": n})
            call("PUT", f"/kv/{quote(key)}/metadata", owner, {"permissions": 0xF00})
            call("PUT", f"/kv/{quote(key)}", owner, {"secret": plan.marker, "n": n, "v": 2})
        for key in plan.deleted_private_keys:
            call("DELETE", f"/kv/{quote(key)}", owner, want=204)
        # Every node has it all: the last private key readable by its owner everywhere,
        # the deleted ones gone everywhere, and the tokens work everywhere.
        deadline = time.monotonic() + 30
        last = plan.private_keys[-1]
        for node in cluster.nodes:
            while True:
                r1 = client.get(
                    f"{node.url}/kv/{quote(last)}", headers={"Authorization": f"Bearer {owner}"}
                )
                r2 = client.get(
                    f"{node.url}/kv/{quote(plan.deleted_private_keys[-1])}",
                    headers={"Authorization": f"Bearer {owner}"},
                )
                if r1.status_code == 200 and r2.status_code == 404:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"setup: {node.name} never got the seeded keys")
                time.sleep(0.1)
    return ctx


# --- entry points ---------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def node_settings(options: Options) -> tuple[dict[str, object], Deadlines]:
    """The settings every node's config gets, and the deadlines judged: the HTTP deadlines
    where this node has the keys, else those assumed by `--judge-deadlines`, else none."""
    out = options.out
    supported = supported_config_keys()
    deadlines = Deadlines()
    settings: dict[str, object] = {"tamper_logging_enabled": True, "sync_interval": 1.0}
    if options.http_workers > 1:
        settings["http_workers"] = options.http_workers
    if options.header_timeout is not None and "http_header_timeout" in supported:
        settings["http_header_timeout"] = options.header_timeout
        deadlines.header = options.header_timeout
    if options.body_timeout is not None and "http_body_timeout" in supported:
        settings["http_body_timeout"] = options.body_timeout
        deadlines.body = options.body_timeout
    assumed = options.assume_deadlines or Deadlines()
    if deadlines.header is None and assumed.header is not None:
        deadlines.header = assumed.header
        out(f"fuzz_http: no http_header_timeout here; judging headers against {assumed.header} s")
    if deadlines.body is None and assumed.body is not None:
        deadlines.body = assumed.body
        out(f"fuzz_http: no http_body_timeout here; judging bodies against {assumed.body} s")
    if deadlines.header is None and deadlines.body is None:
        out(
            "fuzz_http: this node has no http_header_timeout/http_body_timeout: deadlines not judged"
        )
    return settings, deadlines


def stop_nodes(cluster: NodeCluster, findings: Findings) -> None:
    """SIGTERM every node still up; one that does not stop cleanly is a finding."""
    for i, node in enumerate(cluster.nodes):
        if not node.alive():
            continue
        code, _ = node.stop()
        if code is None:
            findings.add(
                Finding(
                    "shutdown",
                    "SIGTERM did not stop the node within 30 s",
                    -1,
                    i,
                    node.stderr_tail(10),
                )
            )
        elif code != 0:
            findings.add(
                Finding(
                    "shutdown", f"exit status {code} after SIGTERM", -1, i, node.stderr_tail(10)
                )
            )


def run(options: Options) -> Report:
    """Start the nodes, seed them, fuzz for `options.seconds` (or replay indices), judge,
    stop the nodes; the report lists every distinct failure."""
    out = options.out
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**63)
    out(f"fuzz_http: seed={seed} (replay with --seed {seed})")
    raise_fd_limit()
    settings, deadlines = node_settings(options)
    per_node: list[dict[str, object]] = [{} for _ in range(options.nodes)]
    if options.nodes > 1:
        per_node[-1]["allow_anonymous_read"] = True  # anonymous paths, on one node
    gen = Generator(seed, options.nodes, deadlines=deadlines, kinds=options.kinds)
    made_dir = options.directory is None
    directory = options.directory or Path(tempfile.mkdtemp(prefix="kvs-fuzz-http-"))
    started = time.monotonic()
    cluster = NodeCluster(directory, options.nodes, settings=settings, per_node=per_node)
    with cluster:
        cluster.start()
        ctx = seed_cluster(cluster, gen.plan)
        gen.resolve = ctx.resolve
        runner = Runner(options, cluster, gen, ctx)
        monitor = Monitor(
            cluster.nodes,
            runner.findings,
            runner.tracker,
            restart=options.restart,
            health_limit=options.health_limit,
            rss_factor=options.rss_factor,
        )
        monitor.measure_idle()
        runner.is_down = lambda node: monitor.down[node].is_set()
        monitor.start()
        fuzz_started = time.monotonic()
        try:
            if options.replay:
                trio.run(runner.replay, list(options.replay))
                time.sleep(1.5)  # let the monitor see what the replay did
            else:
                trio.run(runner.fire, options.seconds, options.workers)
        finally:
            fuzz_seconds = time.monotonic() - fuzz_started
            runner.check_model()  # on the nodes that are up
            monitor.stop()
            runner.tracker.close()
        stop_nodes(cluster, runner.findings)
        monitor.stop()
    hint = (
        f"replay: python -m kvs.testing.fuzz_http --seed {seed} --nodes {options.nodes} "
        f"--replay <interaction,...>   (logs in {directory})"
    )
    report = Report(
        seed,
        fuzz_seconds,
        options.nodes,
        runner.stats,
        runner.findings.sorted(),
        monitor.watch,
        runner.ran,
        deadlines,
        hint,
    )
    out(report.text())
    out(f"fuzz_http: total {time.monotonic() - started:.1f} s")
    if made_dir and not options.keep and report.ok:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvs.testing.fuzz_http",
        description="Seeded hostile HTTP fuzzer against real KVS node processes.",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=12, help="interactions at once")
    parser.add_argument("--dir", type=Path, default=None, help="where configs and logs go")
    parser.add_argument("--keep", action="store_true", help="keep the directory after success")
    parser.add_argument(
        "--kinds", default="", help=f"only these kinds (comma list of {','.join(KINDS)})"
    )
    parser.add_argument("--skip", default="", help="not these kinds (comma list)")
    parser.add_argument("--replay", default="", help="run only these interaction indices, in order")
    parser.add_argument("--no-restart", action="store_true", help="leave a crashed node down")
    parser.add_argument("--http-workers", type=int, default=1, help="each node's http_workers")
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--body-timeout", type=float, default=3.0)
    parser.add_argument(
        "--judge-deadlines",
        default="",
        metavar="HEADER,BODY",
        help="judge deadlines (seconds) even where the node has no http_*_timeout key",
    )
    parser.add_argument("--show", default="", help="print interactions (indices) and exit")
    args = parser.parse_args(argv)
    kinds = [k for k in (args.kinds.split(",") if args.kinds else KINDS) if k]
    skip = set(filter(None, args.skip.split(",")))
    unknown = (set(kinds) | skip) - set(KINDS)
    if unknown:
        parser.error(f"unknown kind(s): {sorted(unknown)}")
    kinds = [k for k in kinds if k not in skip]
    if args.show:
        if args.seed is None:
            parser.error("--show needs --seed")
        gen = Generator(args.seed, args.nodes, kinds=kinds)
        for index in _indices(args.show):
            print(describe(gen.interaction(index)))
        return 0
    options = Options(
        seconds=args.seconds,
        seed=args.seed,
        nodes=args.nodes,
        workers=args.workers,
        directory=args.dir,
        keep=args.keep,
        kinds=kinds,
        replay=_indices(args.replay) if args.replay else (),
        restart=not args.no_restart,
        http_workers=args.http_workers,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        assume_deadlines=_deadlines(args.judge_deadlines),
    )
    return 0 if run(options).ok else 1


def _deadlines(text: str) -> Deadlines | None:
    if not text:
        return None
    header, _, body = text.partition(",")
    return Deadlines(float(header) if header else None, float(body) if body else None)


def _indices(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


if __name__ == "__main__":
    sys.exit(main())
