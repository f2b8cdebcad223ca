"""The workload summary every run reports (metrics.json keys ``workload_*``, printed)."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from simsched.workloads.requests import RequestTable
from simsched.workloads.summary import format_summary, summarize


def test_summary_values():
    arrival = [0, 1, 2, 3, 4, 5, 100, 200]
    req = RequestTable(np.array(arrival, float), np.arange(1, 9), np.array([5, 5, 5, 5, 5, 5, 5, 50]))
    s = summarize(req)
    gaps = [b - a for a, b in zip(arrival, arrival[1:])]
    assert s["workload_requests"] == 8
    assert s["workload_duration_s"] == 200
    assert s["workload_mean_rate_rps"] == pytest.approx(7 / 200)
    assert s["workload_peak_1min_rps"] == pytest.approx(6 / 60)      # 0..5 in [0, 60)
    assert s["workload_interarrival_cv"] == pytest.approx(statistics.pstdev(gaps) / statistics.mean(gaps))
    assert s["workload_prompt_p50"] == 4.5 and s["workload_prompt_max"] == 8
    assert s["workload_output_max"] == 50 and s["workload_output_p50"] == 5
    text = format_summary(s)
    assert text.startswith("workload: 8 requests over 200.0 s; mean 0.04 req/s, peak 1-min 0.10 req/s")


def test_short_and_single_request_workloads():
    s = summarize(RequestTable(np.array([0.0, 1.0, 2.0]), np.ones(3, int), np.ones(3, int)))
    assert s["workload_peak_1min_rps"] == s["workload_mean_rate_rps"] == 1.0
    one = summarize(RequestTable(np.array([3.0]), np.ones(1, int), np.ones(1, int)))
    assert one["workload_requests"] == 1 and math.isnan(one["workload_mean_rate_rps"])
    assert "n/a" in format_summary(one)


def test_every_run_reports_its_workload(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir
    from simsched.config import register_configs
    from simsched.run import run

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["workload=poisson", "workload.num_requests=400", "tracking=none",
                                           "output.plots=false"])
    run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["workload_requests"] == 400
    assert metrics["workload_mean_rate_rps"] == pytest.approx(4.0, rel=0.2)
    assert metrics["workload_interarrival_cv"] == pytest.approx(1.0, rel=0.2)      # Poisson
    assert "workload_trace_rows" not in metrics
    assert "workload: 400 requests over" in capsys.readouterr().out
