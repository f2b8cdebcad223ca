"""The continuous engine's state, as plain arrays (STYLE "state as plain arrays").

Six bundles, each a namedtuple of numpy arrays (and, for ``Params``, scalars), so the same
functions run as plain Python on small runs and compiled by numba on large ones:

- ``Params``  the settings and the step-time coefficients (scalars, read-only);
- ``Reqs``    per request, read-only: arrival, prompt, max tokens, priority, replica, hash ids;
- ``RState``  per request, mutable: vLLM's ``Request`` counters (``num_computed_tokens``,
              output tokens, async placeholders, in-flight and stale tokens) and the times
              the metrics need;
- ``Sched``   per replica: the RUNNING list, the WAITING queue, the two plans a step can have
              in flight (vLLM's batch queue), the clock;
- ``Pool``    per replica: the KV block pool (free queue, prefix-cache hash table, block tables);
- ``Log``     what is recorded: time series, steps, step events, inter-token-latency histogram.

A request index is its row in the workload (arrival order). Replica ``g``'s blocks are the
global block ids ``boff[g] .. boff[g] + nblk[g] - 1``; the first of them is vLLM's null block.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

# Request status (vLLM RequestStatus, plus the simulator's own outcomes).
NOT_ARRIVED, WAITING, RUNNING, PREEMPTED, FINISHED, REJECTED = 0, 1, 2, 3, 4, 5
POLICY_FCFS, POLICY_PRIORITY = 0, 1

# Rejection reasons (index into result.REASONS).
R_KV, R_MAX_LEN, R_EMPTY = 1, 2, 3

# Global loop counters (Log.counters).
C_ARRIVAL_PTR, C_TICKS, C_JUMPS, C_JUMPED_STEPS, C_TS, C_STEPS, C_EVENTS, C_DONE, C_ROUTED = range(9)
N_COUNTERS = 9
# Event kinds in the step event log (conformance mode and tests).
EV_SCHEDULED, EV_PREEMPTED, EV_FINISHED, EV_STEP = 0, 1, 2, 3

# Inter-token-latency histogram: log-spaced bins from 1 µs to 100 000 s.
ITL_LO, ITL_DECADES, ITL_PER_DECADE = 1e-6, 11, 1000
ITL_BINS = ITL_DECADES * ITL_PER_DECADE + 2   # + underflow and overflow bins

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
    "unit_steps",         # conformance mode: every step lasts 1 (time = step index)
    "record_steps",       # steps table
    "record_events",      # step event log (conformance)
    "hash_block_tokens",  # tokens per workload hash id
    "max_blocks",         # columns of a block table
    "c0", "c_pf", "c_dec", "c_ctx", "c_attn", "cpu",   # step time (StepTime) and CPU per step
    "horizon",            # inf: none
    "ts_interval",        # time-series sampling period (inf: off)
])

Reqs = namedtuple("Reqs", [
    "arrival", "prompt", "max_tokens", "priority", "tiebreak", "replica",
    "hash_off", "hash_val",   # request i's hash ids: hash_val[hash_off[i]:hash_off[i+1]]
])

RState = namedtuple("RState", [
    "status", "computed", "n_out", "ph", "inflight", "stale", "n_preempt", "row", "hit_tokens",
    "reason", "t_first_sched", "t_first_tok", "t_last_tok", "itl_max",
])

Sched = namedtuple("Sched", [
    "run", "run_len",                                  # RUNNING list per replica (G, S)
    "wq", "wq_off", "wq_cap", "wq_head", "wq_len",     # WAITING queue (ring or heap) per replica
    "rep_reqs", "rep_off", "rep_next",                 # each replica's requests in arrival order
    "p_ids", "p_n", "p_prod", "p_len", "p_gpu", "p_stats",   # plans (G, 2, S): the batch queue
    "p_head", "p_count",                               # oldest pending plan, plans pending
    "tick", "steps",                                   # next tick time, schedule() calls
    "scratch",                                         # per-step scratch (skipped ids)
    "ff_i0", "ff_order", "ff_start",                   # fast-forward scratch
])

Pool = namedtuple("Pool", [
    "nxt", "prv", "ref", "bhash", "boff", "nblk", "n_free",    # blocks and the free queue
    "ht_key", "ht_val", "ht_off", "ht_mask",                   # prefix-cache hash table
    "tbl", "row_n", "row_cached", "row_hash", "row_stack", "row_top",   # block tables
    "hits", "tmp_a", "tmp_b",                                  # scratch of one block-table row
])

Log = namedtuple("Log", [
    "counters",
    "ts_t", "ts_g", "ts_run", "ts_wait", "ts_kv", "ts_next",          # time series
    "st_g", "st_t", "st_dur", "st_nsched", "st_pf", "st_dec", "st_ctx", "st_pre", "st_adm",
    "st_free", "st_run", "st_wait",                                    # steps table
    "ev_step", "ev_kind", "ev_id", "ev_n",                             # step events
    "itl_hist", "itl_sum",                                             # ITL histogram, Σ ITL
])


def new_rstate(n: int) -> RState:
    i8 = lambda v=0: np.full(n, v, dtype=np.int64)  # noqa: E731
    f8 = lambda: np.full(n, np.nan)  # noqa: E731
    return RState(status=i8(NOT_ARRIVED), computed=i8(), n_out=i8(), ph=i8(), inflight=i8(),
                  stale=i8(), n_preempt=i8(), row=i8(-1), hit_tokens=i8(-1), reason=i8(),
                  t_first_sched=f8(), t_first_tok=f8(), t_last_tok=f8(), itl_max=np.zeros(n))


def new_sched(replica: np.ndarray, num_replicas: int, max_seqs: int, policy: int, block_size: int) -> Sched:
    """Queues sized for every request a replica can receive (its ring or heap never grows)."""
    G, S = num_replicas, max_seqs
    counts = np.bincount(replica, minlength=G).astype(np.int64)
    if policy == POLICY_FCFS:   # a ring buffer: capacity a power of two
        cap = np.array([1 << int(max(c, 1)).bit_length() for c in counts], dtype=np.int64)
    else:
        cap = np.maximum(counts, 1)
    wq_off = np.concatenate(([0], np.cumsum(cap)[:-1])).astype(np.int64)
    order = np.argsort(replica, kind="stable").astype(np.int64)
    rep_off = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Sched(
        run=np.zeros((G, S), dtype=np.int64), run_len=np.zeros(G, dtype=np.int64),
        wq=np.zeros(int(cap.sum()), dtype=np.int64), wq_off=wq_off, wq_cap=cap,
        wq_head=np.zeros(G, dtype=np.int64), wq_len=np.zeros(G, dtype=np.int64),
        rep_reqs=order, rep_off=rep_off, rep_next=rep_off[:-1].copy(),
        p_ids=np.zeros((G, 2, S), dtype=np.int64), p_n=np.zeros((G, 2, S), dtype=np.int64),
        p_prod=np.zeros((G, 2, S), dtype=np.int64), p_len=np.zeros((G, 2), dtype=np.int64),
        p_gpu=np.zeros((G, 2)), p_stats=np.zeros((G, 2, 4)),
        p_head=np.zeros(G, dtype=np.int64), p_count=np.zeros(G, dtype=np.int64),
        tick=np.full(G, np.inf), steps=np.zeros(G, dtype=np.int64),
        scratch=np.zeros(max(S, 1) + 1, dtype=np.int64),
        ff_i0=np.zeros(S, dtype=np.int64), ff_order=np.zeros(S, dtype=np.int64),
        ff_start=np.zeros(block_size + 1, dtype=np.int64),
    )


def new_pool(blocks_per_replica: np.ndarray, max_seqs: int, max_blocks: int) -> Pool:
    """Every replica's free queue holds its blocks 1..n-1 in id order (block 0 is the null
    block), as ``FreeKVCacheBlockQueue`` starts."""
    G = len(blocks_per_replica)
    nblk = np.asarray(blocks_per_replica, dtype=np.int64)
    total = int(nblk.sum())
    boff = np.concatenate(([0], np.cumsum(nblk)[:-1])).astype(np.int64)
    nxt = np.full(total + 2 * G, -1, dtype=np.int64)
    prv = np.full(total + 2 * G, -1, dtype=np.int64)
    for g in range(G):
        head, tail = total + 2 * g, total + 2 * g + 1
        ids = np.arange(boff[g] + 1, boff[g] + nblk[g], dtype=np.int64)
        chain = np.concatenate(([head], ids, [tail]))
        nxt[chain[:-1]] = chain[1:]
        prv[chain[1:]] = chain[:-1]
    ht_cap = np.array([1 << int(2 * max(n, 2)).bit_length() for n in nblk], dtype=np.int64)
    ht_off = np.concatenate(([0], np.cumsum(ht_cap)[:-1])).astype(np.int64)
    rows = G * max_seqs
    return Pool(
        nxt=nxt, prv=prv, ref=np.zeros(total, dtype=np.int64), bhash=np.zeros(total, dtype=np.int64),
        boff=boff, nblk=nblk, n_free=nblk - 1,
        ht_key=np.zeros(int(ht_cap.sum()), dtype=np.int64),
        ht_val=np.zeros(int(ht_cap.sum()), dtype=np.int64), ht_off=ht_off, ht_mask=ht_cap - 1,
        tbl=np.zeros((rows, max_blocks), dtype=np.int64), row_n=np.zeros(rows, dtype=np.int64),
        row_cached=np.zeros(rows, dtype=np.int64), row_hash=np.zeros(rows, dtype=np.int64),
        row_stack=np.array([[g * max_seqs + s for s in range(max_seqs - 1, -1, -1)] for g in range(G)],
                           dtype=np.int64).reshape(G, max_seqs),
        row_top=np.full(G, max_seqs, dtype=np.int64),
        hits=np.zeros(max_blocks, dtype=np.int64), tmp_a=np.zeros(max_blocks, dtype=np.int64),
        tmp_b=np.zeros(max_blocks, dtype=np.int64),
    )


def new_log(ts_cap: int, st_cap: int, ev_cap: int) -> Log:
    i8 = lambda c: np.zeros(c, dtype=np.int64)  # noqa: E731
    f8 = lambda c: np.zeros(c)  # noqa: E731
    return Log(
        counters=i8(N_COUNTERS),
        ts_t=f8(ts_cap), ts_g=i8(ts_cap), ts_run=i8(ts_cap), ts_wait=i8(ts_cap), ts_kv=i8(ts_cap),
        ts_next=np.zeros(1),
        st_g=i8(st_cap), st_t=f8(st_cap), st_dur=f8(st_cap), st_nsched=i8(st_cap), st_pf=i8(st_cap),
        st_dec=i8(st_cap), st_ctx=i8(st_cap), st_pre=i8(st_cap), st_adm=i8(st_cap), st_free=i8(st_cap),
        st_run=i8(st_cap), st_wait=i8(st_cap),
        ev_step=i8(ev_cap), ev_kind=i8(ev_cap), ev_id=i8(ev_cap), ev_n=i8(ev_cap),
        itl_hist=f8(ITL_BINS), itl_sum=f8(2),
    )


def grow_log(log: Log, ts: bool, st: bool, ev: bool) -> Log:
    """A copy of ``log`` with the full buffers doubled (the loop pauses when one fills)."""
    def grow(a: np.ndarray) -> np.ndarray:
        out = np.zeros(2 * len(a) + 16, dtype=a.dtype)
        out[:len(a)] = a
        return out

    fields = log._asdict()
    for name in fields:
        if (ts and name.startswith("ts_") and name != "ts_next") or (st and name.startswith("st_")) \
                or (ev and name.startswith("ev_")):
            fields[name] = grow(fields[name])
    return Log(**fields)
