"""The time loop over G replicas (vLLM's ``EngineCore`` busy loop, one per replica).

Events, in time order: request arrivals (a sorted array read through a pointer) and replica
*ticks*. At equal times arrivals come first (a request that arrives at a tick is seen by that
tick's ``schedule()``), then ticks by replica id. An arrival is routed at once by the router
(``routing``; round robin by default: request k goes to replica k mod G), rejected if it can never run (empty prompt, prompt +
output over ``max_model_len``, or more KV blocks than the replica has), otherwise appended to
the replica's WAITING queue; an idle replica ticks at that moment.

A tick of replica g (``EngineCore.step`` / ``step_with_batch_queue``): apply the oldest plan
in flight once the batch queue is full (sync: depth 1, async: depth 2; its tokens are emitted
now), then schedule the next step, or fast-forward over a run of identical decode steps. The
next tick comes after the step-time rule of ``step_time``. A replica with nothing running,
waiting or in flight goes idle until its next arrival.

Every ``timeseries_interval_s`` the loop samples each replica's running and waiting counts and
KV blocks in use (the state during the step in progress). The loop pauses (returns) when a
log buffer is full or after ``max_ticks`` ticks; all its state is in the arrays, so the caller
grows the buffer and calls it again.
"""
from __future__ import annotations

import math

from simsched.engines.continuous.block_pool import never_fits
from simsched.engines.continuous.controller import note_arrival, observe_step, remember_step
from simsched.engines.continuous.fast_forward import try_jump
from simsched.engines.continuous.lazy_decode import deque_room
from simsched.engines.continuous.routing import choose_replica, routed_tokens
from simsched.engines.continuous.schedule import log_event, schedule, step_label
from simsched.engines.continuous.state import (C_ARRIVAL_PTR, C_EVENTS, C_STEPS, C_TICKS, C_TS, EV_COUNTS_SCHED,
                                              DEC, EV_COUNTS_UPDATE, EV_STEP, EV_UPDATE, T_SCHED,
                                              GPU, LF_TS_NEXT, N_FREE, NBLK, PC_CNT, PC_NUM, P_COUNT, P_HEAD, P_LEN, PF, PLAN_F, PLAN_W,
                                              OUT_TOK, REASON, REJECTED, REP_END, REP_NEXT, REPLICA, ROUTED_TOK, RUN_LEN, STATUS, STEPS, TICK,
                                              WAITING, WQ_LEN)
from simsched.engines.continuous.step_time import tick_length
from simsched.engines.continuous.update import cohort_update, update_from_output
from simsched.engines.continuous.waiting_queue import wq_push_back
from simsched.jit import jitable

DONE, PAUSE_TS, PAUSE_STEPS, PAUSE_EVENTS, PAUSE_BUDGET, PAUSE_DEQUE = 0, 1, 2, 3, 4, 5


@jitable
def route(P, Q, R, S, K, X, i, t):
    """Route request ``i`` at time ``t`` (router ``X``) and admit it to the replica's WAITING
    queue, or reject it."""
    g = choose_replica(P, Q, S, K, X, i)
    Q.qi[i, REPLICA] = g
    if S.si[g, REP_NEXT] < S.si[g, REP_END]:
        S.si[g, REP_NEXT] += 1
    why = never_fits(P, Q, K, g, i)
    if why != 0:
        R.ri[i, STATUS] = REJECTED
        R.ri[i, REASON] = why
        return
    R.ri[i, STATUS] = WAITING
    R.ri[i, ROUTED_TOK] = routed_tokens(Q, X, i)
    S.si[g, OUT_TOK] += R.ri[i, ROUTED_TOK]
    if P.ctl_on:
        note_arrival(Q, S, g, i)
    wq_push_back(P, Q, S, g, i)
    if S.sf[g, TICK] == math.inf:
        S.sf[g, TICK] = t


@jitable
def record_step(S, K, L, g, t, dur, slot, n_pre, n_adm):
    k = L.counters[C_STEPS]
    base = PLAN_F + PLAN_W * slot
    L.steps[k, 0] = g
    L.steps[k, 1] = t
    L.steps[k, 2] = dur
    L.steps[k, 3] = S.si[g, P_LEN + slot] + (S.si[g, PC_CNT + slot] if S.si[g, PC_NUM + slot] > 0 else 0)
    L.steps[k, 4] = S.sf[g, base + PF]
    L.steps[k, 5] = S.sf[g, base + 1]
    L.steps[k, 6] = S.sf[g, base + 2]
    L.steps[k, 7] = n_pre
    L.steps[k, 8] = n_adm
    L.steps[k, 9] = K.ki[g, N_FREE]
    L.steps[k, 10] = S.si[g, RUN_LEN]
    L.steps[k, 11] = S.si[g, WQ_LEN]
    L.counters[C_STEPS] = k + 1


@jitable
def tick(P, Q, R, S, K, L, g, t):
    """One tick of replica ``g`` at time ``t``."""
    L.counters[C_TICKS] += 1
    depth = 2 if P.async_sched else 1
    if S.si[g, P_COUNT] == depth:
        slot = S.si[g, P_HEAD]
        label = plan_label(P, S, g, slot, depth)
        update_from_output(P, Q, R, S, K, L, g, slot, t, label)
        if P.lazy:
            cohort_update(P, R, S, L, g, slot, t)
        if P.record_events:
            log_event(L, label, EV_UPDATE, g, K.ki[g, N_FREE])
            log_event(L, label, EV_COUNTS_UPDATE, S.si[g, RUN_LEN], S.si[g, WQ_LEN])
        S.si[g, P_HEAD] = 1 - slot
        S.si[g, P_COUNT] -= 1
    if P.ctl_on:
        observe_step(P, S, g)
    if not P.lazy and try_jump(P, Q, R, S, K, L, g, t):   # the decode cohort supersedes jumps
        return
    count = S.si[g, P_COUNT]
    slot = S.si[g, P_HEAD] if count == 0 else 1 - S.si[g, P_HEAD]
    n_pre, n_adm = schedule(P, Q, R, S, K, L, g, t, slot)
    if P.record_events:
        label = step_label(P, S, g, t)
        log_event(L, label, EV_STEP, g, K.ki[g, N_FREE])
        log_event(L, label, EV_COUNTS_SCHED, S.si[g, RUN_LEN], S.si[g, WQ_LEN])
    in_flight = 0.0
    busy = False
    if count == 1:
        head = S.si[g, P_HEAD]
        in_flight = S.sf[g, PLAN_F + PLAN_W * head + GPU]
        busy = S.si[g, P_LEN + head] > 0 or S.si[g, PC_NUM + head] > 0
    if S.si[g, P_LEN + slot] == 0 and S.si[g, PC_NUM + slot] == 0 and not busy:
        if S.si[g, RUN_LEN] == 0 and S.si[g, WQ_LEN] == 0:
            if P.record_steps:             # vLLM's last, empty schedule() before it waits
                record_step(S, K, L, g, t, 0.0, slot, n_pre, n_adm)
            S.si[g, P_COUNT] = 0
            S.sf[g, TICK] = math.inf       # idle until an arrival
            return
        raise RuntimeError("continuous engine: a step scheduled nothing while requests wait")
    if count == 0:
        S.si[g, P_HEAD] = slot
    S.si[g, P_COUNT] = count + 1
    dur = tick_length(P, S.sf[g, PLAN_F + PLAN_W * slot + GPU], in_flight)
    if P.ctl_on:
        remember_step(S, g, S.si[g, P_LEN + slot], S.sf[g, PLAN_F + PLAN_W * slot + DEC], dur)
    if P.record_steps:
        record_step(S, K, L, g, t, dur, slot, n_pre, n_adm)
    S.sf[g, TICK] = t + dur


@jitable
def plan_label(P, S, g, slot, depth):
    """The label of the step whose plan is in ``slot`` (see ``schedule.step_label``)."""
    if P.unit_steps:
        return int(S.sf[g, PLAN_F + PLAN_W * slot + T_SCHED])
    return S.si[g, STEPS] - depth + 1


@jitable
def sample(S, K, L, at):
    """One time-series row per replica: the state in effect at time ``at``."""
    for g in range(len(S.si)):
        k = L.counters[C_TS]
        L.ts[k, 0] = at
        L.ts[k, 1] = g
        L.ts[k, 2] = S.si[g, RUN_LEN]
        L.ts[k, 3] = S.si[g, WQ_LEN]
        L.ts[k, 4] = K.ki[g, NBLK] - 1 - K.ki[g, N_FREE]
        L.counters[C_TS] = k + 1


@jitable
def run_loop(P, Q, R, S, K, L, X, F, max_ticks):
    """Advance the simulation until it is done (DONE) or must pause (PAUSE_*). Replica g
    ticks with the settings of its pool, ``F.params[F.pool[g]]`` (``fleet``)."""
    c = L.counters
    n = len(Q.arrival)
    G = len(S.si)
    S_max = S.run.shape[1]
    budget = max_ticks
    while True:
        ap = c[C_ARRIVAL_PTR]
        t_arr = Q.arrival[ap] if ap < n else math.inf
        g = 0
        for h in range(1, G):
            if S.sf[h, TICK] < S.sf[g, TICK]:
                g = h
        t_tick = S.sf[g, TICK]
        t_next = t_arr if t_arr <= t_tick else t_tick
        if t_next == math.inf:
            return DONE
        # Time-series samples for every boundary passed before the next event.
        while L.lf[LF_TS_NEXT] < t_next and L.lf[LF_TS_NEXT] <= P.horizon:
            if c[C_TS] + G > len(L.ts):
                return PAUSE_TS
            sample(S, K, L, L.lf[LF_TS_NEXT])
            L.lf[LF_TS_NEXT] += P.ts_interval
        if t_next > P.horizon:
            return DONE
        if t_arr <= t_tick:
            route(P, Q, R, S, K, X, ap, t_arr)
            c[C_ARRIVAL_PTR] = ap + 1
            continue
        if P.record_steps and c[C_STEPS] + 1 > len(L.steps):
            return PAUSE_STEPS
        if P.record_events and c[C_EVENTS] + 4 * S_max + 8 > len(L.ev):
            return PAUSE_EVENTS
        if budget <= 0:
            return PAUSE_BUDGET
        if P.lazy and not deque_room(S, g):
            return PAUSE_DEQUE
        budget -= 1
        tick(F.params[F.pool[g]], Q, R, S, K, L, g, t_tick)
