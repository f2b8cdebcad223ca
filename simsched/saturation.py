"""Saturation throughput μ_sat: the rate at which a scheduler serves requests when its queues
never run dry, measured on the run's own lengths. It is the denominator of the offered load
ρ = λ / μ_sat, so that ρ < 1 means "this scheduler keeps up" and ρ >= 1 that its queue grows
without bound (REFERENCE §6).

Why a simulation: a dynamic batcher's saturated batch size is set by its controllers (memory
estimate, SLA feedback), and binning changes the padding, so no closed form covers every
scheduler. The saturated run is cheap: an evenly spaced sample of at most ``sample`` requests
(20,000 by default), all arriving at t = 0; its cost is that of a run of that many requests,
which the engine serves in milliseconds.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from simsched.engines.run_to_completion import SimResult, simulate
from simsched.workloads.requests import RequestTable

DEFAULT_SAMPLE = 20_000


def saturation_throughput(requests: RequestTable, scheduler: Any, latency: Any, gpus: Any, predictor: Any,
                          rng: np.random.Generator, sample: int = DEFAULT_SAMPLE) -> float:
    """μ_sat (requests/s) of ``scheduler`` on these requests' lengths; NaN for ``sample`` 0 or
    no requests."""
    n = len(requests)
    if n == 0 or sample <= 0:
        return math.nan
    rows = np.unique(np.linspace(0, n - 1, min(n, int(sample))).round().astype(np.int64))
    backlog = RequestTable(np.zeros(len(rows)), requests.prompt[rows], requests.output[rows])
    return saturated_rate(simulate(backlog, scheduler, latency, gpus, predictor, rng))


def saturated_rate(res: SimResult) -> float:
    """G · Σ batch sizes / Σ batch durations of a backlogged run: requests per second of GPU
    time, times the GPUs. The last batch of each bin is left out (a drain remnant, smaller
    than the scheduler would choose under a full queue) unless nothing else is left."""
    b = res.batches
    if len(b["size"]) == 0:
        return math.nan
    keep = np.ones(len(b["size"]), dtype=bool)
    for k in np.unique(b["bin"]):
        keep[np.flatnonzero(b["bin"] == k)[-1]] = False
    if not keep.any():
        keep[:] = True
    busy = float(np.sum((b["end"] - b["start"])[keep]))
    return res.num_gpus * float(np.sum(b["size"][keep])) / busy if busy > 0 else math.nan
