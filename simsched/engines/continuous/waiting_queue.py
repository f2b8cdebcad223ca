"""The WAITING queue of one replica (vLLM ``request_queue.py``), the engine's pluggable policy.

- ``fcfs`` (``FCFSRequestQueue``): a deque. New requests join the back; a preempted request
  is put back at the front (``prepend_request``), so it resumes first.
- ``priority`` (``PriorityRequestQueue``): a binary heap ordered by ``Request.__lt__``:
  (priority, arrival time, request id), smaller first. "Prepending" is an ordinary push.

The simulator's policies (``policies``, issue 12) add two more:

- bins (``scheduler=multi_bin_*``): K FIFO rings, one per bin of predicted output length
  (``Q.qi[i, BIN]``). The head of WAITING is the head of the bin chosen by the scheduler's
  rule (``scheduler.choose_bin``'s meanings: round robin from the bin after the last one
  admitted from, the longest queue, or the oldest head; ties to the lowest bin). A preempted
  request goes back to the front of its own bin.
- lpm (``scheduler=lpm``): the fcfs ring, stably sorted by cached-prefix length, longest
  first, before each admission pass while it holds at most LPM_MAX requests
  (``lpm_sort``; SGLang's ``SchedulePolicy`` in
  ``python/sglang/srt/managers/schedule_policy.py``: ``_compute_prefix_matches`` then
  ``_sort_by_longest_prefix``, and FCFS above 128 waiting requests).

All live in the replica's slice of ``S.wq`` (rings for fcfs, lpm and bins, a heap for
priority and sjf), sized for every request the replica can ever hold, so nothing is
allocated while running. The step formation only calls ``wq_peek`` / ``wq_pop`` /
``wq_push_back`` / ``wq_push_front`` / ``wq_remove`` (and ``lpm_sort``).
"""
from __future__ import annotations

from simsched.engines.continuous.block_pool import find_cache_hit
from simsched.engines.continuous.state import (BIN, LPM_MAX, ORDER, POLICY_BINS, POLICY_FCFS, POLICY_LPM,
                                              POLICY_PRIORITY, PRIORITY, WQ_CAP, WQ_HEAD, WQ_LEN, WQ_OFF)
from simsched.jit import jitable

ROUND_ROBIN, LONGEST_QUEUE = 0, 1     # scheduler.BIN_SELECTIONS indices (2: oldest head)


@jitable(inline=True)
def _ring(P):
    return P.policy == POLICY_FCFS or P.policy == POLICY_LPM


@jitable
def _bin_choose(P, Q, S, g):
    """The bin whose head is WAITING's head (-1: all empty). Header of the replica's slice:
    K heads, K lengths, the round-robin pointer; then the K rings."""
    off = S.si[g, WQ_OFF]
    K = P.k_bins
    if P.bin_rule == ROUND_ROBIN:
        rr = S.wq[off + 2 * K]
        for j in range(K):
            k = (rr + j) % K
            if S.wq[off + K + k] > 0:
                return k
        return -1
    best = -1
    best_key = 0
    cap = S.si[g, WQ_CAP]
    for k in range(K):
        n = S.wq[off + K + k]
        if n > 0:
            if P.bin_rule == LONGEST_QUEUE:
                key = -n
            else:
                key = Q.qi[S.wq[off + 2 * K + 1 + k * cap + S.wq[off + k]], ORDER]
            if best < 0 or key < best_key:
                best = k
                best_key = key
    return best


@jitable(inline=True)
def _bin_slot(S, g, K, k, pos):
    """Index in S.wq of position ``pos`` (0 = head) of bin k's ring."""
    off = S.si[g, WQ_OFF]
    cap = S.si[g, WQ_CAP]
    return off + 2 * K + 1 + k * cap + ((S.wq[off + k] + pos) & (cap - 1))


@jitable
def _bin_push(P, Q, S, g, i, front):
    K = P.k_bins
    off = S.si[g, WQ_OFF]
    k = Q.qi[i, BIN]
    if front:
        S.wq[off + k] = (S.wq[off + k] - 1) & (S.si[g, WQ_CAP] - 1)
        S.wq[_bin_slot(S, g, K, k, 0)] = i
    else:
        S.wq[_bin_slot(S, g, K, k, S.wq[off + K + k])] = i
    S.wq[off + K + k] += 1
    S.si[g, WQ_LEN] += 1


@jitable(inline=True)
def before(Q, a, b):
    """Priority order: ``Request.__lt__``, (priority, arrival_time, request_id). vLLM stamps
    ``arrival_time`` when a request is added, so it orders requests as they arrived; ``ORDER``
    is that rank (unique, so the request-id tie-break is never reached)."""
    if Q.qi[a, PRIORITY] != Q.qi[b, PRIORITY]:
        return Q.qi[a, PRIORITY] < Q.qi[b, PRIORITY]
    return Q.qi[a, ORDER] < Q.qi[b, ORDER]


@jitable
def _sift_up(Q, S, g, pos):
    off = S.si[g, WQ_OFF]
    x = S.wq[off + pos]
    while pos > 0:
        parent = (pos - 1) >> 1
        y = S.wq[off + parent]
        if before(Q, x, y):
            S.wq[off + pos] = y
            pos = parent
        else:
            break
    S.wq[off + pos] = x


@jitable
def _sift_down(Q, S, g, pos):
    off = S.si[g, WQ_OFF]
    n = S.si[g, WQ_LEN]
    x = S.wq[off + pos]
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and before(Q, S.wq[off + c + 1], S.wq[off + c]):
            c += 1
        if before(Q, S.wq[off + c], x):
            S.wq[off + pos] = S.wq[off + c]
            pos = c
        else:
            break
    S.wq[off + pos] = x


@jitable
def wq_push_back(P, Q, S, g, i):
    off = S.si[g, WQ_OFF]
    n = S.si[g, WQ_LEN]
    if P.policy == POLICY_BINS:
        _bin_push(P, Q, S, g, i, False)
    elif _ring(P):
        S.wq[off + ((S.si[g, WQ_HEAD] + n) & (S.si[g, WQ_CAP] - 1))] = i
        S.si[g, WQ_LEN] = n + 1
    else:
        S.wq[off + n] = i
        S.si[g, WQ_LEN] = n + 1
        _sift_up(Q, S, g, n)


@jitable
def wq_push_front(P, Q, S, g, i):
    if P.policy == POLICY_BINS:
        _bin_push(P, Q, S, g, i, True)
    elif _ring(P):
        h = (S.si[g, WQ_HEAD] - 1) & (S.si[g, WQ_CAP] - 1)
        S.si[g, WQ_HEAD] = h
        S.wq[S.si[g, WQ_OFF] + h] = i
        S.si[g, WQ_LEN] += 1
    else:
        wq_push_back(P, Q, S, g, i)


@jitable(inline=True)
def wq_peek(P, Q, S, g):
    if _ring(P):
        return S.wq[S.si[g, WQ_OFF] + S.si[g, WQ_HEAD]]
    if P.policy == POLICY_BINS:
        return S.wq[_bin_slot(S, g, P.k_bins, _bin_choose(P, Q, S, g), 0)]
    return S.wq[S.si[g, WQ_OFF]]


@jitable
def wq_pop(P, Q, S, g):
    off = S.si[g, WQ_OFF]
    if P.policy == POLICY_BINS:
        K = P.k_bins
        k = _bin_choose(P, Q, S, g)
        i = S.wq[_bin_slot(S, g, K, k, 0)]
        S.wq[off + k] = (S.wq[off + k] + 1) & (S.si[g, WQ_CAP] - 1)
        S.wq[off + K + k] -= 1
        S.wq[off + 2 * K] = (k + 1) % K
        S.si[g, WQ_LEN] -= 1
        return i
    if _ring(P):
        h = S.si[g, WQ_HEAD]
        i = S.wq[off + h]
        S.si[g, WQ_HEAD] = (h + 1) & (S.si[g, WQ_CAP] - 1)
        S.si[g, WQ_LEN] -= 1
        return i
    i = S.wq[off]
    n = S.si[g, WQ_LEN] - 1
    S.si[g, WQ_LEN] = n
    if n > 0:
        S.wq[off] = S.wq[off + n]
        _sift_down(Q, S, g, 0)
    return i


@jitable
def wq_remove(P, Q, S, g, i):
    """Remove request ``i`` wherever it is (``remove_requests``: a stale output finished a
    preempted request)."""
    n = S.si[g, WQ_LEN]
    off = S.si[g, WQ_OFF]
    if P.policy == POLICY_BINS:
        K = P.k_bins
        k = Q.qi[i, BIN]
        nb = S.wq[off + K + k]
        j = 0
        while j < nb and S.wq[_bin_slot(S, g, K, k, j)] != i:
            j += 1
        for m in range(j, nb - 1):
            S.wq[_bin_slot(S, g, K, k, m)] = S.wq[_bin_slot(S, g, K, k, m + 1)]
        S.wq[off + K + k] = nb - 1
        S.si[g, WQ_LEN] = n - 1
        return
    if _ring(P):
        mask = S.si[g, WQ_CAP] - 1
        h = S.si[g, WQ_HEAD]
        k = 0
        while k < n and S.wq[off + ((h + k) & mask)] != i:
            k += 1
        for m in range(k, n - 1):
            S.wq[off + ((h + m) & mask)] = S.wq[off + ((h + m + 1) & mask)]
        S.si[g, WQ_LEN] = n - 1
        return
    k = 0
    while S.wq[off + k] != i:
        k += 1
    S.si[g, WQ_LEN] = n - 1
    if k < n - 1:
        S.wq[off + k] = S.wq[off + n - 1]
        _sift_down(Q, S, g, k)
        _sift_up(Q, S, g, k)


@jitable
def lpm_sort(P, Q, R, S, K, g):
    """SGLang's longest-prefix-match order (``SchedulePolicy.calc_priority`` with policy
    "lpm": ``_compute_prefix_matches``, then ``_sort_by_longest_prefix``, a stable sort by
    −len(prefix)): reorder replica g's WAITING ring by cached prefix blocks, longest first,
    ties in queue order. Above LPM_MAX waiting requests SGLang falls back to FCFS, and so does
    this. Stable insertion sort in ``S.scratch``'s last 2·LPM_MAX entries."""
    n = S.si[g, WQ_LEN]
    if n < 2 or n > LPM_MAX:
        return
    off = S.si[g, WQ_OFF]
    mask = S.si[g, WQ_CAP] - 1
    h = S.si[g, WQ_HEAD]
    ids = len(S.scratch) - 2 * LPM_MAX
    keys = ids + LPM_MAX
    for k in range(n):
        i = S.wq[off + ((h + k) & mask)]
        n_hit, _ = find_cache_hit(P, Q, R, K, g, i)
        j = k
        while j > 0 and S.scratch[keys + j - 1] < n_hit:
            S.scratch[ids + j] = S.scratch[ids + j - 1]
            S.scratch[keys + j] = S.scratch[keys + j - 1]
            j -= 1
        S.scratch[ids + j] = i
        S.scratch[keys + j] = n_hit
    for k in range(n):
        S.wq[off + ((h + k) & mask)] = S.scratch[ids + k]
