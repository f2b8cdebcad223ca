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
from simsched.engines.continuous.schedule import log_event
from simsched.engines.continuous.state import (EV_FINISHED, FINISHED, ITL_BINS, ITL_LO, ITL_PER_DECADE,
                                              RUNNING)
from simsched.engines.continuous.waiting_queue import wq_remove
from simsched.jit import jitable


@jitable
def record_itl(L, gap, weight):
    """Add ``weight`` inter-token gaps of ``gap`` seconds to the ITL histogram and sum."""
    if gap <= ITL_LO:
        k = 0
    else:
        k = int(math.log10(gap / ITL_LO) * ITL_PER_DECADE) + 1
        if k > ITL_BINS - 1:
            k = ITL_BINS - 1
    L.itl_hist[k] += weight
    L.itl_sum[0] += gap * weight
    L.itl_sum[1] += weight


@jitable
def emit_token(P, R, L, i, t):
    """Request ``i``'s next output token appears at ``t``."""
    R.n_out[i] += 1
    if R.n_out[i] == 1:
        R.t_first_tok[i] = t
    else:
        gap = t - R.t_last_tok[i]
        if gap > R.itl_max[i]:
            R.itl_max[i] = gap
        record_itl(L, gap, 1.0)
    R.t_last_tok[i] = t


@jitable
def update_from_output(P, Q, R, S, K, L, g, slot, t, step):
    """Apply plan ``slot`` of replica ``g`` at time ``t``; returns the number finished."""
    n_fin = 0
    for k in range(S.p_len[g, slot]):
        i = S.p_ids[g, slot, k]
        m = S.p_n[g, slot, k]
        R.inflight[i] -= m
        stale = False
        if R.stale[i] > 0:
            stale = True
            R.stale[i] -= m
        if R.status[i] == FINISHED or S.p_prod[g, slot, k] == 0:
            continue
        emit_token(P, R, L, i, t)
        stopped = R.n_out[i] >= Q.max_tokens[i] or Q.prompt[i] + R.n_out[i] >= P.max_model_len
        had_ph = R.ph[i] > 0
        if not stale and had_ph:
            R.ph[i] -= 1
        running = R.status[i] == RUNNING
        if not stale and running and had_ph:
            cache_blocks(P, Q, R, K, g, i, R.computed[i] - R.inflight[i])
        if stopped:
            if running:
                free_row(K, g, R.row[i])
                R.row[i] = -1
            else:
                wq_remove(P, Q, S, g, i)
            R.status[i] = FINISHED
            n_fin += 1
            if P.record_events:
                log_event(L, step, EV_FINISHED, i, 0)
    if n_fin > 0:
        w = 0
        for k in range(S.run_len[g]):
            r = S.run[g, k]
            if R.status[r] != FINISHED:
                S.run[g, w] = r
                w += 1
        S.run_len[g] = w
    return n_fin
