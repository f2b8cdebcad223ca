"""The continuous engine's state, as plain arrays (STYLE "state as plain arrays").

Six bundles, each a namedtuple of a few numpy arrays (``Params`` holds scalars), so the same
functions run as plain Python on small runs and compiled by numba on large ones. Related
integers share one 2-D array whose columns are named by the constants below (``R.ri[i,
COMPUTED]``): a compiled call pays a reference-count update per array it is passed, so
the bundles are kept to a few arrays each.

- ``Params``  the settings and the step-time coefficients (scalars, read-only);
- ``Reqs``    per request, read-only: prompt, max tokens, priority, arrival rank, replica,
              arrival time, hash ids;
- ``RState``  per request, mutable: vLLM's ``Request`` counters (``num_computed_tokens``,
              output tokens, async placeholders, in-flight and stale tokens) and the times the
              metrics need;
- ``Sched``   per replica: the RUNNING list, the WAITING queue, the two plans a step can have
              in flight (vLLM's batch queue), the clock;
- ``Pool``    per replica: the KV block pool (free queue, prefix-cache hash table, block tables);
- ``Log``     what is recorded: time series, steps, step events, inter-token-latency histogram.

A request index is its row in the workload (arrival order). Replica ``g``'s blocks are the
global block ids ``boff .. boff + nblk - 1``; the first of them is vLLM's null block. Row
``NB + 2g`` and ``NB + 2g + 1`` of ``Pool.kb`` (NB = all blocks) are the head and tail
sentinels of replica g's free queue.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

# Request status (vLLM RequestStatus, plus the simulator's own outcomes).
NOT_ARRIVED, WAITING, RUNNING, PREEMPTED, FINISHED, REJECTED = 0, 1, 2, 3, 4, 5
# WAITING-queue policies: vLLM's two, then the simulator's (``policies``): K bins on predicted
# output (a ring per bin) and SGLang's longest prefix match (a ring sorted before each pass).
POLICY_FCFS, POLICY_PRIORITY, POLICY_BINS, POLICY_LPM = 0, 1, 2, 3
LPM_MAX = 128                         # SGLang sorts by prefix match only up to this queue length
# Rejection reasons (indices into result.REASONS).
R_KV, R_MAX_LEN, R_EMPTY = 1, 2, 3

# Reqs.qi columns. MAX_TOKENS is what the request can emit: min(output, max_model_len - prompt)
# (vLLM's check_stop); ORDER ranks requests as they arrived (vLLM's arrival_time order).
# PRIORITY is the priority heap's key (vLLM's priority, or SJF's aged prediction); PRED the
# predicted output length and BIN the multi-bin queue (``policies``).
PROMPT, MAX_TOKENS, PRIORITY, ORDER, REPLICA, PRED, BIN = range(7)
# RState.ri columns (vLLM Request fields: num_computed_tokens, num_output_tokens,
# num_output_placeholders, num_in_flight_tokens, num_stale_output_tokens, num_preemptions).
STATUS, COMPUTED, N_OUT, PLACEHOLDERS, IN_FLIGHT, STALE, N_PREEMPT, ROW, HIT_TOKENS, REASON = range(10)
# ... and the decode cohort's (lazy_decode): membership, the cohort schedule count at joining,
# the admission sequence number (running-list order), the position in its crossing bucket,
# the cohort schedule count before which it must leave.
COHORT, D0, SEQ, BK_POS, EXIT_D = range(10, 15)
# ROUTED_TOK: what the router counts for the request while it is outstanding (routing.py).
ROUTED_TOK = 15
N_RI = 16
# RState.rf columns.
T_FIRST_SCHED, T_FIRST_TOKEN, T_LAST_TOKEN, ITL_MAX = range(4)
# Sched.si columns (per replica).
# OUT_TOK: the routed tokens of the replica's unfinished requests (the least_tokens router).
RUN_LEN, WQ_OFF, WQ_CAP, WQ_HEAD, WQ_LEN, REP_NEXT, REP_END, P_HEAD, P_COUNT, STEPS, P_LEN = range(11)
# P_LEN, P_LEN + 1: the two plans' lengths; then the decode cohort (lazy_decode): per plan slot
# its cohort step number (0: none) and the members it still holds implicitly; the cohort's size,
# schedules and updates so far; the active (non-member) running list's length; the next
# admission sequence number; the exit heap's and the gap deque's extent.
PC_NUM, PC_CNT = 13, 15
N_C, DC, UC, ACT_LEN, SEQ_NEXT, HP_LEN, DQ_LEN = range(17, 24)
COOL = 24                             # steps left before decoders may join again (lazy_decode)
OUT_TOK = 25                          # the router's outstanding tokens on the replica (routing.py)
N_SI = 26
# Sched.sf columns (per replica): the next tick, then per plan slot (PLAN_W columns each) the
# step's prefill tokens, decode sequences, context tokens, attention term, GPU time, and the
# time it was scheduled.
TICK, PLAN_F = 0, 1
PF, DEC, CTX, ATTN, GPU, T_SCHED = range(6)
PLAN_W = 6
# ... then the cohort's Σ(computed + 1) over its members and the time of its last update.
CSUM, T_CLAST = PLAN_F + 2 * PLAN_W, PLAN_F + 2 * PLAN_W + 1
N_SF = PLAN_F + 2 * PLAN_W + 2
# Sched.ctl columns (per replica, Pang's controllers, ``controller``): the sums of prompts and
# predicted outputs of arrived requests and of true outputs of finished ones (Algorithm 1's
# moments), their counts, the last step's batch and length (Algorithm 2's observation).
SP, SP2, SQ, SQ2, SO, SO2, N_ARR, N_DONE, LAST_B, LAST_DUR = range(10)
N_CTL = 10
# Sched.plan[g, slot, field, k].
IDS, NTOK, PROD = range(3)
# Pool.kb columns (per block, and the sentinels).
# INTAB: the block's hash is in the prefix-cache map (see block_pool.cache_blocks).
NXT, PRV, REF, BHASH, INTAB = range(5)
# Pool.ki columns (per replica).
BOFF, NBLK, N_FREE, HT_OFF, HT_MASK, ROW_TOP = range(6)
# Pool.rows columns (per block-table row).
ROW_N, ROW_CACHED, ROW_HASH = range(3)
# Pool.scratch rows.
HITS, TMP_A, TMP_B = range(3)

# Log.counters.
C_ARRIVAL_PTR, C_TICKS, C_JUMPS, C_JUMPED_STEPS, C_TS, C_STEPS, C_EVENTS, C_COHORT_STEPS, C_REQ_STEPS, \
    C_LAZY_REQ_STEPS = range(10)
N_COUNTERS = 10
# Log.lf: the next time-series sample, Σ ITL, number of ITLs.
LF_TS_NEXT, LF_ITL_SUM, LF_ITL_N = range(3)
# Log.ts columns, Log.steps columns, Log.ev columns.
TS_COLUMNS = ("time", "replica", "running", "waiting", "kv_blocks_used")
STEP_COLUMNS = ("replica", "time", "duration", "scheduled", "prefill_tokens", "decode_seqs",
                "context_tokens", "preempted", "admitted", "free_blocks", "running", "waiting")
EV_STEP_COL, EV_KIND, EV_ID, EV_N = range(4)
# Event kinds, each labelled with its step (the schedule() count, or in step-conformance mode
# the engine iteration): a scheduled (id, tokens) pair, a preemption, a prefix hit (id, tokens),
# a finish (labelled with the step of the batch whose update finished it), the end of a
# schedule() (n = free blocks after it), the end of an update (n = free blocks after it), and
# the running (id) and waiting (n) counts after a schedule() or an update.
(EV_SCHEDULED, EV_PREEMPTED, EV_HIT, EV_FINISHED, EV_STEP, EV_UPDATE, EV_COUNTS_SCHED,
 EV_COUNTS_UPDATE) = range(8)

# Inter-token-latency histogram: bin 0 holds gaps <= 1 µs; above, each octave has
# ITL_PER_OCTAVE bins linear in the mantissa (bin width < 0.4% of the gap), up to 2**37 µs.
ITL_LO, ITL_OCTAVES, ITL_PER_OCTAVE = 1e-6, 37, 256
ITL_BINS = ITL_OCTAVES * ITL_PER_OCTAVE + 2   # + underflow and overflow bins

Params = namedtuple("Params", [
    "max_batched",        # max_num_batched_tokens (= max_num_scheduled_tokens: no spec decode)
    "max_seqs",           # max_num_seqs
    "block_size",
    "max_model_len",
    "lpt",                # long_prefill_token_threshold (0: off)
    "caching",            # enable_prefix_caching
    "policy",             # POLICY_FCFS | POLICY_PRIORITY
    "async_sched",        # async_scheduling: two steps in flight
    "gate",               # full_sequence_gate (scheduler_reserve_full_isl)
    "watermark_blocks",   # int(watermark * num_gpu_blocks)
    "fast_forward",
    "lazy",               # the decode cohort (lazy_decode) is on
    "unit_steps",         # conformance mode: every step lasts 1 (time = step index)
    "record_steps",       # steps table
    "record_events",      # step event log (conformance)
    "hash_block_tokens",  # tokens per workload hash id
    "c0", "c_pf", "c_dec", "c_ctx", "c_attn", "cpu",   # step time (StepTime) and CPU per step
    "horizon",            # inf: none
    "route_bound",        # 0: the router reads no state (round robin): a jump stops at the replica's
                          # own next arrival; 1: it reads request counts: a jump stops at any next
                          # arrival where it would stop at its own; 2: it reads the KV pool: a jump
                          # always stops at the next arrival
    "ts_interval",        # time-series sampling period (inf: off)
    "k_bins",             # POLICY_BINS: number of queues
    "bin_rule",           # POLICY_BINS: scheduler.BIN_SELECTIONS index
    "ctl_on",             # Pang's controllers cap the running batch (``controller``)
    "ctl",                # their batchers.ControllerParams
])

Reqs = namedtuple("Reqs", ["qi", "arrival", "hash_off", "hash_val"])
RState = namedtuple("RState", ["ri", "rf"])
Sched = namedtuple("Sched", ["si", "sf", "run", "plan", "wq", "rep_reqs", "scratch", "ctl", "sla",
                             "act", "bk", "bk_len", "hp", "jn", "jn_len", "dq_u", "dq_g"])
Pool = namedtuple("Pool", ["kb", "ki", "ht", "tbl", "rows", "row_stack", "scratch"])
Log = namedtuple("Log", ["counters", "lf", "ts", "steps", "ev", "itl_hist"])


def new_reqs(arrival, prompt, max_tokens, priority, order, replica, hash_off, hash_val,
             predicted=None, bins=None) -> Reqs:
    """``predicted`` defaults to the true output (nothing reads it under vLLM's policies)."""
    predicted = max_tokens if predicted is None else predicted
    bins = np.zeros(len(arrival), dtype=np.int64) if bins is None else bins
    qi = np.stack([np.asarray(x, dtype=np.int64) for x in (prompt, max_tokens, priority, order, replica,
                                                           predicted, bins)],
                  axis=1) if len(arrival) else np.zeros((0, 7), dtype=np.int64)
    return Reqs(qi=np.ascontiguousarray(qi), arrival=np.ascontiguousarray(arrival, dtype=np.float64),
                hash_off=np.ascontiguousarray(hash_off, dtype=np.int64),
                hash_val=np.ascontiguousarray(hash_val, dtype=np.int64))


def new_rstate(n: int) -> RState:
    ri = np.zeros((n, N_RI), dtype=np.int64)
    ri[:, STATUS] = NOT_ARRIVED
    ri[:, ROW] = -1
    ri[:, HIT_TOKENS] = -1
    rf = np.full((n, 4), np.nan)
    rf[:, ITL_MAX] = 0.0
    return RState(ri=ri, rf=rf)


def scratch_layout(max_seqs: int, block_size: int) -> tuple[int, int, int, int]:
    """Offsets in ``Sched.scratch``: skipped ids, fast-forward phases, order, bucket starts
    (the last 2·LPM_MAX entries are ``waiting_queue.lpm_sort``'s)."""
    S = max_seqs
    return 0, S + 1, 2 * S + 1, 3 * S + 1


def new_sched(replica: np.ndarray, num_replicas: int, max_seqs: int, policy: int, block_size: int,
              k_bins: int = 1, sla=None, routed_live: bool = False) -> Sched:
    """Queues sized for every request a replica can receive (its ring or heap never grows).
    Under POLICY_BINS a replica's slice is a header (K heads, K lengths, the round-robin
    pointer) and K rings of ``WQ_CAP`` each. ``sla``: the controllers' ``batchers.SlaState``
    (one row per replica), a 1-row dummy when they are off. ``routed_live``: the router picks
    replicas at arrival, so every queue can take every request and no replica knows its coming
    arrivals (empty ``rep_reqs`` ranges)."""
    G, S = num_replicas, max_seqs
    counts = np.bincount(replica, minlength=G).astype(np.int64)
    if routed_live:
        counts = np.full(G, len(replica), dtype=np.int64)
    if policy == POLICY_PRIORITY:
        cap = np.maximum(counts, 1)
        size = cap
    else:                       # ring buffers: capacity a power of two
        cap = np.array([1 << int(max(c, 1)).bit_length() for c in counts], dtype=np.int64)
        size = cap * k_bins + 2 * k_bins + 1 if policy == POLICY_BINS else cap
    si = np.zeros((G, N_SI), dtype=np.int64)
    si[:, WQ_OFF] = np.concatenate(([0], np.cumsum(size)[:-1]))
    si[:, WQ_CAP] = cap
    rep_off = np.concatenate(([0], np.cumsum(counts)))
    si[:, REP_NEXT] = rep_off[:-1]
    si[:, REP_END] = rep_off[1:]
    if routed_live:
        si[:, REP_NEXT] = 0
        si[:, REP_END] = 0
    sf = np.zeros((G, N_SF))
    sf[:, TICK] = np.inf
    return Sched(si=si, sf=sf, run=np.zeros((G, S), dtype=np.int64),
                 plan=np.zeros((G, 2, 3, S), dtype=np.int64), wq=np.zeros(int(size.sum()), dtype=np.int64),
                 rep_reqs=(np.zeros(0, dtype=np.int64) if routed_live
                           else np.argsort(replica, kind="stable").astype(np.int64)),
                 scratch=np.zeros(3 * S + block_size + 2 + 2 * LPM_MAX, dtype=np.int64),
                 ctl=np.zeros((G, N_CTL)), sla=sla,
                 act=np.zeros((G, S), dtype=np.int64), bk=np.zeros((G, block_size, S), dtype=np.int64),
                 bk_len=np.zeros((G, block_size), dtype=np.int64), hp=np.zeros((G, 4 * S + 4, 2), dtype=np.int64),
                 jn=np.zeros((G, 3, S), dtype=np.int64), jn_len=np.zeros((G, 3), dtype=np.int64),
                 dq_u=np.zeros((G, DQ_START), dtype=np.int64), dq_g=np.zeros((G, DQ_START)))


DQ_START = 256


def grow_deque(S: Sched) -> Sched:
    """A copy of ``S`` with the cohort's gap deques twice as long (the loop pauses when one is
    nearly full)."""
    G, C = S.dq_u.shape
    dq_u = np.zeros((G, 2 * C), dtype=np.int64)
    dq_g = np.zeros((G, 2 * C))
    dq_u[:, :C] = S.dq_u
    dq_g[:, :C] = S.dq_g
    return S._replace(dq_u=dq_u, dq_g=dq_g)


def new_pool(blocks_per_replica: np.ndarray, max_seqs: int, max_blocks: int) -> Pool:
    """Every replica's free queue holds its blocks 1..n-1 in id order (block 0 is the null
    block), as ``FreeKVCacheBlockQueue`` starts."""
    G = len(blocks_per_replica)
    nblk = np.asarray(blocks_per_replica, dtype=np.int64)
    total = int(nblk.sum())
    boff = np.concatenate(([0], np.cumsum(nblk)[:-1])).astype(np.int64)
    kb = np.zeros((total + 2 * G, 5), dtype=np.int64)
    kb[:, NXT] = -1
    kb[:, PRV] = -1
    for g in range(G):
        head, tail = total + 2 * g, total + 2 * g + 1
        chain = np.concatenate(([head], np.arange(boff[g] + 1, boff[g] + nblk[g]), [tail])).astype(np.int64)
        kb[chain[:-1], NXT] = chain[1:]
        kb[chain[1:], PRV] = chain[:-1]
    ht_cap = np.array([1 << int(2 * max(n, 2)).bit_length() for n in nblk], dtype=np.int64)
    ki = np.zeros((G, 6), dtype=np.int64)
    ki[:, BOFF] = boff
    ki[:, NBLK] = nblk
    ki[:, N_FREE] = nblk - 1
    ki[:, HT_OFF] = np.concatenate(([0], np.cumsum(ht_cap)[:-1]))
    ki[:, HT_MASK] = ht_cap - 1
    ki[:, ROW_TOP] = max_seqs
    rows = G * max_seqs
    return Pool(kb=kb, ki=ki, ht=np.zeros((int(ht_cap.sum()), 2), dtype=np.int64),
                tbl=np.zeros((rows, max_blocks), dtype=np.int64), rows=np.zeros((rows, 3), dtype=np.int64),
                row_stack=np.array([[g * max_seqs + s for s in range(max_seqs - 1, -1, -1)] for g in range(G)],
                                   dtype=np.int64).reshape(G, max_seqs),
                scratch=np.zeros((3, max_blocks), dtype=np.int64))


def new_log(ts_cap: int, st_cap: int, ev_cap: int) -> Log:
    return Log(counters=np.zeros(N_COUNTERS, dtype=np.int64), lf=np.zeros(3),
               ts=np.zeros((ts_cap, len(TS_COLUMNS))), steps=np.zeros((st_cap, len(STEP_COLUMNS))),
               ev=np.zeros((ev_cap, 4), dtype=np.int64), itl_hist=np.zeros(ITL_BINS))


def grow_log(log: Log, ts: bool, st: bool, ev: bool) -> Log:
    """A copy of ``log`` with the full buffers doubled (the loop pauses when one fills)."""
    def grow(a: np.ndarray) -> np.ndarray:
        out = np.zeros((2 * len(a) + 64,) + a.shape[1:], dtype=a.dtype)
        out[:len(a)] = a
        return out

    return log._replace(ts=grow(log.ts) if ts else log.ts, steps=grow(log.steps) if st else log.steps,
                        ev=grow(log.ev) if ev else log.ev)
