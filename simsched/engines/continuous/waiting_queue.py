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

from simsched.engines.continuous.state import POLICY_FCFS
from simsched.jit import jitable


@jitable
def before(Q, a, b):
    """Priority order: ``Request.__lt__`` (``tiebreak`` ranks request ids)."""
    if Q.priority[a] != Q.priority[b]:
        return Q.priority[a] < Q.priority[b]
    if Q.arrival[a] != Q.arrival[b]:
        return Q.arrival[a] < Q.arrival[b]
    return Q.tiebreak[a] < Q.tiebreak[b]


@jitable
def _sift_up(P, Q, S, g, pos):
    off = S.wq_off[g]
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
def _sift_down(P, Q, S, g, pos):
    off = S.wq_off[g]
    n = S.wq_len[g]
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
    off = S.wq_off[g]
    if P.policy == POLICY_FCFS:
        cap = S.wq_cap[g]
        S.wq[off + ((S.wq_head[g] + S.wq_len[g]) & (cap - 1))] = i
        S.wq_len[g] += 1
    else:
        S.wq[off + S.wq_len[g]] = i
        S.wq_len[g] += 1
        _sift_up(P, Q, S, g, S.wq_len[g] - 1)


@jitable
def wq_push_front(P, Q, S, g, i):
    if P.policy == POLICY_FCFS:
        cap = S.wq_cap[g]
        S.wq_head[g] = (S.wq_head[g] - 1) & (cap - 1)
        S.wq[S.wq_off[g] + S.wq_head[g]] = i
        S.wq_len[g] += 1
    else:
        wq_push_back(P, Q, S, g, i)


@jitable
def wq_peek(P, Q, S, g):
    if P.policy == POLICY_FCFS:
        return S.wq[S.wq_off[g] + S.wq_head[g]]
    return S.wq[S.wq_off[g]]


@jitable
def wq_pop(P, Q, S, g):
    off = S.wq_off[g]
    if P.policy == POLICY_FCFS:
        i = S.wq[off + S.wq_head[g]]
        S.wq_head[g] = (S.wq_head[g] + 1) & (S.wq_cap[g] - 1)
        S.wq_len[g] -= 1
        return i
    i = S.wq[off]
    S.wq_len[g] -= 1
    if S.wq_len[g] > 0:
        S.wq[off] = S.wq[off + S.wq_len[g]]
        _sift_down(P, Q, S, g, 0)
    return i


@jitable
def wq_at(P, Q, S, g, k):
    """The k-th stored entry (queue order for fcfs, heap order for priority)."""
    if P.policy == POLICY_FCFS:
        return S.wq[S.wq_off[g] + ((S.wq_head[g] + k) & (S.wq_cap[g] - 1))]
    return S.wq[S.wq_off[g] + k]


@jitable
def wq_remove(P, Q, S, g, i):
    """Remove request ``i`` wherever it is (``remove_requests``: a stale output finished a
    preempted request)."""
    n = S.wq_len[g]
    off = S.wq_off[g]
    if P.policy == POLICY_FCFS:
        cap = S.wq_cap[g]
        k = 0
        while k < n and S.wq[off + ((S.wq_head[g] + k) & (cap - 1))] != i:
            k += 1
        for m in range(k, n - 1):
            S.wq[off + ((S.wq_head[g] + m) & (cap - 1))] = S.wq[off + ((S.wq_head[g] + m + 1) & (cap - 1))]
        S.wq_len[g] -= 1
        return
    k = 0
    while S.wq[off + k] != i:
        k += 1
    S.wq_len[g] -= 1
    if k < S.wq_len[g]:
        S.wq[off + k] = S.wq[off + S.wq_len[g]]
        _sift_down(P, Q, S, g, k)
        _sift_up(P, Q, S, g, k)
