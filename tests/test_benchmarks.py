"""The benchmark's own plumbing still runs against the current code (it broke once, silently,
when the metrics API changed): the in-process probe and one cheap regime of ``bench.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")


def test_probe_reports_loop_times_and_the_load_it_ran_at():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "probe.py"), "loop", str(REPO / "conf"), "2",
                          "multi_bin_dynamic", "workload=poisson", "gpus.count=4", "scheduler.k_bins=4",
                          "workload.num_requests=3000"], capture_output=True, text=True, env=_env(), check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])["multi_bin_dynamic"]
    assert row["requests"] == 3000 and len(row["loop_s"]) == 2 and min(row["loop_s"]) > 0
    assert row["capacity_rps"] > row["arrival_rate_rps"] > 0
    assert row["offered_load"] == pytest.approx(row["arrival_rate_rps"] / row["capacity_rps"])


def test_bench_writes_its_table_for_the_regimes_asked_for(tmp_path):
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--regimes", "startup", "--baseline",
                    "none", "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                   env=_env(), check=True, cwd=tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows and {r["regime"] for r in rows} == {"startup"}
    assert all(r["current"]["median"] > 0 for r in rows)
