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
   ``max_num_seqs`` run (or, under Pang's controllers, their cap b*: ``controller``), take
   the head (of the policy's order: ``waiting_queue``); a request still owed stale output from before its
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

from simsched.engines.continuous.block_pool import (allocate_running, allocate_waiting, find_cache_hit, free_row,
                                                   publish_own_blocks)
from simsched.engines.continuous.lazy_decode import cohort_running_pass
from simsched.engines.continuous.state import (ACT_LEN, ATTN, C_EVENTS, C_LAZY_REQ_STEPS, C_REQ_STEPS, COMPUTED, CTX,
                                              DEC, EV_HIT, EV_PREEMPTED, EV_SCHEDULED, GPU, HIT_TOKENS, IDS, IN_FLIGHT,
                                              MAX_TOKENS, ORDER, N_OUT, N_PREEMPT, NTOK, P_LEN, PC_CNT, PC_NUM, PF,
                                              PLACEHOLDERS, PLAN_F, PLAN_W, POLICY_FCFS, POLICY_LPM, POLICY_PRIORITY,
                                              PREEMPTED, PRIORITY, PROD,
                                              PROMPT, ROW, RUN_LEN, RUNNING, SEQ, SEQ_NEXT, STALE, STATUS, STEPS,
                                              T_FIRST_SCHED, T_SCHED, WQ_LEN)
from simsched.engines.continuous.step_time import gpu_time
from simsched.engines.continuous.controller import running_cap
from simsched.engines.continuous.waiting_queue import lpm_sort, wq_peek, wq_pop, wq_push_front
from simsched.jit import jitable


@jitable(inline=True)
def log_event(L, step, kind, i, n):
    k = L.counters[C_EVENTS]
    if k < len(L.ev):          # the loop pauses to grow the log before it can fill
        L.ev[k, 0] = step
        L.ev[k, 1] = kind
        L.ev[k, 2] = i
        L.ev[k, 3] = n
    L.counters[C_EVENTS] = k + 1


@jitable(inline=True)
def step_label(P, S, g, t):
    """A step's label in the event log: the engine iteration (its time) in step-conformance
    mode, else the replica's count of schedule() calls."""
    if P.unit_steps:
        return int(t)
    return S.si[g, STEPS]


@jitable
def preempt(P, Q, R, S, K, L, g, i, step):
    """``_preempt_request``: free the blocks, reset to 0 computed tokens, mark in-flight output
    as stale, and put the request at the front of WAITING."""
    if P.caching:
        publish_own_blocks(K, g, R.ri[i, ROW])
    free_row(K, g, R.ri[i, ROW])
    R.ri[i, ROW] = -1
    R.ri[i, STATUS] = PREEMPTED
    R.ri[i, COMPUTED] = 0
    R.ri[i, STALE] = R.ri[i, IN_FLIGHT]
    R.ri[i, PLACEHOLDERS] = 0
    R.ri[i, N_PREEMPT] += 1
    wq_push_front(P, Q, S, g, i)
    if P.record_events:
        log_event(L, step, EV_PREEMPTED, i, 0)


@jitable
def _victim_index(Q, S, g):
    """Priority policy: the running request with the largest (priority, arrival), the first
    in list order on ties (Python's ``max``)."""
    best = 0
    b = S.run[g, 0]
    for k in range(1, S.si[g, RUN_LEN]):
        r = S.run[g, k]
        if Q.qi[r, PRIORITY] > Q.qi[b, PRIORITY] or (
                Q.qi[r, PRIORITY] == Q.qi[b, PRIORITY] and Q.qi[r, ORDER] > Q.qi[b, ORDER]):
            best = k
            b = r
    return best


@jitable
def schedule(P, Q, R, S, K, L, g, t, slot):
    """Form one step of replica ``g`` at time ``t`` into plan ``slot``. Returns
    (number preempted, number admitted)."""
    ri = R.ri
    plan = S.plan
    S.si[g, STEPS] += 1
    step = step_label(P, S, g, t)
    budget = P.max_batched
    lpt = P.lpt if S.si[g, RUN_LEN] + S.si[g, WQ_LEN] > 1 else 0
    n = 0                                  # plan length
    n_pre = 0
    req_index = 0
    dec = 0.0                              # the decode cohort's decodes and context (lazy_decode)
    ctx = 0.0
    if P.lazy:
        n, used, ctx = cohort_running_pass(P, Q, R, S, K, L, g, slot, lpt)
        if n >= 0:                         # the cohort step did the RUNNING pass
            req_index = S.si[g, RUN_LEN]
            budget -= used
            dec = 1.0 * S.si[g, PC_CNT + slot]
        else:
            n = 0
            ctx = 0.0
    while req_index < S.si[g, RUN_LEN] and budget > 0:
        i = S.run[g, req_index]
        prompt = Q.qi[i, PROMPT]
        if ri[i, PLACEHOLDERS] > 0 and ri[i, COMPUTED] + 2 - ri[i, PLACEHOLDERS] >= prompt + Q.qi[i, MAX_TOKENS]:
            req_index += 1                 # async: its last token is already in flight
            continue
        new = prompt + ri[i, N_OUT] + ri[i, PLACEHOLDERS] - ri[i, COMPUTED]
        if 0 < lpt < new:
            new = lpt
        if new > budget:
            new = budget
        cap = P.max_model_len - ri[i, COMPUTED] - 1
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
            if P.policy != POLICY_PRIORITY:   # fcfs (and the rings of bins, lpm): the tail
                S.si[g, RUN_LEN] -= 1
                v = S.run[g, S.si[g, RUN_LEN]]
            else:
                vk = _victim_index(Q, S, g)
                v = S.run[g, vk]
                for k in range(vk, S.si[g, RUN_LEN] - 1):
                    S.run[g, k] = S.run[g, k + 1]
                S.si[g, RUN_LEN] -= 1
                if vk < req_index:
                    req_index -= 1
                for k in range(n):         # an already scheduled victim gives its budget back
                    if plan[g, slot, IDS, k] == v:
                        budget += plan[g, slot, NTOK, k]
                        for m in range(k, n - 1):
                            plan[g, slot, IDS, m] = plan[g, slot, IDS, m + 1]
                            plan[g, slot, NTOK, m] = plan[g, slot, NTOK, m + 1]
                        n -= 1
                        break
            preempt(P, Q, R, S, K, L, g, v, step)
            n_pre += 1
            if v == i:
                break
        if not scheduled:
            if P.policy == POLICY_PRIORITY and ri[i, STATUS] == PREEMPTED:
                continue                   # it preempted itself; later ones may still fit
            break
        plan[g, slot, IDS, n] = i
        plan[g, slot, NTOK, n] = new
        n += 1
        budget -= new
        req_index += 1

    n_adm = 0
    if n_pre == 0:
        n_skip = 0
        cap = running_cap(P, Q, R, S, g) if P.ctl_on else P.max_seqs
        if P.policy == POLICY_LPM:
            lpm_sort(P, Q, R, S, K, g)
        while budget > 0 and S.si[g, WQ_LEN] > 0 and S.si[g, RUN_LEN] < cap:
            i = wq_peek(P, Q, S, g)
            if ri[i, STALE] > 0:           # stale output still in flight: requeue after the pass
                S.scratch[n_skip] = wq_pop(P, Q, S, g)
                n_skip += 1
                continue
            n_hit, hit_key = find_cache_hit(P, Q, R, K, g, i)
            hit_tokens = n_hit * P.block_size
            new = Q.qi[i, PROMPT] + ri[i, N_OUT] - hit_tokens
            if 0 < lpt < new:
                new = lpt
            if new > budget:
                new = budget
            if not allocate_waiting(P, Q, R, K, g, i, n_hit, hit_key, new, S.si[g, RUN_LEN] > 0):
                break                      # head-of-line blocking
            wq_pop(P, Q, S, g)
            S.run[g, S.si[g, RUN_LEN]] = i
            S.si[g, RUN_LEN] += 1
            if P.lazy:                     # running order = admission order (lazy_decode)
                S.act[g, S.si[g, ACT_LEN]] = i
                S.si[g, ACT_LEN] += 1
                ri[i, SEQ] = S.si[g, SEQ_NEXT]
                S.si[g, SEQ_NEXT] += 1
            ri[i, STATUS] = RUNNING
            ri[i, COMPUTED] = hit_tokens
            if ri[i, HIT_TOKENS] < 0:      # first admission (vLLM's prefill_stats)
                ri[i, HIT_TOKENS] = hit_tokens
                R.rf[i, T_FIRST_SCHED] = t
            if P.record_events and hit_tokens > 0:
                log_event(L, step, EV_HIT, i, hit_tokens)
            plan[g, slot, IDS, n] = i
            plan[g, slot, NTOK, n] = new
            n += 1
            budget -= new
            n_adm += 1
        for k in range(n_skip - 1, -1, -1):
            wq_push_front(P, Q, S, g, S.scratch[k])
    if P.lazy and S.si[g, PC_NUM + slot] == 0:   # no cohort this step: every runner is explicit
        for k in range(S.si[g, RUN_LEN]):
            S.act[g, k] = S.run[g, k]
        S.si[g, ACT_LEN] = S.si[g, RUN_LEN]
    L.counters[C_REQ_STEPS] += n + int(dec)
    L.counters[C_LAZY_REQ_STEPS] += int(dec)

    # _update_after_schedule, and the step's work for the step-time model.
    pf = 0.0
    attn = 0.0
    for k in range(n):
        i = plan[g, slot, IDS, k]
        m = plan[g, slot, NTOK, k]
        c = ri[i, COMPUTED]
        if m == 1 and c >= Q.qi[i, PROMPT]:
            dec += 1.0
            ctx += c + 1.0
        else:
            pf += m
            attn += m * c + 0.5 * m * m
        ri[i, COMPUTED] = c + m
        ri[i, IN_FLIGHT] += m
        prod = ri[i, COMPUTED] >= Q.qi[i, PROMPT] + ri[i, N_OUT] + ri[i, PLACEHOLDERS]
        plan[g, slot, PROD, k] = 1 if prod else 0
        if prod and P.async_sched:
            ri[i, PLACEHOLDERS] += 1
        if P.record_events:
            log_event(L, step, EV_SCHEDULED, i, m)
    S.si[g, P_LEN + slot] = n
    base = PLAN_F + PLAN_W * slot
    S.sf[g, base + PF] = pf
    S.sf[g, base + DEC] = dec
    S.sf[g, base + CTX] = ctx
    S.sf[g, base + ATTN] = attn
    S.sf[g, base + GPU] = gpu_time(P, pf, dec, ctx, attn)
    S.sf[g, base + T_SCHED] = t
    return n_pre, n_adm
