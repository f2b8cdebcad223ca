"""The run-to-completion event loop: one plain function over arrays, compiled for large runs.

``serve`` keeps the event order and the bookkeeping; what a batch is made of comes from
functions it calls: the bin to serve (``scheduler.choose_bin``), the batch size
(``batchers.batch_size``: Algorithms 1 and 2, fed by ``batchers.token_moments`` and
``batchers.sla_observe``), the batch's longest output and token sums (``batch_tokens``) and
its duration (``latency.form_time``). ``simsched.jit``
compiles it with numba for runs of ``MIN_COMPILED_REQUESTS`` or more and runs it as Python
below that: the same source either way.

Event model. Two kinds of events: request arrivals (rows in arrival order, read through a
pointer, never pushed on a heap) and batch completions (a heap keyed ``(time, gpu, batch)``).
At equal times a completion is handled before an arrival, and all completions at one instant
before any dispatch, so the SLA controller sees every observation; free GPUs are taken lowest
id first. These rules make a run a pure function of its inputs.

Queues. Each bin's admitted requests are laid out in arrival order (``members``, a counting
sort by bin), so "the waiting requests of bin k" is a slice ``[head_k, arrived_k)`` of its
part and a batch is a contiguous slice of it. Per-bin running sums of prompt and predicted
tokens (arrived requests) and true output tokens (completed ones) feed Algorithm 1.
"""
from __future__ import annotations

import heapq

import numpy as np

from simsched.batchers import ControllerParams, SlaState, batch_size, sla_observe, token_moments
from simsched.jit import jitable
from simsched.latency import form_time
from simsched.scheduler import OLDEST_FIRST, choose_bin


@jitable
def batch_tokens(members: np.ndarray, lo: int, hi: int, prompt: np.ndarray, output: np.ndarray) -> tuple:
    """The batch ``members[lo:hi]``'s longest output (its L: the batch holds its GPU until the
    longest member finishes) and its prompt and output token sums."""
    longest, prompt_sum, output_sum = 0, 0, 0
    for j in range(lo, hi):
        r = members[j]
        longest = max(longest, output[r])
        prompt_sum += prompt[r]
        output_sum += output[r]
    return longest, prompt_sum, output_sum


def serve(arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, predicted: np.ndarray,
          bins: np.ndarray, admitted: np.ndarray, k_bins: int, num_gpus: int, horizon: float,
          rule: int, p: ControllerParams, sla: SlaState, lat_kind: int, lat_coefs: np.ndarray) -> tuple:
    """Serve the ``admitted`` rows on ``num_gpus`` GPUs until every one completes or the clock
    would pass ``horizon`` (``inf``: no horizon).

    Returns ``(nb, batch_of, in_flight, t_end, records)``: the number of batches, each row's
    batch (-1 if never dispatched), the batches still running at the end, the last event time,
    and the per-batch columns ``(gpu, bin, start, end, size, longest, prompt_tokens,
    output_tokens, tbt, ttft)``, each of which holds ``nb`` valid entries."""
    n = len(arrival)
    # Each bin's admitted rows in arrival order: bin k's are members[first[k]:first[k + 1]].
    first = np.zeros(k_bins + 1, np.int64)
    for i in range(n):
        if admitted[i]:
            first[bins[i] + 1] += 1
    for k in range(k_bins):
        first[k + 1] += first[k]
    nv = first[k_bins]
    members = np.empty(nv, np.int32)
    fill = first[:k_bins].copy()
    last_arrival = np.inf
    for i in range(n):
        if admitted[i]:
            members[fill[bins[i]]] = i
            fill[bins[i]] += 1
            last_arrival = arrival[i]

    # Per bin: dispatched, arrived and waiting counts; the token sums of Algorithm 1.
    heads = np.zeros(k_bins, np.int64)
    arrived = np.zeros(k_bins, np.int64)
    waiting = np.zeros(k_bins, np.int64)
    head_arrival = np.full(k_bins, np.inf)
    done = np.zeros(k_bins, np.int64)
    sp, sp2 = np.zeros(k_bins), np.zeros(k_bins)     # prompts of arrived requests
    sq, sq2 = np.zeros(k_bins), np.zeros(k_bins)     # predicted outputs of arrived requests
    so, so2 = np.zeros(k_bins), np.zeros(k_bins)     # true outputs of completed requests

    # Per batch (at most one per admitted request; untouched entries cost no memory). A size
    # is below 2**31 (so is the row count) and a longest output at most MAX_TOKENS: int32.
    cap = max(nv, 1)
    b_gpu = np.empty(cap, np.int32)
    b_bin = np.empty(cap, np.int32)
    b_start = np.empty(cap)
    b_end = np.empty(cap)
    b_size = np.empty(cap, np.int32)
    b_longest = np.empty(cap, np.int32)
    b_prompt = np.empty(cap, np.int64)
    b_output = np.empty(cap, np.int64)
    b_tbt = np.empty(cap)
    b_ttft = np.empty(cap)
    b_lo = np.empty(cap, np.int32)                   # its first member's position in members
    batch_of = np.full(n, -1, np.int32)

    free = [g for g in range(num_gpus)]             # a heap (sorted): lowest id first
    busy = [(0.0, 0, 0) for _ in range(0)]          # a heap of (end time, gpu, batch)
    row = 0              # next row to arrive
    na = 0               # admitted rows arrived by time t
    dispatched = 0
    rr = 0
    nb = 0
    t = 0.0
    while True:
        # Arrivals up to t (rows that are not admitted are passed over).
        while row < n and (not admitted[row] or arrival[row] <= t):
            if admitted[row]:
                k = bins[row]
                arrived[k] += 1
                na += 1
                x = float(prompt[row])
                sp[k] += x
                sp2[k] += x * x
                q = float(predicted[row])
                sq[k] += q
                sq2[k] += q * q
            row += 1

        # Dispatch onto free GPUs while some bin has a batch ready.
        if len(free) > 0 and na > dispatched:
            for k in range(k_bins):
                waiting[k] = arrived[k] - heads[k]
            need = 1 if na == nv else p.min_batch
            while len(free) > 0:
                if rule == OLDEST_FIRST:
                    for k in range(k_bins):
                        head_arrival[k] = arrival[members[first[k] + heads[k]]] if waiting[k] > 0 else np.inf
                k = choose_bin(rule, waiting, head_arrival, need, rr)
                if k < 0:
                    break
                rr = k + 1
                mu, sigma = 0.0, 0.0
                if p.memory_aware:
                    mu, sigma = token_moments(arrived[k], sp[k], sp2[k], sq[k], sq2[k], done[k], so[k], so2[k])
                b = batch_size(p, waiting[k], mu, sigma, sla, k)
                lo = first[k] + heads[k]
                for j in range(lo, lo + b):
                    batch_of[members[j]] = nb
                longest, prompt_sum, output_sum = batch_tokens(members, lo, lo + b, prompt, output)
                P = float(prompt_sum)
                t1 = form_time(lat_kind, lat_coefs, b, 1, P)
                dur = form_time(lat_kind, lat_coefs, b, longest, P)
                if longest > 1:
                    tbt = (dur - t1) / (longest - 1)
                else:
                    tbt = form_time(lat_kind, lat_coefs, b, 2, P) - t1
                gpu = heapq.heappop(free)
                b_gpu[nb] = gpu
                b_bin[nb] = k
                b_start[nb] = t
                b_end[nb] = t + dur
                b_size[nb] = b
                b_longest[nb] = longest
                b_prompt[nb] = prompt_sum
                b_output[nb] = output_sum
                b_tbt[nb] = tbt
                b_ttft[nb] = t1
                b_lo[nb] = lo
                heapq.heappush(busy, (t + dur, gpu, nb))
                nb += 1
                heads[k] += b
                waiting[k] -= b
                dispatched += b

        # Next event: a completion, or (with a free GPU) the arrival that makes work dispatchable.
        t_fin = busy[0][0] if len(busy) > 0 else np.inf
        t_arr = np.inf
        if len(free) > 0 and na < nv:
            if p.min_batch == 1:
                t_arr = arrival[row]
            else:
                t_arr = last_arrival     # the last arrival starts the drain
                for k in range(k_bins):
                    j = heads[k] + p.min_batch - 1
                    if j < first[k + 1] - first[k] and arrival[members[first[k] + j]] < t_arr:
                        t_arr = arrival[members[first[k] + j]]
        t_next = t_fin if t_fin <= t_arr else t_arr
        if t_next == np.inf or t_next > horizon:
            break
        t = t_next
        if t_fin <= t_arr:
            while len(busy) > 0 and busy[0][0] == t:
                _, gpu, bid = heapq.heappop(busy)
                k = b_bin[bid]
                b = b_size[bid]
                o2 = 0.0
                for j in range(b_lo[bid], b_lo[bid] + b):
                    o = float(output[members[j]])
                    o2 += o * o
                done[k] += b
                so[k] += float(b_output[bid])
                so2[k] += o2
                if p.sla_aware:
                    sla_observe(sla, k, b, b_tbt[bid])
                heapq.heappush(free, gpu)

    in_flight = np.empty(len(busy), np.int64)
    for i in range(len(busy)):
        in_flight[i] = busy[i][2]
    records = (b_gpu, b_bin, b_start, b_end, b_size, b_longest, b_prompt, b_output, b_tbt, b_ttft)
    return nb, batch_of, in_flight, t, records
