"""Run metrics (REFERENCE §6): every figure is computed from the per-request and per-batch
columns of a SimResult, over a measurement window that excludes warm-up and drain."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.engines.run_to_completion import COMPLETED, NOT_ARRIVED, REJECTED, UNFINISHED, SimResult
from simsched.errors import check_positive, check_probability


@dataclass(frozen=True)
class Sla:
    """Service-level objectives. A completed request violates the SLA when its end-to-end
    latency exceeds ``latency_s`` or, where set, its TTFT or mean TBT exceeds the limit; an
    unfinished request counts as a violation (``sla_outcomes``)."""

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


def censored_times(res: SimResult) -> dict[str, np.ndarray]:
    """Latency, queueing delay and TTFT per request, where an unfinished request is censored
    at the horizon: its time is at least ``end_time − arrival``, and that lower bound is what
    it contributes. (Completed requests: their exact times; never-arrived ones: NaN.)"""
    req = res.requests
    horizon = float(res.end_time)
    unfinished = res.status == UNFINISHED
    # start, finish and first_token are gathered from the batches on each read: read each once.
    start, finish, first_token = res.start, res.finish, res.first_token
    latency_s = finish - req.arrival
    queue_s = start - req.arrival
    ttft_s = first_token - req.arrival
    if unfinished.any():
        waited = horizon - req.arrival
        latency_s = np.where(unfinished, waited, latency_s)
        started = ~np.isnan(start) & (start <= horizon)
        queue_s = np.where(unfinished & ~started, waited, queue_s)
        first_known = ~np.isnan(first_token) & (first_token <= horizon)
        ttft_s = np.where(unfinished & ~first_known, waited, ttft_s)
    return {"latency": latency_s, "queue_delay": queue_s, "ttft": ttft_s}


def sla_outcomes(res: SimResult, sla: Sla,
                 times: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(violates, decided) per request. A completed request violates when it broke a limit.
    An unfinished one is a violation when a limit is already broken at the horizon (its
    deadline has passed, its first token is later than the TTFT limit, or its batch's TBT is
    over the limit); otherwise it is undecided, and it is counted as a violation too, so that
    cutting a run short can never make the SLA look better (``decided`` tells them apart).
    ``times``: ``censored_times(res)`` when the caller has it already (three arrays per request)."""
    t = censored_times(res) if times is None else times
    late = t["latency"] > sla.latency_s
    if sla.ttft_s is not None:
        late |= t["ttft"] > sla.ttft_s
    if sla.tbt_s is not None:
        late |= res.tbt > sla.tbt_s        # NaN (never dispatched) compares False
    unfinished = res.status == UNFINISHED
    decided = (res.status == COMPLETED) | (unfinished & late)
    violates = late | unfinished
    return violates & (res.status != REJECTED) & (res.status != NOT_ARRIVED), decided


def offered_load(arrival_rate_rps: float, saturation_rps: float | None) -> float:
    """ρ = λ / μ_sat: the arrival rate over the scheduler's own saturation throughput on the
    same lengths (``simsched.saturation``). ρ < 1: this scheduler keeps up; ρ >= 1: its queue
    grows without bound. NaN when μ_sat was not measured."""
    if saturation_rps is None or not saturation_rps > 0 or math.isnan(arrival_rate_rps):
        return math.nan
    return arrival_rate_rps / saturation_rps


def compute_metrics(res: SimResult, sla: Sla, window: Window, *,
                    saturation_rps: float | None = None) -> dict[str, Any]:
    """The flat metrics dict written to metrics.json (NaN where undefined).

    Measured requests are the admitted ones that arrived in the window: completed *and*
    unfinished. Unfinished requests count as SLA violations (``sla_outcomes``) and enter the
    latency statistics censored at the horizon (lower bounds: read them with
    ``measured_unfinished``), so a metric never improves because requests were cut off.
    ``saturation_rps`` (the scheduler's saturation throughput) gives the offered load ρ."""
    req = res.requests
    counts = res.counts()
    arrived_mask = res.status != NOT_ARRIVED
    arr = req.arrival[arrived_mask]
    lo, hi = window.bounds(arr, res.end_time)
    span = hi - lo
    done = res.status == COMPLETED
    in_window = (req.arrival >= lo) & (req.arrival <= hi)
    measured = (done | (res.status == UNFINISHED)) & in_window
    times = censored_times(res)
    violate, decided = sla_outcomes(res, sla, times)
    finished_in = done & (res.finish >= lo) & (res.finish <= hi)
    rejected_in = (res.status == REJECTED) & in_window

    b = res.batches
    overlap = np.clip(np.minimum(b["end"], hi) - np.maximum(b["start"], lo), 0.0, None)
    padded = float(np.sum(b["size"] * b["max_output"]))
    n_meas = int(measured.sum())
    viol = int((violate & measured).sum())
    known = int((violate & decided & measured).sum())
    span_arr = float(arr[-1] - arr[0]) if len(arr) > 1 else 0.0
    lam = (len(arr) - 1) / span_arr if span_arr > 0 else math.nan

    m: dict[str, Any] = {
        "generated": len(req),
        "arrived": counts["completed"] + counts["rejected"] + counts["unfinished"],
        "completed": counts["completed"],
        "rejected": counts["rejected"],
        "unfinished": counts["unfinished"],
        "measured": n_meas,
        "measured_unfinished": int((measured & ~done).sum()),
        "window_start_s": lo,
        "window_end_s": hi,
        "sim_end_s": float(res.end_time),
        "arrival_rate_rps": lam,
        "throughput_rps": float(finished_in.sum()) / span if span > 0 else math.nan,
        "output_tokens_per_s": float(req.output[finished_in].sum()) / span if span > 0 else math.nan,
        "goodput_rps": float((finished_in & ~violate).sum()) / span if span > 0 else math.nan,
    }
    for name in ("latency", "queue_delay", "ttft"):
        m.update(_stats(name, times[name][measured]))
    tbt = res.tbt[measured & ~np.isnan(res.tbt)]
    m["tbt_mean_s"] = float(tbt.mean()) if len(tbt) else math.nan
    m["sla_violation_rate"] = viol / n_meas if n_meas else math.nan
    m["sla_violation_rate_known"] = known / n_meas if n_meas else math.nan
    m["sla_undecided"] = viol - known
    n_rej = int(rejected_in.sum())
    m["sla_violation_rate_with_rejected"] = (viol + n_rej) / (n_meas + n_rej) if n_meas + n_rej else math.nan
    m["rejected_rate"] = counts["rejected"] / m["arrived"] if m["arrived"] else math.nan
    m["gpu_utilization"] = float(overlap.sum()) / (res.num_gpus * span) if span > 0 else math.nan
    m["slot_efficiency"] = float(b["output_tokens"].sum()) / padded if padded > 0 else math.nan
    m["saturation_throughput_rps"] = math.nan if saturation_rps is None else float(saturation_rps)
    m["offered_load"] = offered_load(lam, saturation_rps)
    m["num_batches"] = int(len(b["size"]))
    m["mean_batch_size"] = float(b["size"].mean()) if len(b["size"]) else math.nan
    m["kv_overflow_batches"] = int(np.sum(b["kv_tokens"] > res.kv_capacity_tokens))
    k_bins = max(int(res.bin.max()) + 1 if len(res.bin) else 1, len(res.cut_points) + 1)
    for k in range(k_bins):
        sel = measured & (res.bin == k)
        lat_k = times["latency"][sel]
        m[f"bin{k}_measured"] = int(sel.sum())
        m[f"bin{k}_latency_mean_s"] = float(lat_k.mean()) if len(lat_k) else math.nan
        m[f"bin{k}_latency_p99_s"] = float(np.percentile(lat_k, 99)) if len(lat_k) else math.nan
    return m
