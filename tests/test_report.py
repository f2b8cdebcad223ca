"""The comparison report on hand-made job folders: statistics, capacity gains, plots, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simsched.app import report
from simsched.outputs import write_marker


def fake_job(root: Path, num: int, *, scheduler: str, k: int, rate: float, gpus: int, seed: int,
             metrics: dict | None = None, error: str | None = None) -> None:
    """A job folder as Hydra and simsched write it (config, overrides, metrics, requests, done.json)."""
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    cfg = {"scheduler": {"name": scheduler, "k_bins": k}, "seed": seed,
           "workload": {"name": "poisson", "arrivals": {"rate": rate}},
           "gpus": {"count": gpus, "name": "H100"}, "predictor": {"name": "oracle"}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"scheduler={scheduler}", f"scheduler.k_bins={k}", f"workload.arrivals.rate={rate}",
                 f"gpus.count={gpus}", f"seed={seed}", "hydra.launcher.n_jobs=2"]
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if error:
        (d / "error.json").write_text(json.dumps({"error": error}))
        return
    rng = np.random.default_rng(num)
    lat = rng.exponential(1.0 + rate / gpus, 50)
    m = {"throughput_rps": rate * (1 + 0.1 * k) + 0.01 * seed, "latency_p99_s": float(np.percentile(lat, 99)),
         "sla_violation_rate": min(1.0, rate / (10 * gpus * (1 + 0.2 * k))), "gpu_utilization": min(1, rate / (5 * gpus)),
         "slot_efficiency": 0.4 + 0.1 * k, "completed": 50}
    (d / "metrics.json").write_text(json.dumps(m | (metrics or {})))
    arrival = np.sort(rng.uniform(0, 10, 50))
    pd.DataFrame({"arrival": arrival, "completion": arrival + lat,
                  "status": pd.Categorical(["completed"] * 50)}).to_parquet(d / "requests.parquet")
    write_marker(d, [d / "metrics.json", d / "requests.parquet"])   # complete, as a finished job is


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    num = 0
    for sched, ks in (("static_fifo", (1,)), ("multi_bin_dynamic", (1, 4))):
        for k in ks:
            for rate in (2.0, 8.0):
                for gpus in (1, 2):
                    for seed in (0, 1, 2):
                        fake_job(tmp_path, num, scheduler=sched, k=k, rate=rate, gpus=gpus, seed=seed)
                        num += 1
    fake_job(tmp_path, num, scheduler="static_fifo", k=1, rate=2.0, gpus=1, seed=9, error="ConfigError: boom")
    return tmp_path


def test_collect_reads_every_job_folder(grid):
    table = report.collect(grid)
    assert len(table) == 37 and (table["status"] == "failed").sum() == 1
    assert table.loc[table["status"] == "failed", "error"].item() == "ConfigError: boom"
    assert set(report.varying_factors(table)) == {"scheduler", "k_bins", "lambda", "gpus"}
    assert "override.hydra.launcher.n_jobs" not in table.columns      # Hydra's own overrides are not factors
    row = table[table["job"] == 5].iloc[0]
    assert json.loads((grid / "5" / "metrics.json").read_text())["throughput_rps"] == row["throughput_rps"]


def test_aggregate_gives_means_and_student_t_intervals_over_seeds(grid):
    from scipy import stats

    table = report.collect(grid)
    agg = report.aggregate(table)
    assert len(agg) == 12 and set(agg["n"]) == {3}          # the failed job is left out
    sel = (table["scheduler"] == "multi_bin_dynamic") & (table["k_bins"] == 4) & (table["lambda"] == 8.0) \
        & (table["gpus"] == 2) & (table["status"] == "ok")
    values = table.loc[sel, "latency_p99_s"].to_numpy()
    row = agg[(agg["scheduler"] == "multi_bin_dynamic") & (agg["k_bins"] == 4) & (agg["lambda"] == 8.0)
              & (agg["gpus"] == 2)].iloc[0]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert row["latency_p99_s"] == pytest.approx(values.mean())
    assert row["latency_p99_s_ci95"] == pytest.approx((hi - lo) / 2)


def test_capacity_is_interpolated_on_the_lambda_grid_and_gains_are_ratios():
    agg = pd.DataFrame({"scheduler": ["static_fifo"] * 3 + ["multi_bin_dynamic"] * 3,
                        "lambda": [4.0, 5.0, 6.0, 5.0, 6.0, 7.0],
                        "sla_violation_rate": [0.0, 0.03, 0.08, 0.0, 0.02, 0.07]})
    caps = report.capacity_from_grid(agg, targets=(0.05,))
    got = dict(zip(caps["scheduler"], caps["capacity_rps"]))
    assert got["static_fifo"] == pytest.approx(5.4) and got["multi_bin_dynamic"] == pytest.approx(6.6)
    (line,) = report.capacity_gains(caps)
    assert line == "multi_bin_dynamic vs static_fifo @ 5% violation: 5.4 → 6.6 req/s (+22%, ×1.22)"
    # Below the grid: NaN; above it: the largest λ as a lower bound.
    edge = report.capacity_from_grid(pd.DataFrame({"lambda": [1.0, 2.0], "sla_violation_rate": [0.5, 0.9]}),
                                     targets=(0.05,))
    assert math.isnan(edge["capacity_rps"].item())
    edge = report.capacity_from_grid(pd.DataFrame({"lambda": [1.0, 2.0], "sla_violation_rate": [0.0, 0.01]}),
                                     targets=(0.05,))
    assert edge["capacity_rps"].item() == 2.0 and edge["bound"].item() == ">="


def test_report_writes_tables_and_every_plot(grid, capsys):
    report.main([str(grid)])
    out = capsys.readouterr().out
    assert "37 job(s), 1 not ok" in out and "ConfigError: boom" in out
    assert "vs static_fifo @ 5% violation" in out       # capacity gains from the λ grid
    for name in ("summary.csv", "summary.parquet", "summary_mean_ci.csv", "capacity.csv"):
        assert (grid / name).is_file(), name
    plots = {p.name for p in (grid / "plots").iterdir()}
    assert plots == {"throughput_p99_vs_k.png", "sla_violation_vs_lambda.png", "utilisation_vs_gpus.png",
                     "latency_cdf_per_scheduler.png"}
    assert pd.read_parquet(grid / "summary.parquet").shape[0] == 37


def test_report_skips_plots_whose_factor_does_not_vary(tmp_path):
    for num, sched in enumerate(["static_fifo", "multi_bin_dynamic"]):
        fake_job(tmp_path, num, scheduler=sched, k=1 if sched == "static_fifo" else 4, rate=4.0, gpus=2, seed=0)
    files = report.write_report(report.collect(tmp_path), tmp_path, tmp_path, print_table=False)
    # K differs only with the scheduler: no K plot; λ and GPUs do not vary.
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"latency_cdf_per_scheduler.png"}
    assert tmp_path / "summary.csv" in files


def test_report_errors_are_one_line(tmp_path):
    from simsched.errors import ConfigError

    with pytest.raises(ConfigError, match="no such folder"):
        report.main([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="holds no job folders"):
        report.main([str(tmp_path)])
    with pytest.raises(ConfigError, match="one of them"):
        report.main([])
