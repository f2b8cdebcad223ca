"""A deliberately straightforward reference simulator (tests only).

One Python object per request, list queues, and a single event heap keyed
``(time, priority, seq)``: completions (priority 0, seq = gpu) before arrivals (priority 1,
seq = row). Handlers return nothing fancy; it is slow and obvious. The fast engine must agree
with it bit for bit: same batches, GPUs, start, first-token and finish times, TBT and status.
It shares only the batcher's controller (Algorithms 1 and 2) and the latency model's
``batch_time`` with the engine; queues, bins, memory statistics, events and the clock are its own.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Req:
    row: int
    arrival: float
    prompt: int
    output: int
    bin: int
    predicted: int
    start: float = math.nan
    finish: float = math.nan
    first_token: float = math.nan
    tbt: float = math.nan
    gpu: int = -1
    batch: int = -1
    status: str = "unfinished"


def reference_simulate(requests, scheduler, latency, gpus, bins: np.ndarray, predicted: np.ndarray | None = None,
                       horizon: float = math.inf, release: str = "batch_end") -> dict[str, np.ndarray]:
    """Serve the requests (bins and predictions given; predictions default to the true
    outputs) until every one is done or the clock would pass ``horizon``; return per-request
    batch, gpu, start, first_token, finish, tbt and status."""
    n = len(requests)
    pred = requests.output if predicted is None else predicted
    reqs = [Req(i, float(requests.arrival[i]), int(requests.prompt[i]), int(requests.output[i]), int(bins[i]),
                int(pred[i])) for i in range(n)]
    eta = int(gpus.kv_capacity_tokens)
    for r in reqs:
        if r.arrival > horizon:
            r.status = "not_arrived"
        elif r.prompt + r.output > eta:
            r.status = "rejected"
    admitted = [r for r in reqs if r.status == "unfinished"]
    K = int(scheduler.k_bins)
    queues: list[list[Req]] = [[] for _ in range(K)]
    seen: list[list[Req]] = [[] for _ in range(K)]       # arrived, per bin
    done: list[list[Req]] = [[] for _ in range(K)]       # completed, per bin
    ctl = [scheduler.batcher.controller(eta) for _ in range(K)]
    need_full = ctl[0].min_batch
    events: list[tuple[float, int, int, object]] = []
    for r in admitted:
        heapq.heappush(events, (r.arrival, 1, r.row, r))
    remaining_arrivals = len(admitted)
    free = list(range(int(gpus.count)))
    batches: list[tuple[int, list[Req], float]] = []
    rr = 0

    def stats(k: int) -> tuple[float, float]:
        a = max(len(seen[k]), 1)
        sp = float(sum(r.prompt for r in seen[k]))
        sp2 = float(sum(r.prompt * r.prompt for r in seen[k]))
        mp = sp / a
        vp = sp2 / a - mp * mp
        if done[k]:
            m = len(done[k])
            so = float(sum(r.output for r in done[k]))
            so2 = float(sum(r.output * r.output for r in done[k]))
            mo = so / m
            vo = so2 / m - mo * mo
        else:
            so = float(sum(r.predicted for r in seen[k]))
            so2 = float(sum(r.predicted * r.predicted for r in seen[k]))
            mo = so / a
            vo = so2 / a - mo * mo
        return mp + mo, math.sqrt(max(vp, 0.0) + max(vo, 0.0))

    def choose(need: int) -> int:
        ready = [k for k in range(K) if len(queues[k]) >= need]
        if not ready:
            return -1
        if scheduler.bin_selection == "round_robin" or K == 1:
            for j in range(K):
                k = (rr + j) % K
                if k in ready:
                    return k
        if scheduler.bin_selection == "longest_queue":
            return min(ready, key=lambda k: (-len(queues[k]), k))
        return min(ready, key=lambda k: (queues[k][0].arrival, k))

    while events and events[0][0] <= horizon:
        t = events[0][0]
        # Handle every event at time t: completions first (priority 0), then arrivals.
        while events and events[0][0] == t:
            _, prio, _, item = heapq.heappop(events)
            if prio == 0:
                gpu, members, b, tbt, k = item
                for r in members:
                    done[k].append(r)
                    r.status = "completed"
                ctl[k].observe(b, tbt)
                heapq.heappush(free, gpu)
            else:
                queues[item.bin].append(item)
                seen[item.bin].append(item)
                remaining_arrivals -= 1
        need = 1 if remaining_arrivals == 0 else need_full
        while free:
            k = choose(need)
            if k < 0:
                break
            rr = k + 1
            waiting = len(queues[k])
            if ctl[k].needs_memory:
                mu, sigma = stats(k)
                b = ctl[k].size(waiting, mu, sigma)
            else:
                b = ctl[k].size(waiting)
            members, queues[k] = queues[k][:b], queues[k][b:]
            L = max(r.output for r in members)
            P = float(sum(r.prompt for r in members))
            t1 = latency.batch_time(b, 1, P)
            dur = latency.batch_time(b, L, P)
            tbt = (dur - t1) / (L - 1) if L > 1 else latency.batch_time(b, 2, P) - t1
            gpu = heapq.heappop(free)
            bid = len(batches)
            for r in members:
                r.start, r.gpu, r.batch, r.first_token, r.tbt = t, gpu, bid, t + t1, tbt
                r.finish = t + (dur if release == "batch_end" else latency.batch_time(b, r.output, P))
            batches.append((gpu, members, t + dur))
            heapq.heappush(events, (t + dur, 0, gpu, (gpu, members, b, tbt, k)))
    return {
        "batch": np.array([r.batch for r in reqs]),
        "gpu": np.array([r.gpu for r in reqs]),
        "start": np.array([r.start for r in reqs]),
        "first_token": np.array([r.first_token for r in reqs]),
        "finish": np.array([r.finish if r.status == "completed" else math.nan for r in reqs]),
        "tbt": np.array([r.tbt for r in reqs]),
        "status": np.array([r.status for r in reqs]),
    }
