"""The HTTP scaling curve as a PNG: requests/s by HTTP processes (`http_workers`), GET and
PUT, with etcd's figures as horizontal lines when the same run measured etcd.

`bench.py http --chart PATH` draws it at the end of a run; `bench.py chart REPORT.json PATH`
draws it again from a saved `--json` report. matplotlib is a benchmark-only dependency
(pyproject's `bench` extra, installed by `bench.py setup`): imported only here, and only
when a chart is asked for, so that everything else runs without it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OPS = ("GET", "PUT")
COLOURS = {"GET": "tab:blue", "PUT": "tab:orange"}
_WORKERS_TARGET = re.compile(r"kvs-(\d+)w")


class ChartError(RuntimeError):
    """No chart can be drawn; the message is one line that says why."""


def processes_of(target: str) -> int | None:
    """HTTP processes of a KVS target of `bench.py http`: `kvs` is the node alone (1),
    `kvs-Nw` the node with N (`--workers`); None for any other target."""
    if target == "kvs":
        return 1
    match = _WORKERS_TARGET.fullmatch(target)
    return int(match.group(1)) if match else None


def scaling_points(
    rps: Mapping[str, Mapping[str, float | None]],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    """From req/s by target and operation: each operation's (processes, req/s) points,
    sorted by processes, and etcd's req/s by operation. A target or operation without a
    figure (skipped, failed) has no point; raises ChartError when no KVS figure is left."""
    curves: dict[str, list[tuple[int, float]]] = {op: [] for op in OPS}
    etcd: dict[str, float] = {}
    for target, by_op in rps.items():
        count = processes_of(target)
        for op in OPS:
            value = by_op.get(op)
            if not value or value <= 0:
                continue
            if count is not None:
                curves[op].append((count, float(value)))
            elif target == "etcd":
                etcd[op] = float(value)
    curves = {op: sorted(points) for op, points in curves.items() if points}
    if not curves:
        raise ChartError("nothing to draw: the report has no KVS req/s figure (kvs, kvs-Nw)")
    return curves, etcd


def rps_from_report_json(data: Any) -> dict[str, dict[str, float | None]]:
    """Req/s by target and operation from a `bench.py http --json` report (the medians)."""
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, dict):
        raise ChartError("not a `bench.py http --json` report: it has no 'rows'")
    out: dict[str, dict[str, float | None]] = {}
    for target, row in rows.items():
        results = row.get("results") if isinstance(row, dict) else None
        if isinstance(results, dict):
            out[target] = {op: r.get("rps") for op, r in results.items() if isinstance(r, dict)}
    return out


def require_matplotlib() -> None:
    """Fail early, in one line, before a long run whose chart could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartError(
            "--chart needs matplotlib: run `python scripts/bench.py setup`"
            " (or `.venv/bin/pip install -e '.[bench]'`)"
        ) from None


def draw_scaling_chart(
    rps: Mapping[str, Mapping[str, float | None]], path: Path, subtitle: str = ""
) -> str:
    """Draw the chart into `path` (PNG); return a one-line summary of what it shows."""
    curves, etcd = scaling_points(rps)
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    counts = sorted({n for points in curves.values() for n, _ in points})
    top = {n: max(v for points in curves.values() for m, v in points if m == n) for n in counts}
    for op, points in curves.items():
        xs, ys = [n for n, _ in points], [v for _, v in points]
        ax.plot(xs, ys, marker="o", color=COLOURS[op], label=f"KVS {op}")
        base = dict(points).get(1)
        for n, v in points:
            label = f"{v:,.0f}" + (f"\n({v / base:.2f}x)" if base and n != 1 else "")
            above = v >= top[n]  # the higher operation's label above its point, the other below
            ax.annotate(
                label,
                (n, v),
                textcoords="offset points",
                xytext=(0, 8 if above else -10),
                ha="center",
                va="bottom" if above else "top",
                fontsize=8,
            )
    for op, value in etcd.items():
        ax.axhline(
            value, color=COLOURS[op], linestyle="--", alpha=0.7, label=f"etcd {op} ({value:,.0f})"
        )
    ax.set_xticks(counts)
    ax.set_xlim(min(counts) - 0.5, max(counts) + 0.5)
    high = max([v for p in curves.values() for _, v in p] + list(etcd.values()))
    ax.set_ylim(-0.1 * high, 1.25 * high)  # room below 0 for the lower labels; no tick there
    ax.set_xlabel("HTTP processes (http_workers: the node and its workers)")
    ax.set_ylabel("requests/s (median of the runs)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 0 else ""))
    ax.set_title("KVS HTTP scaling" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # clear of the points
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    shown = [
        f"{op} " + ", ".join(f"{n}: {v:,.0f}" for n, v in points) for op, points in curves.items()
    ]
    shown += [f"etcd {op} {v:,.0f}" for op, v in etcd.items()]
    return f"chart {path}: " + "; ".join(shown)


def run_subtitle(settings: Mapping[str, Any], machine: Mapping[str, str]) -> str:
    """How the figures were measured, in one line under the title."""
    parts = [
        f"{settings.get('connections', '?')} connections",
        f"{settings.get('duration', '?')} s x {settings.get('repeat', '?')} runs",
        str(settings.get("loadgen", "?")),
    ]
    if "nproc" in machine:
        parts.append(f"{machine['nproc']} CPUs")
    if "kvs code" in machine:
        parts.append(f"code {machine['kvs code'].split()[0]}")
    if "CPU busy before the run" in machine:  # other work on the machine lowers every figure
        parts.append(f"machine {machine['CPU busy before the run']} busy before the run")
    return ", ".join(parts)


# ---------------------------------------------------------------- the `chart` subcommand


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("report", type=Path, help="a report saved by `bench.py http --json PATH`")
    p.add_argument("png", type=Path, help="where the chart goes")


def cmd_chart(args: argparse.Namespace) -> int:
    """Draw the scaling chart of a saved report; exit 2 with one line when it cannot."""
    try:
        data = json.loads(args.report.read_text())
        rps = rps_from_report_json(data)
        subtitle = run_subtitle(data.get("settings", {}), data.get("machine", {}))
        print(draw_scaling_chart(rps, args.png, subtitle), file=sys.stderr)
    except (OSError, ValueError, ChartError) as exc:
        print(f"bench.py chart: {exc}", file=sys.stderr)
        return 2
    return 0
