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
  before the replica's next arrival (before any next arrival when the router reads replica
  state, since it may send that arrival here; see ``routing``);
- when the router reads the KV pool (``route_bound`` 2), t_i is before the next arrival in
  every case, so the pool it reads is the pool at the arrival instant;
- t_i is not after the horizon or the next time-series sample (so samples stay exact).

A run needs m ≥ MIN_JUMP: entering and leaving a run touches every running request a few times,
so a run of fewer steps costs more than ordinary ticks.
"""
from __future__ import annotations

import math

from simsched.engines.continuous.block_pool import (admit_blocks_needed, cache_blocks, find_cache_hit, get_new_blocks,
                                                   never_fits)
from simsched.engines.continuous.schedule import log_event
from simsched.engines.continuous.state import (C_ARRIVAL_PTR, C_EVENTS, C_JUMPED_STEPS, C_LAZY_REQ_STEPS, C_REQ_STEPS, C_JUMPS, C_STEPS, COMPUTED, EV_COUNTS_SCHED,
                                              EV_COUNTS_UPDATE, EV_SCHEDULED, EV_STEP, EV_UPDATE, GPU, IDS, IN_FLIGHT, ITL_MAX, LF_TS_NEXT, MAX_TOKENS, N_FREE,
                                              N_OUT, NTOK, P_COUNT, P_HEAD, P_LEN, PF, PLACEHOLDERS, PLAN_F, PLAN_W,
                                              POLICY_FCFS, POLICY_LPM, PROD, PROMPT, REP_END, REP_NEXT, ROW, ROW_N,
                                              RUN_LEN,
                                              STALE, STEPS, T_FIRST_TOKEN, T_LAST_TOKEN, T_SCHED, TICK, WQ_LEN)
from simsched.engines.continuous.step_time import gpu_time, tick_length
from simsched.engines.continuous.update import record_itl
from simsched.engines.continuous.waiting_queue import wq_peek
from simsched.jit import jitable


MIN_JUMP = 4


@jitable
def _crossings(S, B, bs, m, i0_at):
    """Blocks the first m jumped steps take (request k crosses at steps i0_k, i0_k + bs, ...)."""
    total = 0
    for k in range(B):
        i0 = S.scratch[i0_at + k]
        if m > i0:
            total += (m - 1 - i0) // bs + 1
    return total


@jitable(inline=True)
def _tick_len(P, B, ctx0, i, g_first):
    """Length of the i-th jumped tick: sync, the jumped step i itself; async, the step on the
    GPU during tick i (the plan already in flight for i = 0, jumped step i − 1 after)."""
    if P.async_sched:
        if i == 0:
            return tick_length(P, 0.0, g_first)
        return tick_length(P, 0.0, gpu_time(P, 0.0, 1.0 * B, ctx0 + B * (i - 1), 0.0))
    return tick_length(P, gpu_time(P, 0.0, 1.0 * B, ctx0 + B * i, 0.0), 0.0)


@jitable
def _set_decode_plan(P, S, g, slot, B, ctx, t_sched):
    """Plan ``slot`` = every running request decoding one token (context sum ``ctx``),
    scheduled at ``t_sched``."""
    for k in range(B):
        S.plan[g, slot, IDS, k] = S.run[g, k]
        S.plan[g, slot, NTOK, k] = 1
        S.plan[g, slot, PROD, k] = 1
    S.si[g, P_LEN + slot] = B
    base = PLAN_F + PLAN_W * slot
    S.sf[g, base + PF] = 0.0
    S.sf[g, base + 1] = 1.0 * B
    S.sf[g, base + 2] = ctx
    S.sf[g, base + 3] = 0.0
    S.sf[g, base + GPU] = gpu_time(P, 0.0, 1.0 * B, ctx, 0.0)
    S.sf[g, base + T_SCHED] = t_sched


@jitable
def _waiting_at(P, Q, S, K, g, when):
    """WAITING's length at ``when`` during a jump: arrivals are routed by the loop later, so
    add the replica's coming arrivals up to ``when`` that will not be rejected (records only)."""
    w = S.si[g, WQ_LEN]
    k = S.si[g, REP_NEXT]
    while k < S.si[g, REP_END] and Q.arrival[S.rep_reqs[k]] <= when:
        if never_fits(P, Q, K, g, S.rep_reqs[k]) == 0:
            w += 1
        k += 1
    return w


@jitable
def try_jump(P, Q, R, S, K, L, g, t):
    """Fast-forward replica ``g`` from tick time ``t`` if it is in a decode run (see the module
    docstring); returns whether it did."""
    if not P.fast_forward:
        return False
    ri = R.ri
    rf = R.rf
    B = S.si[g, RUN_LEN]
    if B < 1 or B > P.max_batched:
        return False
    bs = P.block_size
    S_max = S.run.shape[1]
    i0_at = S_max + 1                      # scratch sections (state.scratch_layout)
    order_at = 2 * S_max + 1
    start_at = 3 * S_max + 1
    hs = S.si[g, P_HEAD]
    if P.async_sched:
        if S.si[g, P_COUNT] != 1 or S.si[g, P_LEN + hs] != B:
            return False
        for k in range(B):
            if S.plan[g, hs, PROD, k] == 0:
                return False
    elif S.si[g, P_COUNT] != 0:
        return False
    # Cheap test first: do even two steps fit before the next event? (The first tick lasts at
    # least as long as a decode step of B requests with no context.)
    arrival_bound = math.inf
    if P.route_bound == 2 or S.si[g, WQ_LEN] == 0 or P.policy != POLICY_FCFS:
        if P.route_bound == 0:
            nxt = S.si[g, REP_NEXT]
            if nxt < S.si[g, REP_END]:
                arrival_bound = Q.arrival[S.rep_reqs[nxt]]
        elif L.counters[C_ARRIVAL_PTR] < len(Q.arrival):   # any arrival may come here
            arrival_bound = Q.arrival[L.counters[C_ARRIVAL_PTR]]
    s_next = L.lf[LF_TS_NEXT]
    g_first = S.sf[g, PLAN_F + PLAN_W * hs + GPU]
    d_min = (tick_length(P, 0.0, gpu_time(P, 0.0, 1.0 * B, 0.0, 0.0)) if P.async_sched
             else tick_length(P, gpu_time(P, 0.0, 1.0 * B, 0.0, 0.0), 0.0))
    t_min = t + (tick_length(P, 0.0, g_first) if P.async_sched else d_min) + (MIN_JUMP - 2) * d_min
    if not (t_min < arrival_bound and t_min <= P.horizon and t_min <= s_next):
        return False                       # not even MIN_JUMP steps fit before the next event
    m_lim = 1 << 62
    ctx0 = 0.0
    for k in range(B):
        i = S.run[g, k]
        if ri[i, STALE] != 0:
            return False
        c = ri[i, COMPUTED]
        prompt = Q.qi[i, PROMPT]
        out = Q.qi[i, MAX_TOKENS]
        if out > P.max_model_len - prompt:   # check_stop ends it at max_model_len
            out = P.max_model_len - prompt
        if P.async_sched:
            if ri[i, PLACEHOLDERS] != 1 or c != prompt + ri[i, N_OUT]:
                return False
            rem = out - ri[i, N_OUT] - 1
        else:
            if ri[i, PLACEHOLDERS] != 0 or ri[i, N_OUT] < 1 or c != prompt + ri[i, N_OUT] - 1:
                return False
            rem = out - ri[i, N_OUT]
        if rem < m_lim:
            m_lim = rem
        i0 = K.rows[ri[i, ROW], ROW_N] * bs - c
        if i0 < 0 or i0 >= bs:
            return False
        S.scratch[i0_at + k] = i0
        ctx0 += c + 1.0
    free = K.ki[g, N_FREE]
    if m_lim < MIN_JUMP or _crossings(S, B, bs, MIN_JUMP, i0_at) > free:
        return False

    # The WAITING head must stay blocked (otherwise arrivals bound the run, above).
    if S.si[g, WQ_LEN] > 0:
        budget_left = P.max_batched - B
        if budget_left > 0 and B < P.max_seqs:
            if P.policy == POLICY_LPM:
                return False               # the cache filling during the run may reorder WAITING
            h = wq_peek(P, Q, S, g)
            if ri[h, STALE] > 0:
                return False
            n_hit, _ = find_cache_hit(P, Q, R, K, g, h)
            new = Q.qi[h, PROMPT] + ri[h, N_OUT] - n_hit * bs
            if 0 < P.lpt < new:
                new = P.lpt
            if new > budget_left:
                new = budget_left
            gate_need, need = admit_blocks_needed(P, Q, R, K, g, h, n_hit, new, True)
            free0 = free - _crossings(S, B, bs, 1, i0_at)   # after step 0's allocations
            if (not P.gate or gate_need <= free0) and need <= free0:
                return False

    # Largest m the free blocks allow (crossings are monotone in m).
    lo = 1
    hi = m_lim
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _crossings(S, B, bs, mid, i0_at) <= free:
            lo = mid
        else:
            hi = mid - 1
    m_lim = lo
    if P.record_steps:
        room = len(L.steps) - L.counters[C_STEPS]
        if room < m_lim:
            m_lim = room
    if P.record_events:
        room = (len(L.ev) - L.counters[C_EVENTS]) // (B + 4)
        if room < m_lim:
            m_lim = room
    # Schedules must happen before the next arrival (when it matters), at or before the
    # horizon and the next time-series sample.
    m = 0
    ti = t
    while m < m_lim and ti < arrival_bound and ti <= P.horizon and ti <= s_next:
        ti = ti + _tick_len(P, B, ctx0, m, g_first)
        m += 1
    if m < MIN_JUMP:
        return False

    # Bucket the running requests by the step (mod bs) at which they cross a block boundary.
    for p in range(bs + 1):
        S.scratch[start_at + p] = 0
    for k in range(B):
        S.scratch[start_at + S.scratch[i0_at + k] + 1] += 1
    for p in range(bs):
        S.scratch[start_at + p + 1] += S.scratch[start_at + p]
    for k in range(B):
        p = S.scratch[i0_at + k]
        S.scratch[order_at + S.scratch[start_at + p]] = k
        S.scratch[start_at + p] += 1
    for p in range(bs, 0, -1):
        S.scratch[start_at + p] = S.scratch[start_at + p - 1]
    S.scratch[start_at] = 0

    # Event labels: jumped step i is step0 + i + 1; the plan already in flight (async) is step0.
    step0 = int(t) - 1 if P.unit_steps else S.si[g, STEPS]
    depth = 2 if P.async_sched else 1
    ti = t
    t_first = t                           # t_1: the first update of the run
    t_last = t                            # t_{m-1}: the last one
    t_pen = t                             # t_{m-2}: when the next-to-last jumped step is scheduled
    gap_max = 0.0
    for i in range(m):
        waiting = _waiting_at(P, Q, S, K, g, ti) if P.record_events or P.record_steps else 0
        if P.record_events and i >= 1:    # tick i first applies the plan of step i - depth
            log_event(L, step0 + i + 1 - depth, EV_UPDATE, g, K.ki[g, N_FREE])
            log_event(L, step0 + i + 1 - depth, EV_COUNTS_UPDATE, B, waiting)
        p = i % bs
        for q in range(S.scratch[start_at + p], S.scratch[start_at + p + 1]):
            r = S.run[g, S.scratch[order_at + q]]
            get_new_blocks(K, g, ri[r, ROW], 1)
        d = _tick_len(P, B, ctx0, i, g_first)
        if P.record_events:
            for k in range(B):
                log_event(L, step0 + i + 1, EV_SCHEDULED, S.run[g, k], 1)
            log_event(L, step0 + i + 1, EV_STEP, g, K.ki[g, N_FREE])
            log_event(L, step0 + i + 1, EV_COUNTS_SCHED, B, waiting)
        if P.record_steps:
            c = L.counters[C_STEPS]
            L.steps[c, 0] = g
            L.steps[c, 1] = ti
            L.steps[c, 2] = d
            L.steps[c, 3] = B
            L.steps[c, 4] = 0
            L.steps[c, 5] = B
            L.steps[c, 6] = ctx0 + B * i
            L.steps[c, 7] = 0
            L.steps[c, 8] = 0
            L.steps[c, 9] = K.ki[g, N_FREE]
            L.steps[c, 10] = B
            L.steps[c, 11] = waiting
            L.counters[C_STEPS] = c + 1
        if i == m - 2:
            t_pen = ti
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

    for k in range(B):
        i = S.run[g, k]
        if ri[i, N_OUT] == 0:
            rf[i, T_FIRST_TOKEN] = t_first
        else:
            gap0 = t_first - rf[i, T_LAST_TOKEN]
            if gap0 > rf[i, ITL_MAX]:
                rf[i, ITL_MAX] = gap0
            record_itl(L, gap0, 1.0)
        if gap_max > rf[i, ITL_MAX]:
            rf[i, ITL_MAX] = gap_max
        rf[i, T_LAST_TOKEN] = t_last
        ri[i, COMPUTED] += m
        ri[i, N_OUT] += m - 1
        if P.async_sched:
            ri[i, PLACEHOLDERS] = 2
            ri[i, IN_FLIGHT] = 2
        else:
            ri[i, PLACEHOLDERS] = 0
            ri[i, IN_FLIGHT] = 1
        cache_blocks(P, Q, R, K, g, i, ri[i, COMPUTED])

    # The plans left in flight: jumped steps m − 1 (sync) or m − 2 and m − 1 (async).
    if P.async_sched:
        _set_decode_plan(P, S, g, hs, B, ctx0 + B * (m - 2), t_pen)
        _set_decode_plan(P, S, g, 1 - hs, B, ctx0 + B * (m - 1), t_last)
    else:
        _set_decode_plan(P, S, g, hs, B, ctx0 + B * (m - 1), t_last)
    first = m - 2 if P.async_sched else m - 1
    S.si[g, P_HEAD] = hs
    S.si[g, P_COUNT] = m - first
    S.si[g, STEPS] += m
    S.sf[g, TICK] = ti
    L.counters[C_JUMPS] += 1
    L.counters[C_JUMPED_STEPS] += m
    L.counters[C_REQ_STEPS] += m * B
    L.counters[C_LAZY_REQ_STEPS] += m * B
    return True
