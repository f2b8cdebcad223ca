"""The WAITING queue of one replica (vLLM ``request_queue.py``), the engine's pluggable policy.

- ``fcfs`` (``FCFSRequestQueue``): a deque. New requests join the back; a preempted request
  is put back at the front (``prepend_request``), so it resumes first.
- ``priority`` (``PriorityRequestQueue``): a binary heap ordered by ``Request.__lt__``:
  (priority, arrival time, request id), smaller first. "Prepending" is an ordinary push.

Both live in the replica's slice of ``S.wq`` (a ring buffer for fcfs, a heap for priority),
sized for every request the replica can ever hold, so nothing is allocated while running.
A later policy (several queues, shortest-job-first, ...) adds its branch here: the step
formation only calls ``wq_peek`` / ``wq_pop`` / ``wq_push_back`` / ``wq_push_front`` /
``wq_remove``.
"""
from __future__ import annotations

from simsched.engines.continuous.state import ORDER, POLICY_FCFS, PRIORITY, WQ_CAP, WQ_HEAD, WQ_LEN, WQ_OFF
from simsched.jit import jitable


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
    if P.policy == POLICY_FCFS:
        S.wq[off + ((S.si[g, WQ_HEAD] + n) & (S.si[g, WQ_CAP] - 1))] = i
        S.si[g, WQ_LEN] = n + 1
    else:
        S.wq[off + n] = i
        S.si[g, WQ_LEN] = n + 1
        _sift_up(Q, S, g, n)


@jitable
def wq_push_front(P, Q, S, g, i):
    if P.policy == POLICY_FCFS:
        h = (S.si[g, WQ_HEAD] - 1) & (S.si[g, WQ_CAP] - 1)
        S.si[g, WQ_HEAD] = h
        S.wq[S.si[g, WQ_OFF] + h] = i
        S.si[g, WQ_LEN] += 1
    else:
        wq_push_back(P, Q, S, g, i)


@jitable(inline=True)
def wq_peek(P, S, g):
    if P.policy == POLICY_FCFS:
        return S.wq[S.si[g, WQ_OFF] + S.si[g, WQ_HEAD]]
    return S.wq[S.si[g, WQ_OFF]]


@jitable
def wq_pop(P, Q, S, g):
    off = S.si[g, WQ_OFF]
    if P.policy == POLICY_FCFS:
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
    if P.policy == POLICY_FCFS:
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
