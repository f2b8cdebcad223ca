"""Metrics of a continuous-engine run, as vLLM's own benchmark (``vllm bench serve``) defines
them (REFERENCE §9), over the same measurement window as the run-to-completion metrics.

Per request: TTFT = first token − arrival; TPOT = (E2E − TTFT) / (output − 1); E2E = last
token − arrival; ITL = the gaps between successive tokens. Summary statistics (mean, p50, p90,
p99, max) of TTFT, TPOT and E2E are over the completed requests that arrived inside the
window; ITL statistics are over every inter-token gap of the run (a pooled histogram with
bins < 0.4% wide, so ITL percentiles carry that resolution). Goodput counts completions in the
window that meet every SLO set in the ``sla`` group: ``latency_s`` (E2E), ``ttft_s`` and
``tbt_s`` (read as TPOT).

Honest accounting (issue 14 item 4): a request still unfinished at the end (a horizon) that
arrived in the window and is already past an SLO counts as a violation; the percentiles,
which only completed requests can have, are reported next to the count of unfinished
requests (``unfinished_in_window``), never silently improved by leaving them out.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from simsched.engines.continuous.result import COMPLETED, REASONS, REJECTED, UNFINISHED, ContinuousResult
from simsched.engines.continuous.state import ITL_BINS, ITL_LO, ITL_PER_OCTAVE
from simsched.metrics import Sla, Window

QUANTILES = (50, 90, 99)


def _stats(prefix: str, x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {f"{prefix}_{k}_s": math.nan for k in ("mean", "p50", "p90", "p99", "max")}
    p = np.percentile(x, QUANTILES)
    return {f"{prefix}_mean_s": float(x.mean()), f"{prefix}_p50_s": float(p[0]), f"{prefix}_p90_s": float(p[1]),
            f"{prefix}_p99_s": float(p[2]), f"{prefix}_max_s": float(x.max())}


def itl_bin_edges() -> np.ndarray:
    """Lower edges of the ITL histogram bins (``update.itl_bin``): bin 0 is [0, ITL_LO]."""
    k = np.arange(1, ITL_BINS - 1)
    octave, step = (k - 1) // ITL_PER_OCTAVE, (k - 1) % ITL_PER_OCTAVE
    lows = ITL_LO * 2.0 ** octave * (1.0 + step / ITL_PER_OCTAVE)
    return np.concatenate(([0.0], lows, [ITL_LO * 2.0 ** (ITL_BINS // ITL_PER_OCTAVE)]))


def itl_stats(res: ContinuousResult) -> dict[str, float]:
    """Mean (exact) and percentiles (bin midpoints) of every inter-token gap of the run."""
    n = res.itl_count
    if n <= 0:
        return {f"itl_{k}_s": math.nan for k in ("mean", "p50", "p90", "p99", "max")}
    lows = itl_bin_edges()
    mids = np.concatenate((lows[:-1] + np.diff(lows) / 2, [lows[-1]]))
    cum = np.cumsum(res.itl_hist)
    out = {"itl_mean_s": res.itl_sum / n}
    for q in QUANTILES:
        out[f"itl_p{q}_s"] = float(mids[int(np.searchsorted(cum, q / 100.0 * cum[-1]))])
    out["itl_max_s"] = float(np.nanmax(res.itl_max)) if np.isfinite(res.itl_max).any() else math.nan
    return out


def compute_serving_metrics(res: ContinuousResult, sla: Sla, window: Window) -> dict[str, Any]:
    req = res.requests
    counts = res.counts()
    arrived_mask = res.status != 3
    arr = req.arrival[arrived_mask]
    lo, hi = window.bounds(arr, res.end_time)
    span = hi - lo
    in_window = (req.arrival >= lo) & (req.arrival <= hi)
    done = res.status == COMPLETED
    measured = done & in_window
    ttft, tpot, e2e = res.ttft, res.tpot, res.e2e
    violate = e2e > sla.latency_s
    if sla.ttft_s is not None:
        violate |= ttft > sla.ttft_s
    if sla.tbt_s is not None:
        violate |= tpot > sla.tbt_s
    # Unfinished requests already past an SLO at the end of the run are violations.
    unfinished = (res.status == UNFINISHED) & in_window
    age = res.end_time - req.arrival
    late = age > sla.latency_s
    if sla.ttft_s is not None:
        late |= np.where(np.isfinite(res.first_token), ttft > sla.ttft_s, age > sla.ttft_s)
    unfinished_late = unfinished & late
    finished_in = done & (res.finish >= lo) & (res.finish <= hi)
    rejected_in = (res.status == REJECTED) & in_window
    span_arr = float(arr[-1] - arr[0]) if len(arr) > 1 else 0.0
    lam = (len(arr) - 1) / span_arr if span_arr > 0 else math.nan
    n_meas = int(measured.sum())
    n_unf = int(unfinished.sum())
    viol = int((violate & measured).sum()) + int(unfinished_late.sum())

    def per_s(x: float) -> float:
        return x / span if span > 0 else math.nan

    m: dict[str, Any] = {
        "engine": "continuous",
        "generated": len(req),
        "arrived": counts["completed"] + counts["rejected"] + counts["unfinished"],
        "completed": counts["completed"],
        "rejected": counts["rejected"],
        "unfinished": counts["unfinished"],
        "measured": n_meas,
        "unfinished_in_window": n_unf,
        "unfinished_past_sla": int(unfinished_late.sum()),
        "window_start_s": lo,
        "window_end_s": hi,
        "sim_end_s": float(res.end_time),
        "arrival_rate_rps": lam,
        "throughput_rps": per_s(float(finished_in.sum())),
        "output_tokens_per_s": per_s(float(req.output[finished_in].sum())),
        "total_tokens_per_s": per_s(float((req.output + req.prompt)[finished_in].sum())),
        "goodput_rps": per_s(float((finished_in & ~violate).sum())),
    }
    for reason in REASONS[1:]:
        m[f"reason_{reason}"] = int(np.sum(res.reason == REASONS.index(reason)))
    m.update(_stats("ttft", ttft[measured]))
    m.update(_stats("tpot", tpot[measured]))
    m.update(_stats("latency", e2e[measured]))   # E2E, under the name both engines share
    m.update(_stats("queue_delay", (res.first_scheduled - req.arrival)[measured]))
    m.update(itl_stats(res))
    if getattr(res, "pool_names", ()):
        from simsched.engines.continuous.fleet import pool_summary

        for pool, values in pool_summary(res, lo, hi, violate).items():
            m.update({f"pool.{pool}.{k}": v for k, v in values.items()})
    m["sla_violation_rate"] = viol / (n_meas + n_unf) if n_meas + n_unf else math.nan
    n_rej = int(rejected_in.sum())
    m["sla_violation_rate_with_rejected"] = ((viol + n_rej) / (n_meas + n_unf + n_rej)
                                             if n_meas + n_unf + n_rej else math.nan)
    m["rejected_rate"] = counts["rejected"] / m["arrived"] if m["arrived"] else math.nan
    admitted = res.prefix_hit_tokens >= 0
    prompt_admitted = float(req.prompt[admitted].sum())
    m["prefix_hit_rate"] = float(res.prefix_hit_tokens[admitted].sum()) / prompt_admitted if prompt_admitted else 0.0
    m["preemptions"] = int(res.preemptions.sum())
    m["preempted_requests"] = int(np.count_nonzero(res.preemptions))
    ts = res.timeseries
    G = max(res.num_replicas, 1)
    if len(ts["time"]):
        m["running_mean"] = float(ts["running"].sum()) / (len(ts["time"]) / G) / G
        m["waiting_mean"] = float(ts["waiting"].sum()) / (len(ts["time"]) / G) / G
        m["kv_usage_mean"] = float(ts["kv_blocks_used"].mean()) / max(res.num_gpu_blocks - 1, 1)
    c = res.counters
    m["sim_steps"] = c["steps"]
    m["sim_ticks"] = c["ticks"]
    m["sim_jumps"] = c["jumps"]
    m["sim_steps_skipped_fraction"] = c["jumped_steps"] / c["steps"] if c["steps"] else 0.0
    m["sim_cohort_steps"] = c.get("cohort_steps", 0)
    m["sim_request_steps"] = c.get("request_steps", 0)
    m["sim_fast_forwarded_fraction"] = (c.get("lazy_request_steps", 0) / c["request_steps"]
                                        if c.get("request_steps") else 0.0)
    m["sim_ticks_per_request"] = c["ticks"] / len(req) if len(req) else math.nan
    m["sim_loop_s"] = c.get("loop_ms", 0) / 1000.0
    m["sim_loop_cpu_s"] = c.get("loop_cpu_ms", 0) / 1000.0
    for key, value in res.settings.items():
        m[f"engine_{key}"] = value
    return m


def format_serving_table(metrics: dict[str, Any], label: str = "") -> str:
    """A short human summary of one continuous-engine run."""
    def f(key: str, fmt: str = "{:.3f}") -> str:
        v = metrics.get(key)
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    rows = [
        ("completed / rejected / unfinished",
         f"{metrics['completed']} / {metrics['rejected']} / {metrics['unfinished']}"),
        ("throughput (req/s, output tok/s)", f"{f('throughput_rps', '{:.2f}')} / {f('output_tokens_per_s', '{:.0f}')}"),
        ("goodput (req/s)", f("goodput_rps", "{:.2f}")),
        ("TTFT mean / p99 (s)", f"{f('ttft_mean_s', '{:.3f}')} / {f('ttft_p99_s', '{:.3f}')}"),
        ("TPOT mean / p99 (s)", f"{f('tpot_mean_s', '{:.4f}')} / {f('tpot_p99_s', '{:.4f}')}"),
        ("ITL p50 / p99 (s)", f"{f('itl_p50_s', '{:.4f}')} / {f('itl_p99_s', '{:.4f}')}"),
        ("E2E mean / p99 (s)", f"{f('latency_mean_s', '{:.2f}')} / {f('latency_p99_s', '{:.2f}')}"),
        ("SLA violation rate (unfinished in window)",
         f"{f('sla_violation_rate', '{:.1%}')} ({metrics.get('unfinished_in_window', 0)})"),
        ("running / waiting per replica (mean)", f"{f('running_mean', '{:.1f}')} / {f('waiting_mean', '{:.1f}')}"),
        ("KV usage (mean), prefix hits", f"{f('kv_usage_mean', '{:.1%}')}, {f('prefix_hit_rate', '{:.1%}')}"),
        ("preemptions", str(metrics.get("preemptions", 0))),
        ("request-steps fast-forwarded", f("sim_fast_forwarded_fraction", "{:.1%}")),
    ]
    width = max(len(r[0]) for r in rows)
    head = f"simsched {label}".rstrip()
    return "\n".join([head] + [f"  {k.ljust(width)}  {v}" for k, v in rows])
