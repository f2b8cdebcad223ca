"""Step formation: vLLM 0.33.0 ``Scheduler.schedule`` for one replica, returning a plan.

The plan (request ids and token counts in vLLM's ``num_scheduled_tokens`` order, plus whether
each entry samples a token) goes into one of the replica's two plan slots (vLLM's batch
queue); ``update.update_from_output`` applies it later (STYLE "keep vLLM's step boundary").

Rules, in vLLM's order (``Scheduler.schedule``):

1. The token budget is ``max_num_batched_tokens``. ``long_prefill_token_threshold`` applies
   only when more than one request is running or waiting.
2. RUNNING requests first, in list order. Each gets ``num_tokens + placeholders - computed``
   tokens, capped by the threshold, the budget and ``max_model_len - computed - 1``. Under
   async scheduling a request whose last token is already in flight is skipped. If its blocks
   cannot be allocated (``allocate_slots``), the lowest-priority running request is preempted
   (``_preempt_request``: fcfs takes the tail of the list; priority the max of (priority,
   arrival), first in list order on ties, giving back the budget of an already scheduled
   victim) until the allocation succeeds or the request preempted itself. A preempted
   request frees its blocks, restarts from 0 computed tokens (recompute; v1 has no swap) and
   goes to the front of WAITING.
3. WAITING, only if nothing was preempted in this step: while budget remains and fewer than
   ``max_num_seqs`` run, take the head; a request still owed stale output from before its
   preemption is skipped (requeued at the front afterwards); look up its prefix-cache hit,
   give it ``num_tokens - hit`` tokens (threshold, budget), and stop at the first head whose
   blocks cannot be allocated (head-of-line blocking; with the full-sequence gate the whole
   current sequence must fit).
4. ``_update_after_schedule``: computed tokens advance now; an entry that completes its
   known tokens samples a token; under async scheduling it gets an output placeholder.

Not modelled (outside a text-only, single-group, no-connector deployment): speculative
decoding, LoRA limits, encoder inputs, KV connectors, pause states, Mamba alignment,
``max_num_active_seqs`` below ``max_num_seqs``, the prefill cadence
(``prefill_schedule_interval``) and the adaptive long-prefill threshold.
"""
from __future__ import annotations

from simsched.engines.continuous.block_pool import allocate_running, allocate_waiting, find_cache_hit, free_row
from simsched.engines.continuous.state import (C_EVENTS, EV_PREEMPTED, EV_SCHEDULED, POLICY_FCFS, PREEMPTED,
                                              RUNNING)
from simsched.engines.continuous.step_time import gpu_time
from simsched.engines.continuous.waiting_queue import wq_peek, wq_pop, wq_push_front
from simsched.jit import jitable


@jitable
def log_event(L, step, kind, i, n):
    k = L.counters[C_EVENTS]
    if k < len(L.ev_kind):         # the loop pauses to grow the log when it is full
        L.ev_step[k] = step
        L.ev_kind[k] = kind
        L.ev_id[k] = i
        L.ev_n[k] = n
    L.counters[C_EVENTS] = k + 1


@jitable
def preempt(P, Q, R, S, K, L, g, i, step):
    """``_preempt_request``: free the blocks, reset to 0 computed tokens, mark in-flight output
    as stale, and put the request at the front of WAITING."""
    free_row(K, g, R.row[i])
    R.row[i] = -1
    R.status[i] = PREEMPTED
    R.computed[i] = 0
    R.stale[i] = R.inflight[i]
    R.ph[i] = 0
    R.n_preempt[i] += 1
    wq_push_front(P, Q, S, g, i)
    if P.record_events:
        log_event(L, step, EV_PREEMPTED, i, 0)


@jitable
def _victim_index(Q, S, g):
    """Priority policy: the running request with the largest (priority, arrival), the first
    in list order on ties (Python's ``max``)."""
    best = 0
    b = S.run[g, 0]
    for k in range(1, S.run_len[g]):
        r = S.run[g, k]
        if Q.priority[r] > Q.priority[b] or (Q.priority[r] == Q.priority[b] and Q.arrival[r] > Q.arrival[b]):
            best = k
            b = r
    return best


@jitable
def schedule(P, Q, R, S, K, L, g, t, slot):
    """Form one step of replica ``g`` at time ``t`` into plan ``slot``. Returns
    (number preempted, number admitted)."""
    S.steps[g] += 1
    step = S.steps[g]
    budget = P.max_batched
    lpt = P.lpt if S.run_len[g] + S.wq_len[g] > 1 else 0
    n = 0                                  # plan length
    n_pre = 0
    req_index = 0
    while req_index < S.run_len[g] and budget > 0:
        i = S.run[g, req_index]
        if R.ph[i] > 0 and R.computed[i] + 2 - R.ph[i] >= Q.prompt[i] + Q.max_tokens[i]:
            req_index += 1                 # async: its last token is already in flight
            continue
        new = Q.prompt[i] + R.n_out[i] + R.ph[i] - R.computed[i]
        if 0 < lpt < new:
            new = lpt
        if new > budget:
            new = budget
        cap = P.max_model_len - R.computed[i] - 1
        if new > cap:
            new = cap
        if new <= 0:
            req_index += 1
            continue
        scheduled = False
        while True:
            if allocate_running(P, Q, R, K, g, i, new):
                scheduled = True
                break
            if P.policy == POLICY_FCFS:
                S.run_len[g] -= 1
                v = S.run[g, S.run_len[g]]
            else:
                vk = _victim_index(Q, S, g)
                v = S.run[g, vk]
                for k in range(vk, S.run_len[g] - 1):
                    S.run[g, k] = S.run[g, k + 1]
                S.run_len[g] -= 1
                if vk < req_index:
                    req_index -= 1
                for k in range(n):         # an already scheduled victim gives its budget back
                    if S.p_ids[g, slot, k] == v:
                        budget += S.p_n[g, slot, k]
                        for m in range(k, n - 1):
                            S.p_ids[g, slot, m] = S.p_ids[g, slot, m + 1]
                            S.p_n[g, slot, m] = S.p_n[g, slot, m + 1]
                        n -= 1
                        break
            preempt(P, Q, R, S, K, L, g, v, step)
            n_pre += 1
            if v == i:
                break
        if not scheduled:
            if P.policy != POLICY_FCFS and R.status[i] == PREEMPTED:
                continue                   # it preempted itself; later ones may still fit
            break
        S.p_ids[g, slot, n] = i
        S.p_n[g, slot, n] = new
        n += 1
        budget -= new
        req_index += 1

    n_adm = 0
    if n_pre == 0:
        n_skip = 0
        while budget > 0 and S.wq_len[g] > 0 and S.run_len[g] < P.max_seqs:
            i = wq_peek(P, Q, S, g)
            if R.stale[i] > 0:             # stale output still in flight: requeue after the pass
                S.scratch[n_skip] = wq_pop(P, Q, S, g)
                n_skip += 1
                continue
            n_hit, hit_key = find_cache_hit(P, Q, R, K, g, i)
            hit_tokens = n_hit * P.block_size
            new = Q.prompt[i] + R.n_out[i] - hit_tokens
            if 0 < lpt < new:
                new = lpt
            if new > budget:
                new = budget
            if not allocate_waiting(P, Q, R, K, g, i, n_hit, hit_key, new, S.run_len[g] > 0):
                break                      # head-of-line blocking
            wq_pop(P, Q, S, g)
            S.run[g, S.run_len[g]] = i
            S.run_len[g] += 1
            R.status[i] = RUNNING
            R.computed[i] = hit_tokens
            if R.hit_tokens[i] < 0:        # first admission (vLLM's prefill_stats)
                R.hit_tokens[i] = hit_tokens
                R.t_first_sched[i] = t
            S.p_ids[g, slot, n] = i
            S.p_n[g, slot, n] = new
            n += 1
            budget -= new
            n_adm += 1
        for k in range(n_skip - 1, -1, -1):
            wq_push_front(P, Q, S, g, S.scratch[k])

    # _update_after_schedule, and the step's work for the step-time model.
    pf = 0.0
    dec = 0.0
    ctx = 0.0
    attn = 0.0
    for k in range(n):
        i = S.p_ids[g, slot, k]
        m = S.p_n[g, slot, k]
        c = R.computed[i]
        if m == 1 and c >= Q.prompt[i]:
            dec += 1.0
            ctx += c + 1.0
        else:
            pf += m
            attn += m * c + 0.5 * m * m
        R.computed[i] = c + m
        R.inflight[i] += m
        prod = R.computed[i] >= Q.prompt[i] + R.n_out[i] + R.ph[i]
        S.p_prod[g, slot, k] = 1 if prod else 0
        if prod and P.async_sched:
            R.ph[i] += 1
        if P.record_events:
            log_event(L, step, EV_SCHEDULED, i, m)
    S.p_len[g, slot] = n
    S.p_stats[g, slot, 0] = pf
    S.p_stats[g, slot, 1] = dec
    S.p_stats[g, slot, 2] = ctx
    S.p_stats[g, slot, 3] = attn
    S.p_gpu[g, slot] = gpu_time(P, pf, dec, ctx, attn)
    return n_pre, n_adm
