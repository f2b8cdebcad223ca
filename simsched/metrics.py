"""Run metrics (REFERENCE §6): every figure is computed from the per-request and per-batch
columns of a SimResult, over a measurement window that excludes warm-up and drain."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from simsched.engines.run_to_completion import (COMPLETED, NOT_ARRIVED, REJECTED, UNFINISHED, SimResult,
                                                row_slices)
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
    """Mean, p50, p90, p99 and max of ``x``, a fresh array of the caller's: the percentiles
    partition it in place (no copy of a column of millions), so its order is lost."""
    if len(x) == 0:
        return {f"{prefix}_mean_s": math.nan, f"{prefix}_p50_s": math.nan, f"{prefix}_p90_s": math.nan,
                f"{prefix}_p99_s": math.nan, f"{prefix}_max_s": math.nan}
    mean, top = float(x.mean()), float(x.max())
    p50, p90, p99 = np.percentile(x, [50, 90, 99], overwrite_input=True)
    return {f"{prefix}_mean_s": mean, f"{prefix}_p50_s": float(p50),
            f"{prefix}_p90_s": float(p90), f"{prefix}_p99_s": float(p99), f"{prefix}_max_s": top}


TIMES = ("latency", "queue_delay", "ttft")


def censored_time(res: SimResult, name: str, rows: slice = slice(None)) -> np.ndarray:
    """One of ``TIMES`` for ``rows``, where an unfinished request is censored at the horizon:
    its time is at least ``end_time − arrival``, and that lower bound is what it contributes.
    (Completed requests: their exact times; never-arrived ones: NaN.)"""
    arrival = res.requests.arrival[rows]
    horizon = float(res.end_time)
    unfinished = res.status[rows] == UNFINISHED
    if name == "latency":
        t = res.column("finish", rows) - arrival
        if unfinished.any():
            t = np.where(unfinished, horizon - arrival, t)
        return t
    if name not in TIMES:
        raise KeyError(name)
    at = res.column("start" if name == "queue_delay" else "first_token", rows)
    t = at - arrival
    if unfinished.any():
        known = ~np.isnan(at) & (at <= horizon)
        t = np.where(unfinished & ~known, horizon - arrival, t)
    return t


def sla_outcomes(res: SimResult, sla: Sla, rows: slice = slice(None),
                 latency: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(violates, decided) per request of ``rows``. A completed request violates when it broke a limit.
    An unfinished one is a violation when a limit is already broken at the horizon (its
    deadline has passed, its first token is later than the TTFT limit, or its batch's TBT is
    over the limit); otherwise it is undecided, and it is counted as a violation too, so that
    cutting a run short can never make the SLA look better (``decided`` tells them apart).
    ``latency``: ``censored_time(res, "latency", rows)`` when the caller has it already."""
    late = (censored_time(res, "latency", rows) if latency is None else latency) > sla.latency_s
    if sla.ttft_s is not None:
        late |= censored_time(res, "ttft", rows) > sla.ttft_s
    if sla.tbt_s is not None:
        late |= res.column("tbt", rows) > sla.tbt_s        # NaN (never dispatched) compares False
    status = res.status[rows]
    unfinished = status == UNFINISHED
    decided = (status == COMPLETED) | (unfinished & late)
    violates = late | unfinished
    return violates & (status != REJECTED) & (status != NOT_ARRIVED), decided


def _measured(measured: np.ndarray, value: Callable[[slice], np.ndarray], skip_nan: bool = False,
              dtype: Any = np.float64) -> np.ndarray:
    """``value(rows)`` (a per-request column for a slice of rows) at the ``measured`` rows (and
    with ``skip_nan``, only where it is not NaN), in row order, as ``dtype``: built a slice at a
    time, so no whole column and no temporary of the whole column is ever held."""
    out = np.empty(int(measured.sum()), dtype=dtype)
    k = 0
    for rows in row_slices(len(measured)):
        x = value(rows)
        keep = measured[rows] & ~np.isnan(x) if skip_nan else measured[rows]
        x = x[keep]
        out[k:k + len(x)] = x
        k += len(x)
    return out[:k]


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
    ``saturation_rps`` (the scheduler's saturation throughput) gives the offered load ρ.

    Per-request times are computed a slice of rows at a time (``row_slices``) and only the
    measured requests' values are kept, one quantity at a time: a 10M-request run holds one
    column of measured times beside its results, not a dozen temporary columns."""
    req = res.requests
    n = len(req)
    counts = res.counts()
    arr = req.arrival[res.status != NOT_ARRIVED] if counts["not_arrived"] else req.arrival
    lo, hi = window.bounds(arr, res.end_time)
    span = hi - lo
    done = res.status == COMPLETED
    in_window = (req.arrival >= lo) & (req.arrival <= hi)
    measured = (done | (res.status == UNFINISHED)) & in_window
    n_rej = int(((res.status == REJECTED) & in_window).sum())
    n_meas = int(measured.sum())
    measured_unfinished = int((measured & ~done).sum())
    del in_window
    viol = known = finished = good = output_tokens = kept = 0
    latency = np.empty(n_meas)   # the measured requests' censored latencies, in row order
    for rows in row_slices(n):
        lat = censored_time(res, "latency", rows)
        violate, decided = sla_outcomes(res, sla, rows, latency=lat)
        lat = lat[measured[rows]]
        latency[kept:kept + len(lat)] = lat
        kept += len(lat)
        finish = res.column("finish", rows)
        finished_in = done[rows] & (finish >= lo) & (finish <= hi)
        viol += int((violate & measured[rows]).sum())
        known += int((violate & decided & measured[rows]).sum())
        finished += int(finished_in.sum())
        good += int((finished_in & ~violate).sum())
        output_tokens += int(req.output[rows][finished_in].sum())
    del done

    b = res.batches
    overlap = np.empty(len(b["start"]))
    for rows in row_slices(len(overlap)):
        overlap[rows] = np.clip(np.minimum(b["end"][rows], hi) - np.maximum(b["start"][rows], lo), 0.0, None)
    busy = float(overlap.sum())
    del overlap
    padded = float(np.sum(np.multiply(b["size"], b["max_output"], dtype=np.int64)))
    span_arr = float(arr[-1] - arr[0]) if len(arr) > 1 else 0.0
    lam = (len(arr) - 1) / span_arr if span_arr > 0 else math.nan

    m: dict[str, Any] = {
        "generated": n,
        "arrived": counts["completed"] + counts["rejected"] + counts["unfinished"],
        "completed": counts["completed"],
        "rejected": counts["rejected"],
        "unfinished": counts["unfinished"],
        "measured": n_meas,
        "measured_unfinished": measured_unfinished,
        "window_start_s": lo,
        "window_end_s": hi,
        "sim_end_s": float(res.end_time),
        "arrival_rate_rps": lam,
        "throughput_rps": float(finished) / span if span > 0 else math.nan,
        "output_tokens_per_s": float(output_tokens) / span if span > 0 else math.nan,
        "goodput_rps": float(good) / span if span > 0 else math.nan,
    }
    per_bin = _per_bin(res, measured, latency)   # before _stats reorders it
    m.update(_stats("latency", latency))
    del latency
    for name in ("queue_delay", "ttft"):
        x = _measured(measured, lambda rows: censored_time(res, name, rows))
        m.update(_stats(name, x))
        del x
    tbt = _measured(measured, lambda rows: res.column("tbt", rows), skip_nan=True)
    m["tbt_mean_s"] = float(tbt.mean()) if len(tbt) else math.nan
    del tbt
    m["sla_violation_rate"] = viol / n_meas if n_meas else math.nan
    m["sla_violation_rate_known"] = known / n_meas if n_meas else math.nan
    m["sla_undecided"] = viol - known
    m["sla_violation_rate_with_rejected"] = (viol + n_rej) / (n_meas + n_rej) if n_meas + n_rej else math.nan
    m["rejected_rate"] = counts["rejected"] / m["arrived"] if m["arrived"] else math.nan
    m["gpu_utilization"] = busy / (res.num_gpus * span) if span > 0 else math.nan
    m["slot_efficiency"] = float(b["output_tokens"].sum()) / padded if padded > 0 else math.nan
    m["saturation_throughput_rps"] = math.nan if saturation_rps is None else float(saturation_rps)
    m["offered_load"] = offered_load(lam, saturation_rps)
    m["num_batches"] = int(len(b["size"]))
    m["mean_batch_size"] = float(b["size"].mean()) if len(b["size"]) else math.nan
    m["kv_overflow_batches"] = int(np.sum(b["prompt_tokens"] + b["output_tokens"] > res.kv_capacity_tokens))
    m.update(per_bin)
    return m


def _per_bin(res: SimResult, measured: np.ndarray, latency: np.ndarray) -> dict[str, Any]:
    """Measured requests, mean and p99 latency per bin; ``latency``: the measured requests'
    censored latencies in row order."""
    k_bins = max(int(res.bin.max()) + 1 if len(res.bin) else 1, len(res.cut_points) + 1)
    bins = _measured(measured, lambda rows: res.bin[rows], dtype=np.int8 if k_bins <= 127 else res.bin.dtype)
    m: dict[str, Any] = {}
    for k in range(k_bins):
        lat_k = latency[bins == k]
        m[f"bin{k}_measured"] = len(lat_k)
        m[f"bin{k}_latency_mean_s"] = float(lat_k.mean()) if len(lat_k) else math.nan
        m[f"bin{k}_latency_p99_s"] = (float(np.percentile(lat_k, 99, overwrite_input=True)) if len(lat_k)
                                      else math.nan)
    return m
