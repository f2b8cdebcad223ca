"""Applying a step's output: vLLM 0.33.0 ``Scheduler.update_from_output`` for one replica.

For each entry of the plan, in plan order: its tokens leave flight; an entry that sampled
(it completed its known tokens) appends one output token, emitted at time ``t``; a request
reaching its output length (or ``max_model_len``) finishes (``check_stop``) and frees its
blocks at once (``_free_request``), tail block first. Output of a request preempted while the
step was in flight is *stale* (async scheduling): its token is still appended and may still
finish the request (then it leaves WAITING), but its counters are not touched. Under async
scheduling a running request's newly completed blocks are cached here too
(``cache_blocks(num_computed - num_in_flight)``). Finished requests leave RUNNING after the
loop, keeping the order of the others (``remove_all``).
"""
from __future__ import annotations

import math

from simsched.engines.continuous.block_pool import cache_blocks, free_row
from simsched.engines.continuous.controller import note_done
from simsched.engines.continuous.lazy_decode import deque_push
from simsched.engines.continuous.schedule import log_event
from simsched.engines.continuous.state import (ACT_LEN, COMPUTED, PC_CNT, PC_NUM, T_CLAST, UC, EV_FINISHED, FINISHED, IDS, IN_FLIGHT, ITL_BINS, ITL_LO,
                                              ITL_MAX, ITL_PER_OCTAVE, LF_ITL_N, LF_ITL_SUM, MAX_TOKENS, N_OUT,
                                              NTOK, OUT_TOK, P_LEN, PLACEHOLDERS, PROD, PROMPT, ROUTED_TOK, ROW, RUN_LEN, RUNNING,
                                              STALE, STATUS, T_FIRST_TOKEN, T_LAST_TOKEN)
from simsched.engines.continuous.waiting_queue import wq_remove
from simsched.jit import jitable


@jitable(inline=True)
def itl_bin(gap):
    """Histogram bin of a gap: ITL_PER_OCTAVE equal steps of log2 per octave above ITL_LO
    (``frexp`` gives the octave without a logarithm)."""
    if gap <= ITL_LO:
        return 0
    m, e = math.frexp(gap / ITL_LO)             # gap / ITL_LO = m · 2**e, 0.5 <= m < 1
    k = (e - 1) * ITL_PER_OCTAVE + int((2.0 * m - 1.0) * ITL_PER_OCTAVE) + 1
    return k if k < ITL_BINS - 1 else ITL_BINS - 1


@jitable(inline=True)
def record_itl(L, gap, weight):
    """Add ``weight`` inter-token gaps of ``gap`` seconds to the ITL histogram and sum."""
    L.itl_hist[itl_bin(gap)] += weight
    L.lf[LF_ITL_SUM] += gap * weight
    L.lf[LF_ITL_N] += weight


@jitable
def update_from_output(P, Q, R, S, K, L, g, slot, t, step):
    """Apply plan ``slot`` of replica ``g`` at time ``t``; returns the number finished."""
    ri = R.ri
    rf = R.rf
    plan = S.plan
    n_fin = 0
    for k in range(S.si[g, P_LEN + slot]):
        i = plan[g, slot, IDS, k]
        ri[i, IN_FLIGHT] -= plan[g, slot, NTOK, k]
        stale = False
        if ri[i, STALE] > 0:
            stale = True
            ri[i, STALE] -= plan[g, slot, NTOK, k]
        if ri[i, STATUS] == FINISHED or plan[g, slot, PROD, k] == 0:
            continue
        # The token (emit it, record its inter-token gap).
        n_out = ri[i, N_OUT] + 1
        ri[i, N_OUT] = n_out
        if n_out == 1:
            rf[i, T_FIRST_TOKEN] = t
        else:
            gap = t - rf[i, T_LAST_TOKEN]
            if gap > rf[i, ITL_MAX]:
                rf[i, ITL_MAX] = gap
            record_itl(L, gap, 1.0)
        rf[i, T_LAST_TOKEN] = t
        stopped = n_out >= Q.qi[i, MAX_TOKENS] or Q.qi[i, PROMPT] + n_out >= P.max_model_len
        had_ph = ri[i, PLACEHOLDERS] > 0
        if not stale and had_ph:
            ri[i, PLACEHOLDERS] -= 1
        running = ri[i, STATUS] == RUNNING
        if not stale and running and had_ph:
            cache_blocks(P, Q, R, K, g, i, ri[i, COMPUTED] - ri[i, IN_FLIGHT])
        if stopped:
            if running:
                free_row(K, g, ri[i, ROW])
                ri[i, ROW] = -1
            else:
                wq_remove(P, Q, S, g, i)
            ri[i, STATUS] = FINISHED
            S.si[g, OUT_TOK] -= ri[i, ROUTED_TOK]
            n_fin += 1
            if P.ctl_on:
                note_done(S, g, n_out)
            if P.record_events:
                log_event(L, step, EV_FINISHED, i, 0)
    if n_fin > 0:
        w = 0
        for k in range(S.si[g, RUN_LEN]):
            r = S.run[g, k]
            if ri[r, STATUS] != FINISHED:
                S.run[g, w] = r
                w += 1
        S.si[g, RUN_LEN] = w
        if P.lazy:
            w = 0
            for k in range(S.si[g, ACT_LEN]):
                r = S.act[g, k]
                if ri[r, STATUS] != FINISHED:
                    S.act[g, w] = r
                    w += 1
            S.si[g, ACT_LEN] = w
    return n_fin


@jitable
def cohort_update(P, R, S, L, g, slot, t):
    """The cohort's share of ``update_from_output`` for plan ``slot``: one token for each member
    it holds, emitted at ``t``."""
    num = S.si[g, PC_NUM + slot]
    if num == 0:
        return
    S.si[g, UC] = num
    first = S.jn_len[g, slot]
    for k in range(first):                 # members whose previous token was their own
        i = S.jn[g, slot, k]
        gap = t - R.rf[i, T_LAST_TOKEN]
        if gap > R.rf[i, ITL_MAX]:
            R.rf[i, ITL_MAX] = gap
        record_itl(L, gap, 1.0)
    common = S.si[g, PC_CNT + slot] - first
    if common > 0:
        gap = t - S.sf[g, T_CLAST]
        record_itl(L, gap, 1.0 * common)
        deque_push(S, g, num, gap)
    S.sf[g, T_CLAST] = t
    S.si[g, PC_NUM + slot] = 0
    S.jn_len[g, slot] = 0
