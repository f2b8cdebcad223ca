"""Run metrics (REFERENCE §6): every figure is computed from the per-request and per-batch
columns of a SimResult, over a measurement window that excludes warm-up and drain."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.batchers import memory_batch_limit
from simsched.engines.run_to_completion import COMPLETED, REJECTED, SimResult
from simsched.errors import check_positive, check_probability


@dataclass(frozen=True)
class Sla:
    """Service-level objectives. A completed request violates the SLA when its end-to-end
    latency exceeds ``latency_s`` or, where set, its TTFT or mean TBT exceeds the limit."""

    latency_s: float = 20.0
    ttft_s: float | None = None
    tbt_s: float | None = None

    def __post_init__(self) -> None:
        check_positive("latency_s", self.latency_s)
        for key in ("ttft_s", "tbt_s"):
            if getattr(self, key) is not None:
                check_positive(key, getattr(self, key))


@dataclass(frozen=True)
class Window:
    """The measurement window is [t0 + warmup_fraction·span, t_last_arrival], span being the
    arrival span: warm-up (empty system) and drain (no more arrivals) are left out."""

    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_probability("warmup_fraction", self.warmup_fraction, open_upper=True)

    def bounds(self, arrival: np.ndarray, end_time: float) -> tuple[float, float]:
        if len(arrival) == 0:
            return 0.0, 0.0
        t0, t1 = float(arrival[0]), float(arrival[-1])
        if t1 <= t0:
            return t0, max(end_time, t0)
        return t0 + self.warmup_fraction * (t1 - t0), t1


def _stats(prefix: str, x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {f"{prefix}_mean_s": math.nan, f"{prefix}_p50_s": math.nan, f"{prefix}_p90_s": math.nan,
                f"{prefix}_p99_s": math.nan, f"{prefix}_max_s": math.nan}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {f"{prefix}_mean_s": float(x.mean()), f"{prefix}_p50_s": float(p50),
            f"{prefix}_p90_s": float(p90), f"{prefix}_p99_s": float(p99), f"{prefix}_max_s": float(x.max())}


def reference_capacity(res: SimResult, latency: Any, max_batch: int | None = None) -> float:
    """A scheduler-independent capacity (requests/s): the cluster serving full batches formed in
    arrival order, as large as the KV cache allows with 99% confidence (Algorithm 1 with the
    workload's true token mean and spread). Offered load ρ = λ / this, the same for every
    scheduler on the same workload and hardware; ρ near or above 1 is overload. With
    ``max_batch`` the batches are also capped at that size (a scheduler's own ceiling)."""
    req = res.requests
    n = len(req)
    if n == 0:
        return math.nan
    tok = (req.prompt + req.output).astype(float)
    theta = 2.326347874040841  # Φ^-1(0.99)
    B = max(1, min(n, memory_batch_limit(float(tok.mean()), float(tok.std()), res.kv_capacity_tokens, theta)))
    if max_batch is not None:
        B = min(B, int(max_batch))
    m = (n // B) * B
    out = req.output[:m].reshape(-1, B).max(axis=1)
    psum = req.prompt[:m].reshape(-1, B).sum(axis=1).astype(float)
    mean_t = float(np.mean(latency.batch_time(B, out, psum)))
    return res.num_gpus * B / mean_t


def compute_metrics(res: SimResult, sla: Sla, window: Window, latency: Any,
                    max_batch: int | None = None) -> dict[str, Any]:
    """The flat metrics dict written to metrics.json (NaN where undefined). ``max_batch`` (the
    scheduler's largest batch) adds ``offered_load_scheduler``: λ over the capacity of full
    batches no larger than that, so a small fixed batch shows its own overload."""
    req = res.requests
    counts = res.counts()
    arrived_mask = res.status != 3
    arr = req.arrival[arrived_mask]
    lo, hi = window.bounds(arr, res.end_time)
    span = hi - lo
    done = res.status == COMPLETED
    measured = done & (req.arrival >= lo) & (req.arrival <= hi)
    latency_s = res.finish - req.arrival
    ttft = res.first_token - req.arrival
    violate = latency_s > sla.latency_s
    if sla.ttft_s is not None:
        violate |= ttft > sla.ttft_s
    if sla.tbt_s is not None:
        violate |= res.tbt > sla.tbt_s
    finished_in = done & (res.finish >= lo) & (res.finish <= hi)
    rejected_in = (res.status == REJECTED) & (req.arrival >= lo) & (req.arrival <= hi)

    b = res.batches
    overlap = np.clip(np.minimum(b["end"], hi) - np.maximum(b["start"], lo), 0.0, None)
    padded = float(np.sum(b["size"] * b["max_output"]))
    n_meas = int(measured.sum())
    viol = int((violate & measured).sum())
    span_arr = float(arr[-1] - arr[0]) if len(arr) > 1 else 0.0
    lam = (len(arr) - 1) / span_arr if span_arr > 0 else math.nan
    cap = reference_capacity(res, latency)

    m: dict[str, Any] = {
        "generated": len(req),
        "arrived": counts["completed"] + counts["rejected"] + counts["unfinished"],
        "completed": counts["completed"],
        "rejected": counts["rejected"],
        "unfinished": counts["unfinished"],
        "measured": n_meas,
        "window_start_s": lo,
        "window_end_s": hi,
        "sim_end_s": float(res.end_time),
        "arrival_rate_rps": lam,
        "throughput_rps": float(finished_in.sum()) / span if span > 0 else math.nan,
        "output_tokens_per_s": float(req.output[finished_in].sum()) / span if span > 0 else math.nan,
        "goodput_rps": float((finished_in & ~violate).sum()) / span if span > 0 else math.nan,
    }
    m.update(_stats("latency", latency_s[measured]))
    m.update(_stats("queue_delay", (res.start - req.arrival)[measured]))
    m.update(_stats("ttft", ttft[measured]))
    m["tbt_mean_s"] = float(res.tbt[measured].mean()) if n_meas else math.nan
    m["sla_violation_rate"] = viol / n_meas if n_meas else math.nan
    n_rej = int(rejected_in.sum())
    m["sla_violation_rate_with_rejected"] = (viol + n_rej) / (n_meas + n_rej) if n_meas + n_rej else math.nan
    m["rejected_rate"] = counts["rejected"] / m["arrived"] if m["arrived"] else math.nan
    m["gpu_utilization"] = float(overlap.sum()) / (res.num_gpus * span) if span > 0 else math.nan
    m["slot_efficiency"] = float(b["output_tokens"].sum()) / padded if padded > 0 else math.nan
    m["offered_load"] = lam / cap if cap and not math.isnan(lam) else math.nan
    m["reference_capacity_rps"] = cap
    if max_batch is not None:
        cap_s = reference_capacity(res, latency, max_batch)
        m["offered_load_scheduler"] = lam / cap_s if cap_s and not math.isnan(lam) else math.nan
    m["num_batches"] = int(len(b["size"]))
    m["mean_batch_size"] = float(b["size"].mean()) if len(b["size"]) else math.nan
    m["kv_overflow_batches"] = int(np.sum(b["kv_tokens"] > res.kv_capacity_tokens))
    k_bins = max(int(res.bin.max()) + 1 if len(res.bin) else 1, len(res.cut_points) + 1)
    for k in range(k_bins):
        sel = measured & (res.bin == k)
        lat_k = latency_s[sel]
        m[f"bin{k}_measured"] = int(sel.sum())
        m[f"bin{k}_latency_mean_s"] = float(lat_k.mean()) if len(lat_k) else math.nan
        m[f"bin{k}_latency_p99_s"] = float(np.percentile(lat_k, 99)) if len(lat_k) else math.nan
    return m


