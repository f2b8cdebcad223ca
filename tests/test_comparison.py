"""The comparison's statistics and errors on constructed cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simsched.comparison import error_rows, format_rows, summarize


def test_summary_statistics_on_a_hand_computed_case():
    # four requests; the third failed and must count for nothing but the span's start
    arrival = np.array([0.0, 1.0, 1.5, 2.0])
    ttft = np.array([0.1, 0.2, np.nan, 0.4])
    e2e = np.array([1.1, 0.2, np.nan, 2.4])
    output = np.array([11, 1, 0, 5])
    ok = np.array([True, True, False, True])
    s = summarize(arrival, ttft, e2e, output, ok)
    assert s["completed"] == 3
    assert s["ttft_mean_s"] == pytest.approx(0.7 / 3)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["ttft_p90_s"] == pytest.approx(0.2 + 0.8 * 0.2)          # numpy linear: 0.36
    # TPOT only for output > 1: (1.1-0.1)/10 = 0.1 and (2.4-0.4)/4 = 0.5
    assert s["tpot_mean_s"] == pytest.approx(0.3)
    assert s["tpot_p99_s"] == pytest.approx(0.1 + 0.99 * 0.4)
    assert s["e2e_p50_s"] == pytest.approx(1.1)
    # span: first arrival 0 to last completion 2.0 + 2.4
    assert s["span_s"] == pytest.approx(4.4)
    assert s["request_throughput_rps"] == pytest.approx(3 / 4.4)
    assert s["output_throughput_tps"] == pytest.approx(17 / 4.4)


def test_relative_errors_are_simulated_minus_measured_over_measured():
    meas = {f"{m}_{s}_s": 1.0 for m in ("ttft", "tpot", "e2e") for s in ("mean", "p50", "p90", "p99")}
    meas |= {"request_throughput_rps": 2.0, "output_throughput_tps": 100.0}
    sim = dict(meas, ttft_mean_s=1.5, e2e_p99_s=0.8, request_throughput_rps=1.0, tpot_p50_s=1.0)
    rows = {(r["metric"], r["stat"]): r for r in error_rows(meas, sim, group="g")}
    assert len(rows) == 14
    assert rows[("ttft", "mean")]["rel_error"] == pytest.approx(0.5)
    assert rows[("e2e", "p99")]["rel_error"] == pytest.approx(-0.2)
    assert rows[("request_throughput", "")]["rel_error"] == pytest.approx(-0.5)
    assert rows[("tpot", "p50")]["rel_error"] == 0.0 and rows[("tpot", "p50")]["group"] == "g"
    zero = error_rows(dict(meas, ttft_mean_s=0.0), sim)
    assert math.isnan(zero[0]["rel_error"])
    text = format_rows(error_rows(meas, sim))
    assert "+50.0%" in text and "-20.0%" in text and "req/s" in text


def test_identical_runs_have_zero_error():
    rng = np.random.default_rng(1)
    arrival = np.sort(rng.uniform(0, 10, 50))
    ttft = rng.uniform(0.05, 0.5, 50)
    e2e = ttft + rng.uniform(0.1, 3, 50)
    output = rng.integers(1, 100, 50)
    ok = np.ones(50, bool)
    s = summarize(arrival, ttft, e2e, output, ok)
    assert all(r["rel_error"] == 0.0 for r in error_rows(s, s))
