"""Build the arrays of a continuous-engine run, run the loop, and collect the result."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simsched.engines.continuous import state as st
from simsched.engines.continuous.loop import DONE, PAUSE_BUDGET, PAUSE_EVENTS, PAUSE_STEPS, PAUSE_TS, run_loop
from simsched.engines.continuous.options import ContinuousEngine
from simsched.engines.continuous.result import (COMPLETED, NOT_ARRIVED, REASONS, REJECTED, UNFINISHED,
                                                ContinuousResult, check_invariants)
from simsched.jit import kernel
from simsched.latency import StepTime
from simsched.workloads.requests import RequestTable

TICKS_PER_CALL = 1 << 40


@dataclass(frozen=True)
class Hardware:
    """What the engine needs to know of a replica's GPU."""

    replicas: int
    kv_capacity_tokens: int
    name: str = ""
    memory_gib: float | None = None


def build_params(engine: ContinuousEngine, step: StepTime, hw: Hardware, max_seqs_cap: int | None,
                 hash_block_tokens: int, unit_steps: bool = False, record_events: bool = False) -> st.Params:
    res = engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, max_seqs_cap)
    cpu = step.cpu_s if engine.step_cpu_s is None else engine.step_cpu_s
    max_blocks = min(-(-engine.max_model_len // engine.block_size), res.num_gpu_blocks)
    return st.Params(
        max_batched=int(res.max_num_batched_tokens), max_seqs=int(res.max_num_seqs),
        block_size=int(engine.block_size), max_model_len=int(engine.max_model_len),
        lpt=int(engine.long_prefill_token_threshold), caching=bool(engine.enable_prefix_caching),
        policy=st.POLICY_FCFS if engine.policy == "fcfs" else st.POLICY_PRIORITY,
        async_sched=bool(engine.async_scheduling), gate=bool(engine.full_sequence_gate),
        watermark_blocks=int(engine.watermark * res.num_gpu_blocks), fast_forward=bool(engine.fast_forward),
        unit_steps=bool(unit_steps), record_steps=bool(engine.steps_table), record_events=bool(record_events),
        hash_block_tokens=int(hash_block_tokens), max_blocks=int(max_blocks),
        c0=float(step.c0_s), c_pf=float(step.c_pf_s), c_dec=float(step.c_dec_s), c_ctx=float(step.c_ctx_s),
        c_attn=float(step.c_attn_s), cpu=float(cpu),
        horizon=math.inf if engine.horizon_s is None else float(engine.horizon_s),
        ts_interval=math.inf if unit_steps else float(engine.timeseries_interval_s),
    )


def simulate_continuous(requests: RequestTable, engine: ContinuousEngine, step: StepTime, hw: Hardware,
                        max_seqs_cap: int | None = None, *, unit_steps: bool = False,
                        record_events: bool = False, tiebreak: np.ndarray | None = None,
                        progress=None) -> tuple[ContinuousResult, dict[str, np.ndarray] | None]:
    """Run one simulation. ``unit_steps``: step-conformance mode (arrival times are step
    indices, every step lasts 1). ``record_events``: also return the per-step event log
    (scheduled, preempted and finished requests). ``tiebreak``: rank of each request's id
    for the priority order (default: row order). ``progress(done, total)`` is called
    between loop slices."""
    n = len(requests)
    G = int(hw.replicas)
    hb = engine.hash_block_tokens or requests.hash_block_tokens or engine.block_size
    P = build_params(engine, step, hw, max_seqs_cap, hb, unit_steps, record_events)
    blocks = engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, max_seqs_cap).num_gpu_blocks
    if requests.hash_offsets is not None:
        hash_off, hash_val = requests.hash_offsets, requests.hash_values
    else:
        hash_off, hash_val = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    Q = st.Reqs(
        arrival=requests.arrival, prompt=requests.prompt, max_tokens=requests.output,
        priority=requests.priority if requests.priority is not None else np.zeros(n, dtype=np.int64),
        tiebreak=np.arange(n, dtype=np.int64) if tiebreak is None else np.asarray(tiebreak, dtype=np.int64),
        replica=np.arange(n, dtype=np.int64) % G, hash_off=hash_off, hash_val=hash_val,
    )
    R = st.new_rstate(n)
    S = st.new_sched(Q.replica, G, P.max_seqs, P.policy, P.block_size)
    K = st.new_pool(np.full(G, blocks, dtype=np.int64), P.max_seqs, P.max_blocks)
    span = float(requests.arrival[-1] - requests.arrival[0]) if n else 0.0
    ts_cap = G * (int(span / P.ts_interval) + 64) if math.isfinite(P.ts_interval) else 0
    L = st.new_log(ts_cap, 1024 if P.record_steps else 0, 4096 if record_events else 0)
    L.ts_next[0] = (float(requests.arrival[0]) if n else 0.0) if math.isfinite(P.ts_interval) else math.inf
    if n and math.isfinite(P.ts_interval):
        L.ts_next[0] = math.floor(L.ts_next[0] / P.ts_interval) * P.ts_interval
    loop = kernel(run_loop, n)
    per_call = TICKS_PER_CALL if progress is None else max(1000, 4 * n // 100)
    while True:
        code = loop(P, Q, R, S, K, L, per_call)
        if code == DONE:
            break
        if code == PAUSE_BUDGET:
            if progress is not None:
                progress(int(L.counters[st.C_ARRIVAL_PTR]), n)
            continue
        L = st.grow_log(L, code == PAUSE_TS, code == PAUSE_STEPS, code == PAUSE_EVENTS)
    check_blocks(K, R)
    res = collect(requests, engine, P, R, S, K, L, G, blocks)
    events = None
    if record_events:
        k = int(L.counters[st.C_EVENTS])
        events = {"step": L.ev_step[:k].copy(), "kind": L.ev_kind[:k].copy(), "id": L.ev_id[:k].copy(),
                  "n": L.ev_n[:k].copy()}
    return res, events


def check_blocks(K: st.Pool, R: st.RState) -> None:
    """Block conservation (I2): on every replica, free blocks + referenced blocks + the null
    block = all blocks; each block's reference count equals the block tables holding it; the
    free queue holds exactly the unreferenced blocks, each once."""
    total = len(K.ref)
    held = np.zeros(total, dtype=np.int64)
    rows = R.row[R.row >= 0]
    for row in rows:
        np.add.at(held, K.tbl[row, :K.row_n[row]], 1)
    if not np.array_equal(held, K.ref):
        raise AssertionError("block conservation violated: reference counts differ from block tables")
    for g in range(len(K.nblk)):
        lo, hi = int(K.boff[g]), int(K.boff[g] + K.nblk[g])
        seen = np.zeros(total, dtype=bool)
        b = int(K.nxt[total + 2 * g])
        count = 0
        while b != total + 2 * g + 1:
            if seen[b] or not lo < b < hi or K.ref[b] != 0:
                raise AssertionError(f"block conservation violated: free queue of replica {g} is corrupt")
            seen[b] = True
            count += 1
            b = int(K.nxt[b])
        refd = int(np.count_nonzero(K.ref[lo:hi]))
        if count != K.n_free[g] or count + refd + 1 != K.nblk[g]:
            raise AssertionError(f"block conservation violated on replica {g}: free {count}, "
                                 f"counted {int(K.n_free[g])}, referenced {refd}, total {int(K.nblk[g])}")


def collect(requests: RequestTable, engine: ContinuousEngine, P: st.Params, R: st.RState, S: st.Sched,
            K: st.Pool, L: st.Log, G: int, blocks: int) -> ContinuousResult:
    n = len(requests)
    status = np.full(n, UNFINISHED, dtype=np.int8)
    reason = np.zeros(n, dtype=np.int8)
    status[R.status == st.FINISHED] = COMPLETED
    rej = R.status == st.REJECTED
    status[rej] = REJECTED
    reason[rej] = R.reason[rej]   # R_KV, R_MAX_LEN, R_EMPTY are REASONS indices 1..3
    waiting = (R.status == st.WAITING) | (R.status == st.PREEMPTED)
    reason[waiting] = REASONS.index("waiting_at_horizon")
    reason[R.status == st.RUNNING] = REASONS.index("running_at_horizon")
    na = R.status == st.NOT_ARRIVED
    status[na] = NOT_ARRIVED
    reason[na] = REASONS.index("after_horizon")
    if math.isfinite(P.horizon):
        end = P.horizon
    else:
        times = np.concatenate((requests.arrival[:1], R.t_last_tok[np.isfinite(R.t_last_tok)]))
        end = float(times.max()) if len(times) else 0.0
    done = status == COMPLETED
    finish = np.where(done, R.t_last_tok, np.nan)
    k = int(L.counters[st.C_TS])
    ts = {"time": L.ts_t[:k].copy(), "replica": L.ts_g[:k].astype(np.int32), "running": L.ts_run[:k].copy(),
          "waiting": L.ts_wait[:k].copy(), "kv_blocks_used": L.ts_kv[:k].copy()}
    steps = None
    if P.record_steps:
        k = int(L.counters[st.C_STEPS])
        steps = {"replica": L.st_g[:k].astype(np.int32), "time": L.st_t[:k].copy(),
                 "duration": L.st_dur[:k].copy(), "scheduled": L.st_nsched[:k].copy(),
                 "prefill_tokens": L.st_pf[:k].copy(), "decode_seqs": L.st_dec[:k].copy(),
                 "context_tokens": L.st_ctx[:k].copy(), "preempted": L.st_pre[:k].copy(),
                 "admitted": L.st_adm[:k].copy(), "free_blocks": L.st_free[:k].copy(),
                 "running": L.st_run[:k].copy(), "waiting": L.st_wait[:k].copy()}
    c = L.counters
    counters = {"ticks": int(c[st.C_TICKS]), "jumps": int(c[st.C_JUMPS]), "jumped_steps": int(c[st.C_JUMPED_STEPS]),
                "steps": int(S.steps.sum())}
    res = ContinuousResult(
        requests=requests, status=status, reason=reason, replica=(np.arange(n) % G).astype(np.int32),
        first_scheduled=R.t_first_sched.copy(), first_token=R.t_first_tok.copy(), finish=finish,
        itl_max=np.where(R.n_out > 1, R.itl_max, np.nan), output_emitted=R.n_out.copy(),
        preemptions=R.n_preempt.copy(), prefix_hit_tokens=R.hit_tokens.copy(),
        timeseries=ts, steps=steps, itl_hist=L.itl_hist.copy(), itl_sum=float(L.itl_sum[0]),
        itl_count=float(L.itl_sum[1]), counters=counters, num_replicas=G, num_gpu_blocks=blocks,
        end_time=end, settings={"max_num_batched_tokens": P.max_batched, "max_num_seqs": P.max_seqs,
                                "num_gpu_blocks": blocks, "block_size": P.block_size,
                                "async_scheduling": P.async_sched, "cpu_s": P.cpu},
    )
    check_invariants(res)
    return res
