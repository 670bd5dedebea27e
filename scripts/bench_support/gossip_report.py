"""What `bench.py gossip` measured, and its markdown rendering."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

from bench_support.gossip_real import RealRun, median
from bench_support.gossip_sim import FpResult, SimSettings, SizeResult, suspicion_timeouts

TARGET_DETECT_RATIO = 0.5  # KVS failure detection (all nodes, N=10) <= half of serf's
TARGET_TRAFFIC_N = 100
TARGET_TRAFFIC_BPS = 2000.0  # per-node gossip bytes sent per second at N=100
TARGET_FP_LOSS = 0.10


@dataclass
class GossipReport:
    command: str
    machine: dict[str, str]
    membership: dict[str, float]  # the shipped defaults the simulator ran
    sim: SimSettings | None = None
    sizes: list[SizeResult] = field(default_factory=list)
    fps: list[FpResult] = field(default_factory=list)
    sim_wall_s: float = 0.0
    real_n: int = 0
    real_repeat: int = 0
    real: list[RealRun] = field(default_factory=list)
    real_wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def real_runs(self, system: str) -> list[RealRun]:
        return [r for r in self.real if r.system == system]


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _rounds(seconds: float | None, probe_interval: float) -> str:
    return "n/a" if seconds is None else f"{seconds / probe_interval:.1f}"


def _mean_max(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    return f"{statistics.fmean(values):,.{digits}f} ({max(values):,.{digits}f})"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _size_failed(r: SizeResult) -> str:
    return f"failed: {r.error}" if r.error else ""


def render(report: GossipReport) -> str:
    out = ["## KVS gossip (membership) benchmark", ""]
    if report.sim is not None:
        out += _render_sim(report)
    if report.real_n:
        out += _render_real(report)
    out += _render_targets(report)
    if report.notes:
        out += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    out += ["", f"Command: `{report.command}`", ""]
    out += [f"- {k}: {v}" for k, v in report.machine.items()]
    return "\n".join(out)


def _render_sim(report: GossipReport) -> list[str]:
    s = report.sim
    assert s is not None
    m = report.membership
    pi = m["probe_interval"]
    config = ", ".join(f"{k} {v:g}" for k, v in m.items())
    out = [
        "### Simulator (deterministic; simulated seconds)",
        "",
        f"Whole KVS nodes (`kvs.testing.cluster.SimCluster`) with the shipped default membership"
        f" config: {config}. Network: latency {s.latency * 1000:g} ms + uniform jitter"
        f" [0, {s.jitter * 1000:g} ms), no loss unless stated. Seed {s.seed} (same seed, same"
        f" figures: `--seed {s.seed}`). A round is one probe_interval ({pi:g} s). Times are"
        f" polled every 0.05 s. Wall time of the simulator part: {report.sim_wall_s:.0f} s.",
        "",
        "#### Join",
        "",
        "| N | cluster formation: N nodes started through one seed → every node knows all N"
        " alive, s (rounds) | one more node joins → known alive by every node and knows all,"
        " s (rounds) | wall s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in report.sizes:
        if r.formation_s is None:
            out.append(f"| {r.n} | {_size_failed(r) or 'n/a'} | | {r.wall_s:.0f} |")
            continue
        out.append(
            f"| {r.n} | {r.formation_s:.2f} ({_rounds(r.formation_s, pi)})"
            f" | {_f(r.join_one_s)} ({_rounds(r.join_one_s, pi)}) | {r.wall_s:.0f} |"
        )
    out += [
        "",
        "#### Failure detection (kill -9 of one node; several nodes killed one after another)",
        "",
        "| N | kills | first suspect, s (median) | first dead, s (median) | dead at every live"
        " node, s: median (max) | rounds (median) | suspicion timeout min–max, s |"
        " live nodes declared dead |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.sizes:
        low, high = suspicion_timeouts(r.n)
        alls = r.all_dead_times
        med = statistics.median(alls) if alls else None
        first_s = [d.first_suspect_s for d in r.detections if d.first_suspect_s is not None]
        first_d = [d.first_dead_s for d in r.detections if d.first_dead_s is not None]
        missing = len(r.detections) - len(alls)
        all_cell = f"{_f(med)} ({_f(max(alls) if alls else None)})"
        if missing:
            all_cell += f", {missing} NEVER"
        fp = f"{r.false_dead}" + (f" ({', '.join(r.false_dead_nodes)})" if r.false_dead else "")
        out.append(
            f"| {r.n} | {len(r.detections)} | {_f(median(first_s))} | {_f(median(first_d))}"
            f" | {all_cell} | {_rounds(med, pi)} | {low:.1f}–{high:.1f} | {fp} |"
        )
    out += [
        "",
        "#### Steady-state traffic sent per node",
        "",
        "Per second, mean over nodes (max node in brackets), from the simulated network's"
        " per-host counters over a window of whole push-pull periods (the period grows above"
        " 32 nodes) that starts after every node's first push-pull."
        " Bytes are payload (msgpack, sealed: nonce, time and AEAD tag); IP/UDP/TCP headers are not counted"
        " (an IPv4+UDP header adds 28 bytes per datagram). Gossip = UDP + membership"
        " push-pull over TCP; the replication worker's TCP traffic (anti-entropy sync) is"
        " shown apart, for context.",
        "",
        "| N | window s | datagrams/s | UDP bytes/s | push-pull TCP bytes/s | gossip total"
        " bytes/s | push-pulls in window | replication TCP bytes/s (not gossip) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.sizes:
        t = r.traffic
        if t is None:
            out.append(f"| {r.n} | {_size_failed(r) or 'n/a'} | | | | | | |")
            continue
        out.append(
            f"| {r.n} | {t.seconds:.0f} | {_mean_max(t.datagrams, 2)} | {_mean_max(t.udp_bytes)}"
            f" | {_mean_max(t.tcp_bytes)} | {_mean_max(t.total_bytes)} | {t.push_pulls}"
            f" | {_mean_max(t.other_tcp_bytes)} |"
        )
    if report.fps:
        out += [
            "",
            "#### False positives under random datagram loss (nothing is killed)",
            "",
            "The loss applies to every datagram in both directions (push-pull streams are"
            ' TCP and lose nothing); the cluster formed without loss first. A "dead" verdict'
            " counts once per (observer, subject).",
            "",
            "| N | loss | simulated s | live nodes declared dead: verdicts (nodes) | suspicions"
            " (verdicts) | refutations | views agree again after the loss, s | wall s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for f in report.fps:
            nodes = f" ({', '.join(f.false_dead_nodes)})" if f.false_dead_nodes else ""
            again = _f(f.reconverged_s) if not f.error else f"failed: {f.error}"
            out.append(
                f"| {f.n} | {f.loss:.0%} | {f.seconds:.0f} | {f.false_dead}{nodes}"
                f" | {f.suspicions} | {f.refutations} | {again} | {f.wall_s:.0f} |"
            )
    return [*out, ""]


def _render_real(report: GossipReport) -> list[str]:
    serf, kvs = report.real_runs("serf"), report.real_runs("kvs")
    n = report.real_n
    out = [
        f"### Real processes on 127.0.0.1 (N={n}, median of {report.real_repeat} fresh"
        " cluster(s); wall-clock seconds)",
        "",
        "Each cluster: start node 1, then spawn the other N-1 at once, each joining through"
        " node 1; poll every node's member list (serf: its RPC `members`, as `serf members`;"
        " KVS: GET /members/) until all list all N alive; then SIGKILL the last node and poll"
        " the others until every one reports it failed (serf) / dead (KVS). serf runs its"
        " default LAN profile (probe 1 s, suspicion_mult 4); KVS its shipped defaults."
        f" Wall time of this part: {report.real_wall_s:.0f} s.",
        "",
        "| metric | serf | kvs | kvs/serf |",
        "| --- | ---: | ---: | ---: |",
    ]

    def row(label: str, pick: Any) -> None:
        a = median([pick(r) for r in serf])
        b = median([pick(r) for r in kvs])
        ratio = f"{b / a:.2f}" if a and b is not None else "n/a"
        out.append(f"| {label} | {_f(a)} | {_f(b)} | {ratio} |")

    row(
        "process start-up: spawn → first answer (median joiner)",
        lambda r: statistics.median(r.startup_s) if r.startup_s else None,
    )
    row("join: joiners spawned → every node lists all N alive", lambda r: r.join_s)
    row("join: last node answering → every node lists all N alive", lambda r: r.join_after_ready_s)
    row("failure: kill -9 → first node reports it failed/dead", lambda r: r.first_detect_s)
    row("failure: kill -9 → every live node reports it failed/dead", lambda r: r.detect_s)
    for system, runs in (("serf", serf), ("kvs", kvs)):
        fps = sum(len(r.false_positives) for r in runs)
        if fps:
            shown = "; ".join(fp for r in runs for fp in r.false_positives[:5])
            out.append(
                f"| {system} false positives (live nodes reported failed) | {fps}: {shown} | | |"
            )
    out += ["", "Each run (join s / after-ready s / first detect s / all detect s):"]
    for r in report.real:
        fields = "/".join(
            _f(x) for x in (r.join_s, r.join_after_ready_s, r.first_detect_s, r.detect_s)
        )
        extra = f" — FAILED: {r.error}" if r.error else ""
        out.append(
            f"- {r.system}: {fields} (killed {r.victim}; poll sweep {r.sweep_s * 1000:.1f} ms"
            f" over {r.sweeps} sweeps; false positives {len(r.false_positives)}){extra}"
        )
    if not serf:
        out.append("- serf: not run (--no-serf, or not on PATH: `python scripts/bench.py setup`)")
    return [*out, ""]


def detect_ratio(report: GossipReport) -> float | None:
    serf = median([r.detect_s for r in report.real_runs("serf")])
    kvs = median([r.detect_s for r in report.real_runs("kvs")])
    if serf is None or kvs is None or report.real_n != 10:
        return None
    return kvs / serf


def _render_targets(report: GossipReport) -> list[str]:
    out = [
        "### Targets",
        "",
        "| metric | value | target | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    ratio = detect_ratio(report)
    if report.real_n and report.real_n != 10:
        label = f"failure detection by all nodes, kvs/serf (real processes; ran N={report.real_n}, target is at N=10)"
    else:
        label = "failure detection by all nodes at N=10, kvs/serf (real processes, medians)"
    out.append(
        f"| {label} | {_f(ratio)} | ≤ {TARGET_DETECT_RATIO:.2f}"
        f" | {_verdict(None if ratio is None else ratio <= TARGET_DETECT_RATIO)} |"
    )
    at_target = [f for f in report.fps if abs(f.loss - TARGET_FP_LOSS) < 1e-9]
    for f in at_target:
        ok = None if f.error and not f.false_dead else f.false_dead == 0
        out.append(
            f"| live nodes declared dead at {f.loss:.0%} loss, N={f.n}, {f.seconds / 60:g}"
            f" simulated min | {f.false_dead} | 0 | {_verdict(ok)} |"
        )
    if not at_target:
        out.append(f"| live nodes declared dead at {TARGET_FP_LOSS:.0%} loss | not run | 0 | n/a |")
    big = next((r for r in report.sizes if r.n == TARGET_TRAFFIC_N and r.traffic), None)
    value = statistics.fmean(big.traffic.total_bytes) if big and big.traffic else None
    out.append(
        f"| gossip bytes sent per node per second at N={TARGET_TRAFFIC_N} (simulator; UDP +"
        f" push-pull TCP payload, mean over nodes) | {_f(value, 0)}"
        f" | < {TARGET_TRAFFIC_BPS:,.0f}"
        f" | {_verdict(None if value is None else value < TARGET_TRAFFIC_BPS)} |"
    )
    return out


def report_json(report: GossipReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    out["detect_ratio_kvs_over_serf"] = detect_ratio(report)
    return out
