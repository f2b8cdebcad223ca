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


# --- readable tables and plots (issue 16 item 3) -------------------------------------------------

def test_two_seeds_show_the_range_not_a_ci_and_warn(tmp_path, capsys):
    for num, seed in enumerate((0, 1)):
        fake_job(tmp_path, num, scheduler="static_fifo", k=1, rate=4.0, gpus=2, seed=seed,
                 metrics={"sla_violation_rate": 0.1 + 0.25 * seed})
    table = report.collect(tmp_path)
    agg = report.aggregate(table)
    text = report.format_summary(agg)
    assert "±" not in text and "10.0%–35.0%" in text and "22.5%" in text
    report.write_report(table, tmp_path, tmp_path)
    err = capsys.readouterr().err
    assert "fewer than 3 seeds" in err and "not a 95% CI" in err


def test_each_column_has_one_number_of_decimals():
    agg = pd.DataFrame({"scheduler": ["static_fifo", "multi_bin_dynamic"], "n": [5, 5],
                        "latency_p99_s": [1310.2, 12.13], "latency_p99_s_ci95": [85.3, 0.0055],
                        "throughput_rps": [2.68, 10.39], "throughput_rps_ci95": [0.01, 0.2]})
    lines = report.format_summary(agg, ["latency_p99_s", "throughput_rps"]).splitlines()
    assert "1310.2 ± 85.3" in lines[1] and "12.1 ± 0.0" in lines[2]          # never 1.31e+03 beside 12.1
    assert "2.68 ± 0.01" in lines[1] and "10.39 ± 0.20" in lines[2]
    assert "e+" not in "\n".join(lines)


def test_latency_cdf_uses_a_log_axis(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    scales = []
    original = Axes.set_xscale
    monkeypatch.setattr(Axes, "set_xscale", lambda self, value, **kw: (scales.append(value), original(self, value, **kw)))
    for num, sched in enumerate(["static_fifo", "multi_bin_dynamic"]):
        fake_job(tmp_path, num, scheduler=sched, k=1, rate=4.0, gpus=2, seed=0)
    table = report.collect(tmp_path)
    assert report.latency_cdfs(table, tmp_path / "cdf.png", lambda row: Path(row["dir"]) / "requests.parquet")
    assert scales == ["log"]


def _mlflow_sweep(client, exp_id: str, name: str, start: int, jobs: list[tuple[str, int]]) -> str:
    parent = client.create_run(exp_id, run_name=name, start_time=start, tags={"simsched.kind": "sweep"})
    for num, (sched, seed) in enumerate(jobs):
        child = client.create_run(exp_id, start_time=start + 1 + num, tags={
            "mlflow.parentRunId": parent.info.run_id, "simsched.job": str(num), "scheduler": sched,
            "seed": str(seed), "k_bins": "1", "gpus": "2", "lambda": "4", "simsched.config_hash": f"{sched}{seed}"})
        client.log_metric(child.info.run_id, "throughput_rps", 1.0 + seed)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def test_report_says_which_sweep_it_picked_and_sorts_all_runs(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study")
    _mlflow_sweep(client, exp, "first sweep", 1_000, [("static_fifo", 1), ("multi_bin_dynamic", 0)])
    latest = _mlflow_sweep(client, exp, "second sweep", 2_000, [("static_fifo", 0), ("dynamic_no_bins", 1),
                                                                ("dynamic_no_bins", 0)])
    table, _ = report.from_mlflow("study", uri)
    out = capsys.readouterr().out
    assert f"'second sweep' (run {latest}" in out and "the latest of 2" in out and "--parent" in out
    assert len(table) == 3
    table, _ = report.from_mlflow("study", uri, all_runs=True)
    got = list(zip(table["scheduler"], table["seed"]))
    assert got == sorted(got) and len(got) == 5   # rows in factor order (by start time they are not)
