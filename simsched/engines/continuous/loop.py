"""The time loop over G replicas (vLLM's ``EngineCore`` busy loop, one per replica).

Events, in time order: request arrivals (a sorted array read through a pointer) and replica
*ticks*. At equal times arrivals come first (a request that arrives at a tick is seen by that
tick's ``schedule()``), then ticks by replica id. An arrival is routed at once (round robin:
request k goes to replica k mod G), rejected if it can never run (empty prompt, prompt +
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

from simsched.engines.continuous.block_pool import cdiv
from simsched.engines.continuous.fast_forward import try_jump
from simsched.engines.continuous.schedule import log_event, schedule
from simsched.engines.continuous.state import (C_ARRIVAL_PTR, C_EVENTS, C_STEPS, C_TICKS, C_TS, EV_STEP,
                                              FINISHED, R_EMPTY, R_KV, R_MAX_LEN, REJECTED, WAITING)
from simsched.engines.continuous.step_time import tick_length
from simsched.engines.continuous.update import update_from_output
from simsched.engines.continuous.waiting_queue import wq_push_back
from simsched.jit import jitable

DONE, PAUSE_TS, PAUSE_STEPS, PAUSE_EVENTS, PAUSE_BUDGET = 0, 1, 2, 3, 4


@jitable
def route(P, Q, R, S, K, i, t):
    """Admit request ``i`` to its replica's WAITING queue at time ``t``, or reject it."""
    g = Q.replica[i]
    S.rep_next[g] += 1
    total = Q.prompt[i] + Q.max_tokens[i]
    if Q.prompt[i] < 1:
        R.status[i] = REJECTED
        R.reason[i] = R_EMPTY
        return
    if total > P.max_model_len:
        R.status[i] = REJECTED
        R.reason[i] = R_MAX_LEN
        return
    if cdiv(total - 1, P.block_size) > K.nblk[g] - 1:
        R.status[i] = REJECTED
        R.reason[i] = R_KV
        return
    R.status[i] = WAITING
    wq_push_back(P, Q, S, g, i)
    if S.tick[g] == math.inf:
        S.tick[g] = t


@jitable
def record_step(P, S, K, L, g, t, dur, slot, n_pre, n_adm):
    k = L.counters[C_STEPS]
    L.st_g[k] = g
    L.st_t[k] = t
    L.st_dur[k] = dur
    L.st_nsched[k] = S.p_len[g, slot]
    L.st_pf[k] = int(S.p_stats[g, slot, 0])
    L.st_dec[k] = int(S.p_stats[g, slot, 1])
    L.st_ctx[k] = int(S.p_stats[g, slot, 2])
    L.st_pre[k] = n_pre
    L.st_adm[k] = n_adm
    L.st_free[k] = K.n_free[g]
    L.st_run[k] = S.run_len[g]
    L.st_wait[k] = S.wq_len[g]
    L.counters[C_STEPS] = k + 1


@jitable
def tick(P, Q, R, S, K, L, g, t):
    """One tick of replica ``g`` at time ``t``."""
    L.counters[C_TICKS] += 1
    depth = 2 if P.async_sched else 1
    if S.p_count[g] == depth:
        slot = S.p_head[g]
        update_from_output(P, Q, R, S, K, L, g, slot, t, S.steps[g] - depth + 1)
        S.p_head[g] = 1 - slot
        S.p_count[g] -= 1
    if try_jump(P, Q, R, S, K, L, g, t):
        return
    slot = S.p_head[g] if S.p_count[g] == 0 else 1 - S.p_head[g]
    n_pre, n_adm = schedule(P, Q, R, S, K, L, g, t, slot)
    if P.record_events:
        log_event(L, S.steps[g], EV_STEP, g, K.n_free[g])
    empty = S.p_len[g, slot] == 0
    in_flight = 0.0
    busy = S.p_count[g] == 1 and S.p_len[g, S.p_head[g]] > 0
    if S.p_count[g] == 1:
        in_flight = S.p_gpu[g, S.p_head[g]]
    if empty and not busy:
        if S.run_len[g] == 0 and S.wq_len[g] == 0:
            S.p_count[g] = 0
            S.tick[g] = math.inf           # idle until an arrival
            return
        raise RuntimeError("continuous engine: a step scheduled nothing while requests wait")
    if S.p_count[g] == 0:
        S.p_head[g] = slot
    S.p_count[g] += 1
    dur = tick_length(P, S.p_gpu[g, slot], in_flight)
    if P.record_steps:
        record_step(P, S, K, L, g, t, dur, slot, n_pre, n_adm)
    S.tick[g] = t + dur


@jitable
def sample(P, S, K, L, at):
    """One time-series row per replica: the state in effect at time ``at``."""
    for g in range(len(S.tick)):
        k = L.counters[C_TS]
        L.ts_t[k] = at
        L.ts_g[k] = g
        L.ts_run[k] = S.run_len[g]
        L.ts_wait[k] = S.wq_len[g]
        L.ts_kv[k] = K.nblk[g] - 1 - K.n_free[g]
        L.counters[C_TS] = k + 1


@jitable
def run_loop(P, Q, R, S, K, L, max_ticks):
    """Advance the simulation until it is done (DONE) or must pause (PAUSE_*)."""
    c = L.counters
    n = len(Q.arrival)
    G = len(S.tick)
    S_max = S.run.shape[1]
    budget = max_ticks
    while True:
        ap = c[C_ARRIVAL_PTR]
        t_arr = Q.arrival[ap] if ap < n else math.inf
        g = 0
        for h in range(1, G):
            if S.tick[h] < S.tick[g]:
                g = h
        t_tick = S.tick[g]
        t_next = t_arr if t_arr <= t_tick else t_tick
        if t_next == math.inf:
            return DONE
        # Time-series samples for every boundary passed before the next event.
        while L.ts_next[0] < t_next and L.ts_next[0] <= P.horizon:
            if c[C_TS] + G > len(L.ts_t):
                return PAUSE_TS
            sample(P, S, K, L, L.ts_next[0])
            L.ts_next[0] += P.ts_interval
        if t_next > P.horizon:
            return DONE
        if t_arr <= t_tick:
            route(P, Q, R, S, K, ap, t_arr)
            c[C_ARRIVAL_PTR] = ap + 1
            continue
        if P.record_steps and c[C_STEPS] + 1 > len(L.st_t):
            return PAUSE_STEPS
        if P.record_events and c[C_EVENTS] + 4 * S_max + 8 > len(L.ev_kind):
            return PAUSE_EVENTS
        if budget <= 0:
            return PAUSE_BUDGET
        budget -= 1
        tick(P, Q, R, S, K, L, g, t_tick)


def finished_all(R) -> bool:
    return bool((R.status == FINISHED).all())
