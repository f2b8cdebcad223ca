"""Exact decode fast-forward (REFERENCE §9, last bullet).

While every running request of a replica decodes and nothing else can happen, consecutive
steps differ only by the growth of the context (B tokens a step) and by the KV blocks
requests take when they cross a block boundary. ``try_jump`` recognises that state at a
tick and performs m schedules and m − 1 output updates at once, leaving the last one (sync)
or two (async) plans in flight exactly as ``schedule`` would have left them, so the next
ordinary tick continues as if every step had been run. Nothing is approximated: each step's
length is computed by the same functions and accumulated in the same order as ordinary
ticks, blocks are popped from the free queue in the same (step, running order) sequence,
and the blocks filled meanwhile are cached with the same hashes.

A run may jump over schedule i (i = 0 .. m−1, at tick time t_i) only if, in that step:

- no request finishes: sync m ≤ min(output − emitted), async m ≤ min(output − emitted − 1)
  (a request whose last token is in flight would be skipped by ``schedule``);
- every running request gets its one token (B ≤ the token budget) and its block, if it
  crosses a block boundary, without preemption: the blocks taken by steps 0 .. i fit in
  the free queue;
- nothing is admitted: the WAITING head is blocked (no budget left, ``max_num_seqs``
  reached, or its blocks do not fit after step 0's allocations; free blocks only shrink
  and its prefix hit can only shrink during the run, so it stays blocked), or, when WAITING
  is empty (or the policy is ``priority``, where a newcomer may take the head), t_i is
  before the replica's next arrival;
- t_i is not after the horizon or the next time-series sample (so samples stay exact).

A run needs m ≥ 2 (m = 1 is an ordinary tick).
"""
from __future__ import annotations

import math

from simsched.engines.continuous.block_pool import admit_blocks_needed, cache_blocks, find_cache_hit, get_new_blocks
from simsched.engines.continuous.schedule import log_event
from simsched.engines.continuous.state import (C_EVENTS, C_JUMPED_STEPS, C_JUMPS, C_STEPS, EV_SCHEDULED, EV_STEP,
                                              POLICY_FCFS)
from simsched.engines.continuous.step_time import gpu_time, tick_length
from simsched.engines.continuous.update import record_itl
from simsched.engines.continuous.waiting_queue import wq_peek
from simsched.jit import jitable


@jitable
def _crossings(S, B, bs, m):
    """Blocks the first m jumped steps take (request r crosses at steps i0_r, i0_r + bs, ...)."""
    total = 0
    for k in range(B):
        i0 = S.ff_i0[k]
        if m > i0:
            total += (m - 1 - i0) // bs + 1
    return total


@jitable
def _tick_len(P, B, ctx0, i, g_first):
    """Length of the i-th jumped tick: sync, the jumped step i itself; async, the step on the
    GPU during tick i (the plan already in flight for i = 0, jumped step i − 1 after)."""
    if P.async_sched:
        if i == 0:
            return tick_length(P, 0.0, g_first)
        return tick_length(P, 0.0, gpu_time(P, 0.0, B, ctx0 + B * (i - 1), 0.0))
    return tick_length(P, gpu_time(P, 0.0, B, ctx0 + B * i, 0.0), 0.0)


@jitable
def _next_arrival(Q, S, g):
    k = S.rep_next[g]
    if k < S.rep_off[g + 1]:
        return Q.arrival[S.rep_reqs[k]]
    return math.inf


@jitable
def try_jump(P, Q, R, S, K, L, g, t):
    """Fast-forward replica ``g`` from tick time ``t`` if it is in a decode run (see the module
    docstring); returns whether it did."""
    if not P.fast_forward:
        return False
    B = S.run_len[g]
    if B < 1 or B > P.max_batched:
        return False
    bs = P.block_size
    hs = S.p_head[g]
    if P.async_sched:
        if S.p_count[g] != 1 or S.p_len[g, hs] != B:
            return False
        for k in range(B):
            if S.p_prod[g, hs, k] == 0:
                return False
    elif S.p_count[g] != 0:
        return False
    m_lim = 1 << 62
    ctx0 = 0.0
    x0 = 0
    for k in range(B):
        i = S.run[g, k]
        if R.stale[i] != 0:
            return False
        if P.async_sched:
            if R.ph[i] != 1 or R.computed[i] != Q.prompt[i] + R.n_out[i]:
                return False
            rem = Q.max_tokens[i] - R.n_out[i] - 1
        else:
            if R.ph[i] != 0 or R.n_out[i] < 1 or R.computed[i] != Q.prompt[i] + R.n_out[i] - 1:
                return False
            rem = Q.max_tokens[i] - R.n_out[i]
        if rem < m_lim:
            m_lim = rem
        i0 = K.row_n[R.row[i]] * bs - R.computed[i]
        if i0 < 0 or i0 >= bs:
            return False
        S.ff_i0[k] = i0
        if i0 == 0:
            x0 += 1
        ctx0 += R.computed[i] + 1.0
    if m_lim < 2 or x0 > K.n_free[g]:
        return False

    # The WAITING head must stay blocked; otherwise arrivals bound the run.
    arrival_bound = math.inf
    W = S.wq_len[g]
    if W == 0:
        arrival_bound = _next_arrival(Q, S, g)
    else:
        budget_left = P.max_batched - B
        if budget_left > 0 and B < P.max_seqs:
            h = wq_peek(P, Q, S, g)
            if R.stale[h] > 0:
                return False
            n_hit, _ = find_cache_hit(P, Q, R, K, g, h)
            new = Q.prompt[h] + R.n_out[h] - n_hit * bs
            if 0 < P.lpt < new:
                new = P.lpt
            if new > budget_left:
                new = budget_left
            gate_need, need = admit_blocks_needed(P, Q, R, K, g, h, n_hit, new, True)
            free0 = K.n_free[g] - x0
            if (not P.gate or gate_need <= free0) and need <= free0:
                return False
        if P.policy != POLICY_FCFS:
            arrival_bound = _next_arrival(Q, S, g)

    # Largest m the free blocks allow (crossings are monotone in m).
    lo = 1
    hi = m_lim
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _crossings(S, B, bs, mid) <= K.n_free[g]:
            lo = mid
        else:
            hi = mid - 1
    m_lim = lo
    if P.record_steps:
        room = len(L.st_t) - L.counters[C_STEPS]
        if room < m_lim:
            m_lim = room
    if P.record_events:
        room = (len(L.ev_kind) - L.counters[C_EVENTS]) // (B + 1)
        if room < m_lim:
            m_lim = room
    # Schedules must happen before the next arrival (when it matters), at or before the
    # horizon and the next time-series sample.
    g_first = S.p_gpu[g, hs]
    s_next = L.ts_next[0]
    m = 0
    ti = t
    while m < m_lim and ti < arrival_bound and ti <= P.horizon and ti <= s_next:
        ti = ti + _tick_len(P, B, ctx0, m, g_first)
        m += 1
    if m < 2:
        return False

    # Bucket the running requests by the step (mod bs) at which they cross a block boundary.
    for p in range(bs + 1):
        S.ff_start[p] = 0
    for k in range(B):
        S.ff_start[S.ff_i0[k] + 1] += 1
    for p in range(bs):
        S.ff_start[p + 1] += S.ff_start[p]
    for k in range(B):
        p = S.ff_i0[k]
        S.ff_order[S.ff_start[p]] = k
        S.ff_start[p] += 1
    for p in range(bs, 0, -1):
        S.ff_start[p] = S.ff_start[p - 1]
    S.ff_start[0] = 0

    step0 = S.steps[g]
    ti = t
    t_first = t                           # t_1: the first update of the run
    t_last = t                            # t_{m-1}: the last one
    gap_max = 0.0
    for i in range(m):
        p = i % bs
        for q in range(S.ff_start[p], S.ff_start[p + 1]):
            r = S.run[g, S.ff_order[q]]
            get_new_blocks(K, g, R.row[r], 1)
        d = _tick_len(P, B, ctx0, i, g_first)
        if P.record_events:
            for k in range(B):
                log_event(L, step0 + i + 1, EV_SCHEDULED, S.run[g, k], 1)
            log_event(L, step0 + i + 1, EV_STEP, g, K.n_free[g])
        if P.record_steps:
            c = L.counters[C_STEPS]
            L.st_g[c] = g
            L.st_t[c] = ti
            L.st_dur[c] = d
            L.st_nsched[c] = B
            L.st_pf[c] = 0
            L.st_dec[c] = B
            L.st_ctx[c] = int(ctx0) + B * i
            L.st_pre[c] = 0
            L.st_adm[c] = 0
            L.st_free[c] = K.n_free[g]
            L.st_run[c] = B
            L.st_wait[c] = S.wq_len[g]
            L.counters[C_STEPS] = c + 1
        t_prev = ti
        ti = ti + d                       # t_{i+1}: an update is emitted here if i <= m - 2
        if i == 0:
            t_first = ti
        elif i <= m - 2:
            gap = ti - t_prev
            if gap > gap_max:
                gap_max = gap
            record_itl(L, gap, 1.0 * B)
        if i == m - 2:
            t_last = ti
    tm = ti

    for k in range(B):
        i = S.run[g, k]
        if R.n_out[i] == 0:
            R.t_first_tok[i] = t_first
        else:
            gap0 = t_first - R.t_last_tok[i]
            if gap0 > R.itl_max[i]:
                R.itl_max[i] = gap0
            record_itl(L, gap0, 1.0)
        if gap_max > R.itl_max[i]:
            R.itl_max[i] = gap_max
        R.t_last_tok[i] = t_last
        R.computed[i] += m
        R.n_out[i] += m - 1
        if P.async_sched:
            R.ph[i] = 2
            R.inflight[i] = 2
        else:
            R.ph[i] = 0
            R.inflight[i] = 1
        cache_blocks(P, Q, R, K, g, i, R.computed[i])

    # The plans left in flight: jumped steps m − 1 (sync) or m − 2 and m − 1 (async).
    first = m - 2 if P.async_sched else m - 1
    slot = hs
    for j in range(first, m):
        for k in range(B):
            S.p_ids[g, slot, k] = S.run[g, k]
            S.p_n[g, slot, k] = 1
            S.p_prod[g, slot, k] = 1
        ctx = ctx0 + B * j
        S.p_len[g, slot] = B
        S.p_stats[g, slot, 0] = 0.0
        S.p_stats[g, slot, 1] = 1.0 * B
        S.p_stats[g, slot, 2] = ctx
        S.p_stats[g, slot, 3] = 0.0
        S.p_gpu[g, slot] = gpu_time(P, 0.0, B, ctx, 0.0)
        slot = 1 - slot
    S.p_head[g] = hs
    S.p_count[g] = m - first
    S.steps[g] += m
    S.tick[g] = tm
    L.counters[C_JUMPS] += 1
    L.counters[C_JUMPED_STEPS] += m
    return True
