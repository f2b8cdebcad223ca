"""Heterogeneous fleets: replicas in pools, each pool with its own GPU count, KV capacity and
step time (``gpus.pools``, e.g. 2 x H100 + 4 x A100 through the roofline presets).

Each pool gets its own ``state.Params`` (vLLM's batch defaults for its GPU class, its KV
blocks, its step-time coefficients); the loop ticks replica g with the Params of its pool
(``Fleet.params[Fleet.pool[g]]``). Everything a router and the requests share (block size,
max_model_len, prefix caching, policy, scheduling mode) is the engine's, the same in every
pool. A homogeneous run is one pool, exactly as before pools existed.

Speed. A pool's relative speed is the inverse of its GPU time for a reference decode step
(``REF_DECODE_SEQS`` sequences of ``REF_CONTEXT`` context tokens each), the fastest pool = 1;
only ``least_tokens`` weighs replicas by it (see ``routing``).
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.latency import StepTime

Fleet = namedtuple("Fleet", ["pool", "params"])   # pool index per replica; Params per pool

REF_DECODE_SEQS, REF_CONTEXT = 64, 1024


@dataclass(frozen=True)
class PoolSpec:
    """One pool of identical replicas: its name, hardware (``simulate.Hardware``) and step time."""

    name: str
    hw: Any
    step: StepTime


def relative_speeds(steps: list[StepTime]) -> np.ndarray:
    """Each pool's decode speed relative to the fastest (1.0)."""
    t = np.array([s.c0_s + s.c_dec_s * REF_DECODE_SEQS + s.c_ctx_s * REF_DECODE_SEQS * REF_CONTEXT
                  for s in steps], dtype=np.float64)
    if np.any(t <= 0):
        return np.ones(len(steps))
    return t.min() / t


def pool_summary(res: Any, lo: float, hi: float, violate: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per pool: requests routed there and their outcomes, completions and goodput in the
    measurement window [lo, hi] (``violate``: the requests that miss an SLO), and TTFT/E2E
    percentiles of the requests measured there. Counts and rates add up over the pools to
    the whole run's (``serving_metrics``)."""
    req = res.requests
    pool = res.pool
    in_window = (req.arrival >= lo) & (req.arrival <= hi)
    done = res.status == 0
    finished_in = done & (res.finish >= lo) & (res.finish <= hi)
    span = hi - lo
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(res.pool_names):
        mine = pool == k
        measured = mine & done & in_window
        e2e = res.e2e[measured]
        ttft = res.ttft[measured]
        m: dict[str, Any] = {
            "replicas": int(np.count_nonzero(res.pool_of_replica == k)),
            "routed": int(mine.sum()),
            "completed": int((mine & done).sum()),
            "rejected": int((mine & (res.status == 1)).sum()),
            "unfinished": int((mine & (res.status == 2)).sum()),
            "measured": int(measured.sum()),
            "throughput_rps": float((mine & finished_in).sum()) / span if span > 0 else math.nan,
            "goodput_rps": (float((mine & finished_in & ~violate).sum()) / span
                            if span > 0 else math.nan),
            "output_tokens": int(req.output[mine & done].sum()),
        }
        for label, x in (("ttft", ttft), ("latency", e2e)):
            m[f"{label}_mean_s"] = float(x.mean()) if len(x) else math.nan
            m[f"{label}_p50_s"] = float(np.percentile(x, 50)) if len(x) else math.nan
            m[f"{label}_p99_s"] = float(np.percentile(x, 99)) if len(x) else math.nan
        out[name] = m
    return out
