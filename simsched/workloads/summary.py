"""What a run's workload looked like: size, rate, burstiness and lengths, as flat ``workload_*``
numbers for metrics.json, plus anything the workload reported about itself (rows dropped ...)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from simsched.workloads.requests import RequestTable

PEAK_WINDOW_S = 60.0
QUANTILES = (50, 90, 95, 99)


def summarize(req: RequestTable) -> dict[str, float]:
    """Requests, duration, mean rate (n-1)/span, peak rate over any 60 s window [t, t+60)
    (the mean rate when the span is shorter), inter-arrival CV, prompt/output quantiles."""
    a = req.arrival
    n = len(a)
    duration = float(a[-1] - a[0]) if n > 1 else 0.0
    mean_rate = (n - 1) / duration if duration > 0 else math.nan
    if duration >= PEAK_WINDOW_S:
        in_window = np.searchsorted(a, a + PEAK_WINDOW_S, side="left") - np.arange(n)
        peak = float(in_window.max()) / PEAK_WINDOW_S
    else:
        peak = mean_rate
    gaps = np.diff(a)
    cv = float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else math.nan
    s: dict[str, float] = {
        "workload_requests": n,
        "workload_duration_s": duration,
        "workload_mean_rate_rps": mean_rate,
        "workload_peak_1min_rps": peak,
        "workload_interarrival_cv": cv,
    }
    for name, v in (("prompt", req.prompt), ("output", req.output)):
        qs = np.percentile(v, QUANTILES) if n else [math.nan] * len(QUANTILES)
        for q, x in zip(QUANTILES, qs):
            s[f"workload_{name}_p{q}"] = float(x)
        s[f"workload_{name}_mean"] = float(v.mean()) if n else math.nan
        s[f"workload_{name}_max"] = int(v.max()) if n else math.nan
    for key, value in req.info.items():
        s[f"workload_{key}"] = value
    return s


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def f(key: str, fmt: str = "{:.2f}") -> str:
        v = s.get(key)
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    lines = [
        f"workload: {s['workload_requests']} requests over {f('workload_duration_s', '{:.1f}')} s; "
        f"mean {f('workload_mean_rate_rps')} req/s, peak 1-min {f('workload_peak_1min_rps')} req/s, "
        f"inter-arrival CV {f('workload_interarrival_cv')}",
    ]
    for name in ("prompt", "output"):
        qs = " / ".join(f(f"workload_{name}_p{q}", "{:.0f}") for q in QUANTILES)
        lines.append(f"  {name} tokens p{'/p'.join(map(str, QUANTILES))}/max: {qs} / "
                     f"{f(f'workload_{name}_max', '{:.0f}')} (mean {f(f'workload_{name}_mean', '{:.1f}')})")
    if "workload_trace_rows" in s:
        extra = (f"  trace: {s['workload_trace_rows']} rows, {s['workload_trace_failures_dropped']} failures dropped, "
                 f"{s['workload_trace_filtered_out']} filtered out, {s['workload_trace_zero_prompt_rows']} with 0 prompt "
                 f"tokens, {s['workload_trace_reordered_rows']} re-sorted, {s['workload_trace_blank_lines']} blank lines")
        if "workload_trace_total_mismatch_rows" in s:
            extra += f", {s['workload_trace_total_mismatch_rows']} with total != prompt + output"
        extra += (f"; rate scale {f('workload_trace_rps_scale', '{:.4g}')}; loaded in "
                  f"{f('workload_trace_load_s', '{:.2f}')} s" + (" (cache)" if s.get("workload_trace_from_cache") else ""))
        lines.append(extra)
    return "\n".join(lines)
