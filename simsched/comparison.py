"""Measured vs simulated: the same summary statistics on both sides, and their relative errors.

Statistics follow vLLM's benchmark (``vllm/benchmarks/serve.py``, ``calculate_metrics``): TTFT,
TPOT = (E2E − TTFT)/(output − 1) over requests of more than one output token, and E2E, each as
mean and linear-interpolated percentiles (numpy's default, as vLLM uses). Throughput differs
from vLLM's own figure on purpose: it is computed identically on both sides from per-request
times, completed requests (or output tokens) over the span from the first arrival to the last
completion; vLLM divides by the client's wall time, which the simulator does not have.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = ("ttft", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p99")
THROUGHPUT = ("request_throughput_rps", "output_throughput_tps")


def summarize(arrival: np.ndarray, ttft: np.ndarray, e2e: np.ndarray, output: np.ndarray,
              ok: np.ndarray) -> dict[str, float]:
    """Summary of the requests with ``ok`` (completed): ``ttft_mean_s`` ... ``e2e_p99_s``,
    throughputs, ``completed`` and ``span_s``. Non-completed requests count for nothing but the
    span's start (the first arrival of all)."""
    arrival, ttft, e2e = (np.asarray(a, dtype=float) for a in (arrival, ttft, e2e))
    output, ok = np.asarray(output), np.asarray(ok, dtype=bool)
    values = {"ttft": ttft[ok], "e2e": e2e[ok]}
    many = ok & (output > 1)
    values["tpot"] = (e2e[many] - ttft[many]) / (output[many] - 1)
    out: dict[str, float] = {}
    for m in METRICS:
        v = values[m]
        out[f"{m}_mean_s"] = float(np.mean(v)) if v.size else math.nan
        for s in STATS[1:]:
            out[f"{m}_{s}_s"] = float(np.percentile(v, float(s[1:]))) if v.size else math.nan
    completed = int(ok.sum())
    span = float((arrival[ok] + e2e[ok]).max() - arrival.min()) if completed else math.nan
    out["completed"] = completed
    out["span_s"] = span
    out["request_throughput_rps"] = completed / span if completed and span > 0 else math.nan
    out["output_throughput_tps"] = float(output[ok].sum()) / span if completed and span > 0 else math.nan
    return out


def error_rows(measured: dict[str, float], simulated: dict[str, float], group: str = "all") -> list[dict[str, Any]]:
    """One row per compared figure: metric, stat, measured, simulated and the relative error
    (simulated − measured) / measured (NaN when the measured value is 0 or missing)."""
    rows = []
    keys = [(m, s, f"{m}_{s}_s") for m in METRICS for s in STATS]
    keys += [("request_throughput", "", "request_throughput_rps"), ("output_throughput", "", "output_throughput_tps")]
    for metric, stat, key in keys:
        meas, sim = float(measured[key]), float(simulated[key])
        rel = (sim - meas) / meas if meas and math.isfinite(meas) else math.nan
        rows.append({"group": group, "metric": metric, "stat": stat, "unit": _unit(key),
                     "measured": meas, "simulated": sim, "rel_error": rel})
    return rows


def _unit(key: str) -> str:
    return "req/s" if key.endswith("_rps") else "tok/s" if key.endswith("_tps") else "s"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The error table as aligned text (times in ms)."""
    lines = [f"{'group':<16} {'metric':<18} {'stat':<5} {'measured':>12} {'simulated':>12} {'error':>9}"]
    for r in rows:
        scale, unit = (1000.0, "ms") if r["unit"] == "s" else (1.0, r["unit"])
        lines.append(f"{r['group']:<16} {r['metric']:<18} {r['stat']:<5} "
                     f"{_fmt(r['measured'] * scale):>9} {unit:<2} {_fmt(r['simulated'] * scale):>9} {unit:<2} "
                     f"{_pct(r['rel_error']):>9}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.4g}" if abs(x) >= 1000 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:+.1%}"
