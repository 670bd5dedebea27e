"""`bench.py chart`: the HTTP scaling chart drawn from a saved `bench.py http --json` report
(scripts/bench_support/chart.py), run as the command it is; no load generator runs here.

The drawing needs matplotlib (the `bench` extra): those tests are skipped without it. The
one-line refusal when matplotlib is missing is checked with a stand-in package that fails
to import, so it runs everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(target: str, get: float | None, put: float | None) -> dict[str, Any]:
    results = {
        op: {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0} for op, rps in (("GET", get), ("PUT", put))
    }
    return {"target": target, "results": {k: v for k, v in results.items() if v["rps"]}}


def chart(tmp_path: Path, report: Any, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    png = tmp_path / "out" / "chart.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "chart", str(saved), str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPTS.parent,
        env={**os.environ, **env},
    )
    return result, png


@pytest.fixture
def report() -> dict[str, Any]:
    return {
        "settings": {"connections": 32, "duration": 5.0, "repeat": 3, "loadgen": "wrk"},
        "machine": {"nproc": "2", "kvs code": "abc1234"},
        "rows": {
            "kvs-4w": row("kvs-4w", 9000.0, 3100.0),
            "kvs": row("kvs", 5000.0, 2000.0),
            "kvs-2w": row("kvs-2w", 8000.0, 3000.0),
            "etcd": row("etcd", 12000.0, 4000.0),
            "bare-hypercorn": row("bare-hypercorn", 20000.0, 18000.0),
            "kvs-auth": {"target": "kvs-auth", "results": {}, "note": "skipped (--skip)"},
        },
    }


def test_a_report_becomes_a_png_of_every_kvs_count_in_order_with_etcd(
    tmp_path: Path, report: dict[str, Any]
) -> None:
    pytest.importorskip("matplotlib")
    result, png = chart(tmp_path, report)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes().startswith(PNG_MAGIC)
    (summary,) = result.stderr.splitlines()
    assert summary == (
        f"chart {png}: GET 1: 5,000, 2: 8,000, 4: 9,000; PUT 1: 2,000, 2: 3,000, 4: 3,100;"
        " etcd GET 12,000; etcd PUT 4,000"
    )


def test_a_failed_target_and_a_missing_operation_draw_no_point(
    tmp_path: Path, report: dict[str, Any]
) -> None:
    pytest.importorskip("matplotlib")
    report["rows"]["kvs-2w"] = {"target": "kvs-2w", "results": {}, "note": "failed: timeout"}
    report["rows"]["kvs-4w"] = row("kvs-4w", 9000.0, None)
    del report["rows"]["etcd"]
    result, png = chart(tmp_path, report)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert result.stderr.strip() == f"chart {png}: GET 1: 5,000, 4: 9,000; PUT 1: 2,000"


@pytest.mark.parametrize(
    ("saved", "says"),
    [
        ({"rows": {"etcd": row("etcd", 1.0, 1.0)}}, "nothing to draw"),
        ({"settings": {}}, "not a `bench.py http --json` report"),
        ([1, 2], "not a `bench.py http --json` report"),
    ],
)
def test_a_report_without_kvs_figures_is_refused_in_one_line(
    tmp_path: Path, saved: Any, says: str
) -> None:
    result, png = chart(tmp_path, saved)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("bench.py chart: ") and says in line
    assert not png.exists()


def test_without_matplotlib_the_chart_is_refused_in_one_line(
    tmp_path: Path, report: dict[str, Any]
) -> None:
    stand_in = tmp_path / "no-matplotlib" / "matplotlib"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("raise ImportError('not installed here')\n")
    result, png = chart(tmp_path, report, PYTHONPATH=str(stand_in.parent))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "needs matplotlib" in line and "bench.py setup" in line
    assert not png.exists()
