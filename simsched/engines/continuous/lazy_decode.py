"""The decode cohort: running requests in steady decode advanced together, not one by one.

Most running requests, most of the time, do the same thing every step: get one token, take a
KV block every ``block_size`` steps, emit one token when the step's output is processed. A
request in that state joins its replica's *cohort*; while it is a member its counters are
implicit (``computed = stored + cohort schedules since it joined``, ``outputs = stored + cohort
updates since it joined``), and a step costs O(1) for the cohort plus O(1) per member that
crosses a block boundary (members are bucketed by the step, modulo ``block_size``, at which
they do) instead of O(running). This is the exact decode fast-forward (REFERENCE §9)
generalised: it continues through admissions, prefills and finishes of other requests.

A step keeps the cohort only when vLLM's step could not tell the difference:

- every running request gets all its tokens (the budget covers the cohort's one token each
  plus the explicit requests' demands), so the order of the RUNNING pass does not matter;
- every block needed fits in the free queue, so nothing is preempted and the order of the
  pops does not matter (blocks are interchangeable labels: which request gets which free block
  changes no count, hash, hit or eviction);
- no member is within one token of its end (it leaves the cohort first, ``EXIT_D``): the
  finish, the async skip of a last token in flight and the block frees stay explicit.

Otherwise every member is materialised (``leave_all``) and the step runs as ``schedule``
does. A member's output blocks are hashed when it leaves: nothing can look them up before
(their content is its own, and its own lookups happen only after a preemption, which only
explicit steps do), and the free queue only sees them after it leaves. Inter-token gaps of
members: the gap at a cohort update is common to all members but the newest (whose previous
token was their own); each member's longest gap is the largest common gap since it joined,
read from a monotonic deque of (update number, gap).

Where it plugs in: ``schedule`` calls ``cohort_running_pass`` in place of its RUNNING pass (the
WAITING pass, the policy's queue order and admission rules, is unchanged and shared);
``update.cohort_update`` emits the members' tokens after ``update_from_output``; the loop pauses
to grow the gap deque (``deque_room``). Only runs without the step event log use the cohort
(``Params.lazy``); conformance runs keep vLLM's per-request steps or ``fast_forward`` jumps.
"""
from __future__ import annotations

from simsched.engines.continuous.block_pool import allocate_running, cache_blocks, cdiv, get_new_blocks
from simsched.engines.continuous.state import (ACT_LEN, BK_POS, C_COHORT_STEPS, COHORT, COOL, COMPUTED, CSUM, D0, DC,
                                              DQ_LEN, EXIT_D, HP_LEN, IDS, IN_FLIGHT, ITL_MAX, MAX_TOKENS, N_C, N_FREE,
                                              N_OUT, NTOK, P_COUNT, P_HEAD, P_LEN, PC_CNT, PC_NUM, PLACEHOLDERS, PROD,
                                              PROMPT, ROW, ROW_N, RUN_LEN, SEQ, STALE, T_CLAST, T_LAST_TOKEN, UC)
from simsched.jit import jitable


# Steps without joining after a cohort had to be broken up: under overload the KV pool is nearly
# full and steps that need order come every few steps; materialising and rejoining every member
# each time cost more than plain steps (measured: overload 100k requests 3.4 s vs 2.8 s of CPU).
COOL_STEPS = 16


# --- the exit heap (members ordered by the cohort step before which they must leave) --------

@jitable
def _heap_push(S, g, key, i):
    hp = S.hp
    n = S.si[g, HP_LEN]
    if n == hp.shape[1]:                   # full of stale entries: keep the live ones
        w = 0
        for k in range(n):
            j = hp[g, k, 1]
            if hp[g, k, 0] == -1 or j < 0:
                continue
            hp[g, w, 0] = hp[g, k, 0]
            hp[g, w, 1] = j
            w += 1
        n = w
        for k in range(n // 2 - 1, -1, -1):
            _heap_down(S, g, k, n)
    pos = n
    while pos > 0:
        parent = (pos - 1) >> 1
        if hp[g, parent, 0] <= key:
            break
        hp[g, pos, 0] = hp[g, parent, 0]
        hp[g, pos, 1] = hp[g, parent, 1]
        pos = parent
    hp[g, pos, 0] = key
    hp[g, pos, 1] = i
    S.si[g, HP_LEN] = n + 1


@jitable
def _heap_down(S, g, pos, n):
    hp = S.hp
    key = hp[g, pos, 0]
    i = hp[g, pos, 1]
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and hp[g, c + 1, 0] < hp[g, c, 0]:
            c += 1
        if hp[g, c, 0] >= key:
            break
        hp[g, pos, 0] = hp[g, c, 0]
        hp[g, pos, 1] = hp[g, c, 1]
        pos = c
    hp[g, pos, 0] = key
    hp[g, pos, 1] = i


@jitable
def _heap_pop(S, g):
    n = S.si[g, HP_LEN] - 1
    S.si[g, HP_LEN] = n
    if n > 0:
        S.hp[g, 0, 0] = S.hp[g, n, 0]
        S.hp[g, 0, 1] = S.hp[g, n, 1]
        _heap_down(S, g, 0, n)


# --- the gap deque (suffix maxima of the cohort's common inter-token gaps) -------------------

@jitable
def deque_push(S, g, u, gap):
    n = S.si[g, DQ_LEN]
    while n > 0 and S.dq_g[g, n - 1] <= gap:
        n -= 1
    S.dq_u[g, n] = u
    S.dq_g[g, n] = gap
    S.si[g, DQ_LEN] = n + 1


@jitable
def _deque_max_since(S, g, u):
    """The largest common gap at cohort updates ≥ u (0.0 if none)."""
    lo = 0
    hi = S.si[g, DQ_LEN]
    while lo < hi:
        mid = (lo + hi) >> 1
        if S.dq_u[g, mid] < u:
            lo = mid + 1
        else:
            hi = mid
    return S.dq_g[g, lo] if lo < S.si[g, DQ_LEN] else 0.0


@jitable(inline=True)
def deque_room(S, g):
    return S.si[g, DQ_LEN] + 2 < S.dq_u.shape[1]


# --- joining and leaving --------------------------------------------------------------------

@jitable(inline=True)
def _output_cap(P, Q, i):
    out = Q.qi[i, MAX_TOKENS]
    cap = P.max_model_len - Q.qi[i, PROMPT]
    return out if out < cap else cap


@jitable
def join(P, Q, R, S, K, g, i):
    """Request ``i`` (running, active, in steady decode) joins the cohort before this tick's
    schedule; returns whether it could (it must have a cohort step left before its end)."""
    ri = R.ri
    c = ri[i, COMPUTED]
    e = c - Q.qi[i, PROMPT] + 1            # tokens emitted or in flight
    exit_d = S.si[g, DC] + _output_cap(P, Q, i) - 1 - e
    if exit_d <= S.si[g, DC]:
        return False
    i0 = K.rows[ri[i, ROW], ROW_N] * P.block_size - c
    if i0 < 0 or i0 >= P.block_size:
        return False
    ri[i, COHORT] = 1
    ri[i, D0] = S.si[g, DC]
    ri[i, EXIT_D] = exit_d
    b = (S.si[g, DC] - c) % P.block_size   # it crosses at cohort steps ≡ b (mod block_size)
    ri[i, BK_POS] = S.bk_len[g, b]
    S.bk[g, b, S.bk_len[g, b]] = i
    S.bk_len[g, b] += 1
    _heap_push(S, g, exit_d, i)
    S.jn[g, 2, S.jn_len[g, 2]] = i         # its first cohort token is its own gap
    S.jn_len[g, 2] += 1
    S.sf[g, CSUM] += c + 1.0
    S.si[g, N_C] += 1
    return True


@jitable
def _insert_plan_entry(R, S, g, slot, i):
    """Insert a one-token decode of ``i`` into plan ``slot``, keeping admission order."""
    ri = R.ri
    plan = S.plan
    k = S.si[g, P_LEN + slot]
    while k > 0 and ri[plan[g, slot, IDS, k - 1], SEQ] > ri[i, SEQ]:
        plan[g, slot, IDS, k] = plan[g, slot, IDS, k - 1]
        plan[g, slot, NTOK, k] = plan[g, slot, NTOK, k - 1]
        plan[g, slot, PROD, k] = plan[g, slot, PROD, k - 1]
        k -= 1
    plan[g, slot, IDS, k] = i
    plan[g, slot, NTOK, k] = 1
    plan[g, slot, PROD, k] = 1
    S.si[g, P_LEN + slot] += 1


@jitable
def _insert_active(R, S, g, i):
    ri = R.ri
    k = S.si[g, ACT_LEN]
    while k > 0 and ri[S.act[g, k - 1], SEQ] > ri[i, SEQ]:
        S.act[g, k] = S.act[g, k - 1]
        k -= 1
    S.act[g, k] = i
    S.si[g, ACT_LEN] += 1


@jitable
def leave(P, Q, R, S, K, g, i, to_active):
    """Member ``i`` leaves the cohort: its counters, times and hashes become explicit, its
    tokens in plans still in flight become explicit plan entries; with ``to_active`` it is put
    back in the active list."""
    ri = R.ri
    rf = R.rf
    d0 = ri[i, D0]
    dc = S.si[g, DC]
    uc = S.si[g, UC]
    ks = dc - d0
    ku = uc - d0 if uc > d0 else 0
    ri[i, COMPUTED] += ks
    ri[i, N_OUT] += ku
    ri[i, PLACEHOLDERS] += ks - ku
    ri[i, IN_FLIGHT] += ks - ku
    if ku >= 1:
        rf[i, T_LAST_TOKEN] = S.sf[g, T_CLAST]
        if ku >= 2:
            m = _deque_max_since(S, g, d0 + 2)
            if m > rf[i, ITL_MAX]:
                rf[i, ITL_MAX] = m
    if ks >= 1:
        # Cache what step-by-step execution would have by now: its last schedule cached up to
        # min(computed, tokens known then); an async update after it, computed − in flight.
        depth = 2 if P.async_sched else 1
        base = d0 if d0 > dc - depth else dc - depth
        after = uc - base if uc > base else 0          # its tokens delivered since that schedule
        upto = Q.qi[i, PROMPT] + ri[i, N_OUT] - after
        if ri[i, COMPUTED] < upto:
            upto = ri[i, COMPUTED]
        if P.async_sched and after >= 1 and ri[i, COMPUTED] - ri[i, IN_FLIGHT] > upto:
            upto = ri[i, COMPUTED] - ri[i, IN_FLIGHT]
        cache_blocks(P, Q, R, K, g, i, upto)
    # Its tokens in plans still in flight (cohort steps uc+1 .. dc after its joining).
    for q in range(2):
        slot = (S.si[g, P_HEAD] + q) & 1
        if q >= S.si[g, P_COUNT]:
            break
        num = S.si[g, PC_NUM + slot]
        if num > d0 and num > uc:
            _insert_plan_entry(R, S, g, slot, i)
            S.si[g, PC_CNT + slot] -= 1
            _remove_joiner(S, g, slot, i)
    _remove_joiner(S, g, 2, i)
    # Out of its crossing bucket (swap with the last).
    b = (d0 - (ri[i, COMPUTED] - ks)) % P.block_size
    pos = ri[i, BK_POS]
    last = S.bk[g, b, S.bk_len[g, b] - 1]
    S.bk[g, b, pos] = last
    ri[last, BK_POS] = pos
    S.bk_len[g, b] -= 1
    ri[i, COHORT] = 0
    ri[i, EXIT_D] = -1
    S.sf[g, CSUM] -= ri[i, COMPUTED] + 1.0
    S.si[g, N_C] -= 1
    if to_active:
        _insert_active(R, S, g, i)


@jitable
def _remove_joiner(S, g, slot, i):
    n = S.jn_len[g, slot]
    for k in range(n):
        if S.jn[g, slot, k] == i:
            S.jn[g, slot, k] = S.jn[g, slot, n - 1]
            S.jn_len[g, slot] = n - 1
            return


@jitable
def leave_all(P, Q, R, S, K, g):
    """Materialise every member (before an explicit step); the active list becomes RUNNING."""
    if S.si[g, N_C] > 0:
        for k in range(S.si[g, RUN_LEN]):
            i = S.run[g, k]
            if R.ri[i, COHORT] == 1:
                leave(P, Q, R, S, K, g, i, False)
    for k in range(S.si[g, RUN_LEN]):
        S.act[g, k] = S.run[g, k]
    S.si[g, ACT_LEN] = S.si[g, RUN_LEN]
    S.si[g, HP_LEN] = 0
    S.si[g, DQ_LEN] = 0


@jitable
def join_steady(P, Q, R, S, K, g):
    """Active running requests in steady decode join the cohort (sync: no placeholder and
    computed = known − 1; async: one placeholder in flight and computed = known)."""
    ri = R.ri
    w = 0
    for k in range(S.si[g, ACT_LEN]):
        i = S.act[g, k]
        steady = False
        if ri[i, STALE] == 0:
            known = Q.qi[i, PROMPT] + ri[i, N_OUT]
            if P.async_sched:
                steady = ri[i, PLACEHOLDERS] == 1 and ri[i, COMPUTED] == known
            else:
                steady = ri[i, PLACEHOLDERS] == 0 and ri[i, N_OUT] >= 1 and ri[i, COMPUTED] == known - 1
        if steady and join(P, Q, R, S, K, g, i):
            continue
        S.act[g, w] = i
        w += 1
    S.si[g, ACT_LEN] = w


# --- one step with the cohort ---------------------------------------------------------------

@jitable
def cohort_running_pass(P, Q, R, S, K, L, g, slot, lpt):
    """The RUNNING pass of ``schedule`` for replica ``g`` with a cohort: steady decoders join,
    members at their last cohort step leave, and when the step provably needs no order (see
    the module docstring) the explicit running requests are scheduled into plan ``slot`` and
    the cohort's decodes and block crossings are taken. Returns (plan length, budget used,
    the cohort's context sum), or (-1, 0, 0.0) after materialising every member: then
    ``schedule`` runs the RUNNING pass as vLLM does."""
    if S.si[g, COOL] > 0:
        S.si[g, COOL] -= 1
    else:
        join_steady(P, Q, R, S, K, g)
    ri = R.ri
    dc = S.si[g, DC]
    while S.si[g, HP_LEN] > 0 and S.hp[g, 0, 0] <= dc:   # members at their last cohort step leave
        i = S.hp[g, 0, 1]
        key = S.hp[g, 0, 0]
        _heap_pop(S, g)
        if ri[i, COHORT] == 1 and ri[i, EXIT_D] == key:
            leave(P, Q, R, S, K, g, i, True)
    nc = S.si[g, N_C]
    demand = nc
    need = S.bk_len[g, dc % P.block_size]
    if nc > 0:
        for k in range(S.si[g, ACT_LEN]):
            i = S.act[g, k]
            prompt = Q.qi[i, PROMPT]
            new = 0
            if not (ri[i, PLACEHOLDERS] > 0
                    and ri[i, COMPUTED] + 2 - ri[i, PLACEHOLDERS] >= prompt + Q.qi[i, MAX_TOKENS]):
                new = prompt + ri[i, N_OUT] + ri[i, PLACEHOLDERS] - ri[i, COMPUTED]
                if 0 < lpt < new:
                    new = lpt
                cap = P.max_model_len - ri[i, COMPUTED] - 1
                if new > cap:
                    new = cap
                if new < 0:
                    new = 0
            S.scratch[k] = new
            demand += new
            total = ri[i, COMPUTED] + new
            if total > P.max_model_len:
                total = P.max_model_len
            extra = cdiv(total, P.block_size) - K.rows[ri[i, ROW], ROW_N]
            if extra > 0:
                need += extra
    if nc == 0 or demand > P.max_batched or need > K.ki[g, N_FREE]:
        if nc > 0:                         # a cohort broken up (a tight pool): rejoining at once
            S.si[g, COOL] = COOL_STEPS     # would churn, so decoders stay explicit for a while
        leave_all(P, Q, R, S, K, g)
        S.si[g, PC_NUM + slot] = 0         # no cohort in this step
        S.jn_len[g, slot] = 0
        return -1, 0, 0.0
    # The step: explicit running requests in order, then the cohort's block crossings.
    L.counters[C_COHORT_STEPS] += 1
    n = 0
    plan = S.plan
    for k in range(S.si[g, ACT_LEN]):
        new = S.scratch[k]
        if new > 0:
            i = S.act[g, k]
            allocate_running(P, Q, R, K, g, i, new)
            plan[g, slot, IDS, n] = i
            plan[g, slot, NTOK, n] = new
            n += 1
    b = dc % P.block_size
    for k in range(S.bk_len[g, b]):
        get_new_blocks(K, g, ri[S.bk[g, b, k], ROW], 1)
    S.si[g, PC_NUM + slot] = dc + 1
    S.si[g, PC_CNT + slot] = nc
    for k in range(S.jn_len[g, 2]):
        S.jn[g, slot, k] = S.jn[g, 2, k]
    S.jn_len[g, slot] = S.jn_len[g, 2]
    S.jn_len[g, 2] = 0
    ctx = S.sf[g, CSUM]
    S.si[g, DC] = dc + 1
    S.sf[g, CSUM] = ctx + nc
    return n, demand, ctx
