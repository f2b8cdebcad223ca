"""The discrete-event engine: G GPUs serving run-to-completion batches from the scheduler's queues.

Event model. There are two kinds of events: request arrivals (a sorted array read through a
pointer, never pushed on a heap) and batch completions (a heap keyed ``(time, gpu, batch)``).
At equal times a completion is handled before an arrival, and all completions at one instant
are handled before any dispatch, so the SLA controller sees every observation; free GPUs are
taken lowest id first. These rules make a run a pure function of its inputs and seed.

Queues are index ranges. Each bin's members are laid out in arrival order, so "the waiting
requests of bin k" is a slice ``[head_k, arrived_k)`` and a batch is a contiguous slice;
per-request results are filled in vectorised at the end from per-batch records. This keeps
the Python work per *batch*, not per request.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.cluster import Gpus
from simsched.errors import ConfigError
from simsched.scheduler import Scheduler
from simsched.workloads.requests import RequestTable

COMPLETED, REJECTED, UNFINISHED, NOT_ARRIVED = 0, 1, 2, 3
STATUS_NAMES = ("completed", "rejected", "unfinished", "not_arrived")
REASONS = ("", "exceeds_kv_capacity", "queued_at_horizon", "in_flight_at_horizon", "after_horizon")


@dataclass
class SimResult:
    """Columnar results. Per-request arrays are in the workload's row order."""

    requests: RequestTable
    predicted: np.ndarray
    bin: np.ndarray
    status: np.ndarray          # int8, index into STATUS_NAMES
    reason: np.ndarray          # int8, index into REASONS
    batch: np.ndarray           # int64, -1 where never dispatched
    gpu: np.ndarray             # int32, -1 where never dispatched
    start: np.ndarray           # float64, NaN where never dispatched
    finish: np.ndarray          # float64, NaN unless completed
    first_token: np.ndarray     # float64, NaN where never dispatched
    tbt: np.ndarray             # float64, NaN where never dispatched
    batches: dict[str, np.ndarray]
    cut_points: np.ndarray
    num_gpus: int
    kv_capacity_tokens: int
    end_time: float

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return {name: int(c[i]) for i, name in enumerate(STATUS_NAMES)}


def simulate(
    requests: RequestTable,
    scheduler: Scheduler,
    latency: Any,
    gpus: Gpus,
    predictor: Any,
    rng: np.random.Generator,
    horizon_s: float | None = None,
    release: str = "batch_end",
) -> SimResult:
    """Run one simulation. ``release='own_length'`` completes each request at its own last
    token instead of at batch end (its batch still holds the GPU until the longest finishes)."""
    if release not in ("batch_end", "own_length"):
        raise ConfigError("engine.release", "unknown value", release, "batch_end, own_length")
    pred_rng, bin_rng = rng.spawn(2)
    n = len(requests)
    arrival, prompt, output = requests.arrival, requests.prompt, requests.output
    predicted = predictor.predict(output, pred_rng)
    cuts = scheduler.cut_points(predicted)
    k_bins = int(scheduler.k_bins)
    bins = predictor.perturb_bins(scheduler.assign_bins(predicted, cuts), k_bins, bin_rng)

    eta = int(gpus.kv_capacity_tokens)
    need = prompt + output
    arrived_mask = np.ones(n, dtype=bool) if horizon_s is None else arrival <= horizon_s
    fits = need <= eta
    if n and not np.any(fits):
        raise ConfigError("gpus.kv_capacity_tokens", f"is smaller than every request "
                          f"(the smallest needs {int(need.min())} tokens)", eta)
    valid = np.flatnonzero(fits & arrived_mask)            # admitted, in arrival order
    grouped = valid[np.argsort(bins[valid], kind="stable")]  # by bin, arrival order inside
    sizes = np.bincount(bins[valid], minlength=k_bins)
    offsets = np.concatenate(([0], np.cumsum(sizes)))

    core = _Core(requests, predicted, grouped, offsets, valid, bins, k_bins, latency, gpus,
                 scheduler, horizon_s)
    core.run()
    return core.result(predicted, bins, cuts, fits, arrived_mask, release)


def _prefix(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x) + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(x, out=out[1:])
    return out


class _Core:
    """State of one run. Lives only inside ``simulate``."""

    def __init__(self, requests, predicted, grouped, offsets, valid, bins, k_bins, latency, gpus,
                 scheduler, horizon_s):
        self.requests, self.grouped, self.offsets, self.k = requests, grouped, offsets, k_bins
        self.latency, self.G, self.horizon = latency, int(gpus.count), horizon_s
        self.selection = scheduler.bin_selection
        self.valid_arrival = requests.arrival[valid]
        pos_in_valid = np.empty(len(requests), dtype=np.int64)
        pos_in_valid[valid] = np.arange(len(valid))
        # Sorted keys k*nv + position-in-arrival-order: one searchsorted gives every bin's arrivals.
        nv = len(valid)
        self.nv = nv
        self.bin_keys = bins[grouped].astype(np.int64) * (nv + 1) + pos_in_valid[grouped]
        self.query_base = np.arange(k_bins, dtype=np.int64) * (nv + 1)
        self.arr, self.out, self.cp, self.cout, self.cout2, self.cp2, self.cpred, self.cpred2 = \
            ([] for _ in range(8))
        for k in range(k_bins):
            idx = grouped[offsets[k]:offsets[k + 1]]
            p = requests.prompt[idx].astype(np.float64)
            o = requests.output[idx].astype(np.float64)
            q = predicted[idx].astype(np.float64)
            self.arr.append(requests.arrival[idx])
            self.out.append(requests.output[idx])
            self.cp.append(_prefix(p))
            self.cp2.append(_prefix(p * p))
            self.cout.append(_prefix(o))
            self.cout2.append(_prefix(o * o))
            self.cpred.append(_prefix(q))
            self.cpred2.append(_prefix(q * q))
        self.ctl = [scheduler.batcher.controller(int(gpus.kv_capacity_tokens)) for _ in range(k_bins)]
        self.min_batch = self.ctl[0].min_batch
        self.eta = int(gpus.kv_capacity_tokens)
        # Per bin: requests completed so far and the sums of their outputs (memory estimates).
        self.done_n = [0] * k_bins
        self.done_o = [0.0] * k_bins
        self.done_o2 = [0.0] * k_bins
        self.batch_of = np.full(nv, -1, dtype=np.int64)   # in grouped order
        # Per-batch records (plain lists: appends are cheaper than array writes).
        self.b_gpu: list[int] = []
        self.b_bin: list[int] = []
        self.b_start: list[float] = []
        self.b_end: list[float] = []
        self.b_size: list[int] = []
        self.b_L: list[int] = []
        self.b_P: list[float] = []
        self.b_O: list[float] = []
        self.b_tbt: list[float] = []
        self.b_ttft: list[float] = []
        self.b_lo: list[int] = []
        self.in_flight: list[tuple[float, int, int]] = []
        self.end_time = 0.0

    def _memory_stats(self, k: int, arrived: int) -> tuple[float, float]:
        """Online per-request token mean and std for bin k: prompts of requests that have
        arrived, outputs of requests that have completed (predictions until one has)."""
        a = max(arrived, 1)
        mp = self.cp[k][a] / a
        vp = self.cp2[k][a] / a - mp * mp
        done = self.done_n[k]
        if done > 0:
            mo = self.done_o[k] / done
            vo = self.done_o2[k] / done - mo * mo
        else:
            mo = self.cpred[k][a] / a
            vo = self.cpred2[k][a] / a - mo * mo
        return mp + mo, math.sqrt(max(vp, 0.0) + max(vo, 0.0))

    def run(self) -> None:
        k_bins, G, T = self.k, self.G, self.latency.batch_time
        va, nv = self.valid_arrival, self.nv
        heads = [0] * k_bins
        sizes = [int(self.offsets[k + 1] - self.offsets[k]) for k in range(k_bins)]
        done_n, done_o, done_o2 = self.done_n, self.done_o, self.done_o2
        free = list(range(G))           # a heap: lowest id first
        busy: list[tuple[float, int, int]] = []
        horizon = math.inf if self.horizon is None else float(self.horizon)
        na = 0                          # valid requests arrived by time t
        dispatched = 0
        rr = 0
        t = 0.0
        min_batch = self.min_batch
        searchsorted = va.searchsorted
        bin_searchsorted = self.bin_keys.searchsorted
        while True:
            if na < nv and va[na] <= t:
                na = int(searchsorted(t, side="right"))
            if free and na > dispatched:
                if k_bins == 1:
                    arrived = [na]
                else:
                    arrived = (bin_searchsorted(self.query_base + na) - self.offsets[:-1]).tolist()
                waiting = [arrived[k] - heads[k] for k in range(k_bins)]
                draining = na == nv
                need = 1 if draining else min_batch
                while free:
                    k = self._choose(waiting, heads, need, rr)
                    if k < 0:
                        break
                    rr = k + 1
                    ctl = self.ctl[k]
                    if ctl.needs_memory:
                        mu, sigma = self._memory_stats(k, arrived[k])
                        b = ctl.size(waiting[k], mu, sigma)
                    else:
                        b = ctl.size(waiting[k])
                    h0 = heads[k]
                    h1 = h0 + b
                    L = int(self.out[k][h0]) if b == 1 else int(self.out[k][h0:h1].max())
                    P = float(self.cp[k][h1] - self.cp[k][h0])
                    t1 = T(b, 1, P)
                    dur = T(b, L, P)
                    tbt = (dur - t1) / (L - 1) if L > 1 else T(b, 2, P) - t1
                    gpu = heapq.heappop(free)
                    bid = len(self.b_start)
                    base = self.offsets[k]
                    self.batch_of[base + h0:base + h1] = bid
                    self.b_gpu.append(gpu)
                    self.b_bin.append(k)
                    self.b_start.append(t)
                    self.b_end.append(t + dur)
                    self.b_size.append(b)
                    self.b_L.append(L)
                    self.b_P.append(P)
                    self.b_O.append(float(self.cout[k][h1] - self.cout[k][h0]))
                    self.b_tbt.append(tbt)
                    self.b_ttft.append(t1)
                    self.b_lo.append(h0)
                    heapq.heappush(busy, (t + dur, gpu, bid))
                    heads[k] = h1
                    waiting[k] -= b
                    dispatched += b
            # Next event: a completion, or (with a free GPU) the arrival that makes work dispatchable.
            t_fin = busy[0][0] if busy else math.inf
            t_arr = math.inf
            if free and na < nv:
                if min_batch == 1:
                    t_arr = float(va[na])
                else:
                    t_arr = float(va[nv - 1])   # the last arrival starts the drain
                    for k in range(k_bins):
                        j = heads[k] + min_batch - 1
                        if j < sizes[k] and self.arr[k][j] < t_arr:
                            t_arr = float(self.arr[k][j])
            t_next = t_fin if t_fin <= t_arr else t_arr
            if t_next == math.inf or t_next > horizon:
                break
            t = t_next
            if t_fin <= t_arr:
                while busy and busy[0][0] == t:
                    _, gpu, bid = heapq.heappop(busy)
                    k, b = self.b_bin[bid], self.b_size[bid]
                    h0 = self.b_lo[bid]
                    done_n[k] += b
                    done_o[k] += self.cout[k][h0 + b] - self.cout[k][h0]
                    done_o2[k] += self.cout2[k][h0 + b] - self.cout2[k][h0]
                    self.ctl[k].observe(b, self.b_tbt[bid])
                    heapq.heappush(free, gpu)
        self.in_flight = busy
        self.end_time = t if self.horizon is None else horizon
        self.dispatched = dispatched

    def _choose(self, waiting: list[int], heads: list[int], need: int, rr: int) -> int:
        """The bin to serve next, or -1 when no bin has a dispatchable batch."""
        k_bins = self.k
        if k_bins == 1:
            return 0 if waiting[0] >= need else -1
        if self.selection == "round_robin":
            for j in range(k_bins):
                k = (rr + j) % k_bins
                if waiting[k] >= need:
                    return k
            return -1
        best, best_key = -1, None
        for k in range(k_bins):
            if waiting[k] >= need:
                key = -waiting[k] if self.selection == "longest_queue" else self.arr[k][heads[k]]
                if best_key is None or key < best_key:
                    best, best_key = k, key
        return best

    def result(self, predicted, bins, cuts, fits, arrived_mask, release) -> SimResult:
        req = self.requests
        n = len(req)
        nb = len(self.b_start)
        batches = {
            "batch_id": np.arange(nb, dtype=np.int64),
            "gpu": np.asarray(self.b_gpu, dtype=np.int32),
            "bin": np.asarray(self.b_bin, dtype=np.int32),
            "start": np.asarray(self.b_start, dtype=np.float64),
            "end": np.asarray(self.b_end, dtype=np.float64),
            "size": np.asarray(self.b_size, dtype=np.int64),
            "max_output": np.asarray(self.b_L, dtype=np.int64),
            "prompt_tokens": np.asarray(self.b_P, dtype=np.float64).astype(np.int64),
            "output_tokens": np.asarray(self.b_O, dtype=np.float64).astype(np.int64),
            "tbt": np.asarray(self.b_tbt, dtype=np.float64),
            "first_token_s": np.asarray(self.b_ttft, dtype=np.float64),
        }
        done = np.ones(nb, dtype=bool)
        for _, _, bid in self.in_flight:
            done[bid] = False
        batches["completed"] = done
        batches["kv_tokens"] = batches["prompt_tokens"] + batches["output_tokens"]

        batch = np.full(n, -1, dtype=np.int64)
        batch[self.grouped] = self.batch_of
        status = np.full(n, UNFINISHED, dtype=np.int8)
        reason = np.full(n, REASONS.index("queued_at_horizon"), dtype=np.int8)
        gpu = np.full(n, -1, dtype=np.int32)
        start = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        first = np.full(n, np.nan)
        tbt = np.full(n, np.nan)
        served = batch >= 0
        sb = batch[served]
        gpu[served] = batches["gpu"][sb]
        start[served] = batches["start"][sb]
        first[served] = start[served] + batches["first_token_s"][sb]
        tbt[served] = batches["tbt"][sb]
        ok = served.copy()
        ok[served] = done[sb]
        ob = batch[ok]
        if release == "own_length":
            finish[ok] = batches["start"][ob] + self.latency.batch_time(
                batches["size"][ob], req.output[ok], batches["prompt_tokens"][ob].astype(float))
        else:
            finish[ok] = batches["end"][ob]
        status[ok] = COMPLETED
        reason[ok] = 0
        reason[served & ~ok] = REASONS.index("in_flight_at_horizon")
        rejected = ~fits & arrived_mask
        status[rejected] = REJECTED
        reason[rejected] = REASONS.index("exceeds_kv_capacity")
        status[~arrived_mask] = NOT_ARRIVED
        reason[~arrived_mask] = REASONS.index("after_horizon")
        res = SimResult(req, predicted, bins, status, reason, batch, gpu, start, finish, first, tbt,
                        batches, np.asarray(cuts, dtype=float), self.G, self.eta, self.end_time)
        check_conservation(res)
        return res


def check_conservation(res: SimResult) -> None:
    """Every request is completed, rejected (with reason), unfinished or not yet arrived, and the
    times of completed ones are ordered. A failure here is a simulator bug, never user error."""
    c = res.counts()
    n = len(res.requests)
    if sum(c.values()) != n:
        raise AssertionError(f"conservation violated: {c} does not sum to {n}")
    arrived = n - c["not_arrived"]
    if c["completed"] + c["rejected"] + c["unfinished"] != arrived:
        raise AssertionError(f"conservation violated: arrived={arrived}, {c}")
    done = res.status == COMPLETED
    if np.any(res.start[done] < res.requests.arrival[done]) or np.any(res.finish[done] < res.start[done]):
        raise AssertionError("a completed request started before it arrived or finished before it started")
    if np.any(res.reason[res.status == REJECTED] == 0):
        raise AssertionError("a rejected request has no reason")
