"""Build the arrays of a continuous-engine run, run the loop, and collect the result."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.engines.continuous import state as st
from simsched.engines.continuous.fleet import Fleet, PoolSpec, relative_speeds
from simsched.engines.continuous.lazy_decode import leave_all
from simsched.engines.continuous.loop import (DONE, PAUSE_BUDGET, PAUSE_DEQUE, PAUSE_EVENTS, PAUSE_STEPS, PAUSE_TS,
                                             run_loop)
from simsched.engines.continuous.options import ContinuousEngine
from simsched.engines.continuous.policies import PolicySetup, check_policy, max_seqs_cap
from simsched.engines.continuous.routing import ROUND_ROBIN_ROUTER, Router, check_books, new_router
from simsched.engines.continuous.step_time import as_step_time
from simsched.engines.continuous.result import (COMPLETED, NOT_ARRIVED, REASONS, REJECTED, UNFINISHED,
                                                ContinuousResult, check_invariants)
from simsched.jit import kernel, quiet_compile
from simsched.latency import StepTime
from simsched.workloads.requests import RequestTable

TICKS_PER_CALL = 1 << 40


@dataclass(frozen=True)
class Hardware:
    """What the engine needs to know of the replicas' GPUs."""

    replicas: int
    kv_capacity_tokens: int
    name: str = ""
    memory_gib: float | None = None
    pools: tuple[PoolSpec, ...] = ()   # a heterogeneous fleet (``fleet``); empty: one pool of the above


def build_params(engine: ContinuousEngine, step: StepTime, hw: Hardware, max_seqs_cap: int | None,
                 hash_block_tokens: int, unit_steps: bool = False, record_events: bool = False,
                 policy: PolicySetup | None = None, router: Router = ROUND_ROBIN_ROUTER) -> st.Params:
    res = engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, max_seqs_cap)
    cpu = step.cpu_s if engine.step_cpu_s is None else engine.step_cpu_s
    if policy is None:
        code = st.POLICY_FCFS if engine.policy == "fcfs" else st.POLICY_PRIORITY
        policy = PolicySetup(engine.policy, code, np.zeros(0, dtype=np.int64))
    ctl_on = policy.controller is not None
    return st.Params(
        max_batched=int(res.max_num_batched_tokens), max_seqs=int(res.max_num_seqs),
        block_size=int(engine.block_size), max_model_len=int(engine.max_model_len),
        lpt=int(engine.long_prefill_token_threshold), caching=bool(engine.enable_prefix_caching),
        policy=int(policy.code),
        async_sched=bool(engine.async_scheduling), gate=bool(engine.full_sequence_gate),
        watermark_blocks=int(engine.watermark * res.num_gpu_blocks),
        fast_forward=bool(engine.fast_forward) and not ctl_on,   # the controllers watch every step
        lazy=bool(engine.fast_forward and not record_events) and not ctl_on,
        unit_steps=bool(unit_steps), record_steps=bool(engine.steps_table), record_events=bool(record_events),
        hash_block_tokens=int(hash_block_tokens),
        c0=float(step.c0_s), c_pf=float(step.c_pf_s), c_dec=float(step.c_dec_s), c_ctx=float(step.c_ctx_s),
        c_attn=float(step.c_attn_s), cpu=float(cpu),
        horizon=math.inf if engine.horizon_s is None else float(engine.horizon_s),
        ts_interval=math.inf if unit_steps else float(engine.timeseries_interval_s),
        k_bins=int(policy.k_bins), bin_rule=int(policy.bin_rule), ctl_on=ctl_on, ctl=policy.params_for_engine(),
        route_bound=route_bound(router, bool(engine.steps_table) or record_events),
    )


def route_bound(router: Router, records: bool) -> int:
    """How far fast-forward may carry a replica past arrivals (``state.Params``): a router that
    reads request counts needs 1, one that reads the KV pool 2; so does any state-reading
    router when steps or events are recorded (a jumped step's waiting count would otherwise
    miss arrivals the router sends to the replica during the jump)."""
    if not router.reads_state:
        return 0
    return 2 if router.reads_pool or records else 1


def simulate_continuous(requests: RequestTable, engine: ContinuousEngine, step: StepTime, hw: Hardware,
                        max_seqs_cap: int | None = None, *, unit_steps: bool = False,
                        record_events: bool = False, serve_max_tokens: bool = True,
                        progress=None, policy: PolicySetup | None = None, router: Router = ROUND_ROBIN_ROUTER,
                        predicted: np.ndarray | None = None) -> tuple[ContinuousResult, dict[str, np.ndarray] | None]:
    """Run one simulation. ``unit_steps``: step-conformance mode (arrival times are engine
    iterations, every step lasts 1). ``record_events``: also return the per-step event log
    (see ``state.EV_*``). ``serve_max_tokens``: a request's max_tokens is capped at
    ``max_model_len - prompt`` before it reaches the engine, as ``vllm serve`` does
    (``get_max_tokens``); off, the engine core stops it at ``max_model_len`` itself (the
    goldens drive the engine core directly). ``progress(done, total)`` is called between
    loop slices. ``router`` routes arrivals (``routing``); ``predicted``: the predicted output
    length of each request, which some routers read (never the true one)."""
    n = len(requests)
    hb = engine.hash_block_tokens or requests.hash_block_tokens or engine.block_size
    pools = hw.pools or (PoolSpec(hw.name, hw, step),)
    params = tuple(build_params(engine, p.step, p.hw, max_seqs_cap, hb, unit_steps, record_events, policy, router)
                   for p in pools)
    P = params[0]                      # the settings every pool shares come from here
    pool_blocks = [engine.resolved(p.hw.name, p.hw.memory_gib, p.hw.kv_capacity_tokens, max_seqs_cap).num_gpu_blocks
                   for p in pools]
    counts = [int(p.hw.replicas) for p in pools]
    pool_of = np.repeat(np.arange(len(pools), dtype=np.int64), counts)
    G = len(pool_of)
    F = Fleet(pool=pool_of, params=params)
    speed = relative_speeds([p.step for p in pools])[pool_of]
    X = new_router(router, G, predicted, speed, engine.max_model_len)
    blocks = max(pool_blocks)
    max_seqs = max(q.max_seqs for q in params)
    if requests.hash_offsets is not None:
        hash_off, hash_val = requests.hash_offsets, requests.hash_values
    else:
        hash_off, hash_val = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    max_tokens = requests.output
    if serve_max_tokens:
        max_tokens = np.minimum(requests.output, np.maximum(engine.max_model_len - requests.prompt, 1))
    if policy is not None:
        priority = policy.priority
    else:
        priority = requests.priority if requests.priority is not None else np.zeros(n, dtype=np.int64)
    Q = st.new_reqs(
        requests.arrival, requests.prompt, max_tokens, priority,
        np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) % G, hash_off, hash_val,
        None if policy is None else policy.predicted, None if policy is None else policy.bins)
    R = st.new_rstate(n)
    sla = (policy or PolicySetup("", 0, priority)).sla(G)
    S = st.new_sched(Q.qi[:, st.REPLICA], G, max_seqs, P.policy, P.block_size, P.k_bins, sla, router.reads_state)
    if router.reads_state:
        Q.qi[:, st.REPLICA] = -1         # set by the router at arrival (-1: never routed)
    max_blocks = min(-(-engine.max_model_len // engine.block_size), blocks)
    K = st.new_pool(np.repeat(np.array(pool_blocks, dtype=np.int64), counts), max_seqs, max_blocks)
    span = float(requests.arrival[-1] - requests.arrival[0]) if n else 0.0
    ts_cap = G * (int(span / P.ts_interval) + 64) if math.isfinite(P.ts_interval) else 0
    L = st.new_log(ts_cap, 1024 if P.record_steps else 0, 4096 if record_events else 0)
    if n and math.isfinite(P.ts_interval):
        L.lf[st.LF_TS_NEXT] = math.floor(float(requests.arrival[0]) / P.ts_interval) * P.ts_interval
    else:
        L.lf[st.LF_TS_NEXT] = math.inf
    loop = kernel(run_loop, n, nrt=False)
    per_call = TICKS_PER_CALL if progress is None else max(1000, 4 * n // 100)
    if loop is not run_loop:   # load the compiled loop from numba's cache, or compile it (once, minutes)
        from numba import typeof

        from simsched.progress import Phase

        with quiet_compile(), Phase("compiling the continuous engine's loop (once; numba caches it on disk)"):
            loop.compile(tuple(typeof(a) for a in (P, Q, R, S, K, L, X, F, per_call)))
    t0 = time.perf_counter()
    c0 = time.process_time()
    while True:
        with quiet_compile():
            code = loop(P, Q, R, S, K, L, X, F, per_call)
        if code == DONE:
            break
        if code == PAUSE_BUDGET:
            if progress is not None:
                progress(int(L.counters[st.C_ARRIVAL_PTR]), n)
            continue
        if code == PAUSE_DEQUE:
            S = st.grow_deque(S)
            continue
        L = st.grow_log(L, code == PAUSE_TS, code == PAUSE_STEPS, code == PAUSE_EVENTS)
    for g in range(G):      # members of a decode cohort left at a horizon become explicit
        leave_all(params[int(pool_of[g])], Q, R, S, K, g)
    loop_s = time.perf_counter() - t0
    loop_cpu_s = time.process_time() - c0
    check_blocks(K, R)
    check_books(S.si, R.ri, Q.qi[:, st.REPLICA])
    res = collect(requests, engine, P, R, S, L, G, pool_blocks[0], Q.qi[:, st.REPLICA])
    if hw.pools:
        res.pool_names = tuple(p.name for p in pools)
        res.pool_of_replica = pool_of.astype(np.int32)
        res.settings["pools"] = {p.name: {"replicas": int(p.hw.replicas), "num_gpu_blocks": int(b),
                                          "max_num_seqs": int(q.max_seqs), "max_num_batched_tokens": int(q.max_batched),
                                          "relative_speed": float(sp)}
                                 for p, b, q, sp in zip(pools, pool_blocks, params,
                                                        relative_speeds([p.step for p in pools]))}
    if policy is not None:
        res.settings["policy"] = policy.name
        if policy.ignored:
            res.settings["policy_ignored"] = policy.ignored
    check_invariants(res, np.minimum(requests.output, np.maximum(engine.max_model_len - requests.prompt, 0)))
    res.counters["loop_ms"] = int(round(loop_s * 1000))
    res.counters["loop_cpu_ms"] = int(round(loop_cpu_s * 1000))
    events = None
    if record_events:
        ev = L.ev[:int(L.counters[st.C_EVENTS])]
        events = {"step": ev[:, 0].copy(), "kind": ev[:, 1].copy(), "id": ev[:, 2].copy(), "n": ev[:, 3].copy()}
    return res, events


def check_blocks(K: st.Pool, R: st.RState) -> None:
    """Block conservation (I2): on every replica, free blocks + referenced blocks + the null
    block = all blocks; each block's reference count equals the block tables holding it; the
    free queue holds exactly the unreferenced blocks, each once."""
    G = len(K.ki)
    total = len(K.kb) - 2 * G
    held = np.zeros(total, dtype=np.int64)
    rows = R.ri[:, st.ROW]
    for row in rows[rows >= 0]:
        np.add.at(held, K.tbl[row, :K.rows[row, st.ROW_N]], 1)
    ref = K.kb[:total, st.REF]
    if not np.array_equal(held, ref):
        raise AssertionError("block conservation violated: reference counts differ from block tables")
    nxt = K.kb[:, st.NXT]
    for g in range(G):
        lo, hi = int(K.ki[g, st.BOFF]), int(K.ki[g, st.BOFF] + K.ki[g, st.NBLK])
        seen = np.zeros(total, dtype=bool)
        b = int(nxt[total + 2 * g])
        count = 0
        while b != total + 2 * g + 1:
            if not lo < b < hi or seen[b] or ref[b] != 0:
                raise AssertionError(f"block conservation violated: free queue of replica {g} is corrupt")
            seen[b] = True
            count += 1
            b = int(nxt[b])
        refd = int(np.count_nonzero(ref[lo:hi]))
        if count != K.ki[g, st.N_FREE] or count + refd + 1 != K.ki[g, st.NBLK]:
            raise AssertionError(f"block conservation violated on replica {g}: free {count}, counted "
                                 f"{int(K.ki[g, st.N_FREE])}, referenced {refd}, total {int(K.ki[g, st.NBLK])}")


def collect(requests: RequestTable, engine: ContinuousEngine, P: st.Params, R: st.RState, S: st.Sched,
            L: st.Log, G: int, blocks: int, replica: np.ndarray) -> ContinuousResult:
    n = len(requests)
    ri, rf = R.ri, R.rf
    status = np.full(n, UNFINISHED, dtype=np.int8)
    reason = np.zeros(n, dtype=np.int8)
    rs = ri[:, st.STATUS]
    status[rs == st.FINISHED] = COMPLETED
    rej = rs == st.REJECTED
    status[rej] = REJECTED
    reason[rej] = ri[rej, st.REASON]   # R_KV, R_MAX_LEN, R_EMPTY are REASONS indices 1..3
    reason[(rs == st.WAITING) | (rs == st.PREEMPTED)] = REASONS.index("waiting_at_horizon")
    reason[rs == st.RUNNING] = REASONS.index("running_at_horizon")
    na = rs == st.NOT_ARRIVED
    status[na] = NOT_ARRIVED
    reason[na] = REASONS.index("after_horizon")
    last = rf[:, st.T_LAST_TOKEN]
    if math.isfinite(P.horizon):
        end = P.horizon
    else:
        times = np.concatenate((requests.arrival[-1:], last[np.isfinite(last)]))
        end = float(times.max()) if len(times) else 0.0
    done = status == COMPLETED
    n_out = ri[:, st.N_OUT].copy()
    k = int(L.counters[st.C_TS])
    ts = {name: L.ts[:k, j].copy() for j, name in enumerate(st.TS_COLUMNS)}
    for name in ("replica", "running", "waiting", "kv_blocks_used"):
        ts[name] = ts[name].astype(np.int32 if name == "replica" else np.int64)
    steps = None
    if P.record_steps:
        k = int(L.counters[st.C_STEPS])
        steps = {name: L.steps[:k, j].copy() for j, name in enumerate(st.STEP_COLUMNS)}
        for name in st.STEP_COLUMNS:
            if name not in ("time", "duration"):
                steps[name] = steps[name].astype(np.int32 if name == "replica" else np.int64)
    c = L.counters
    counters = {"ticks": int(c[st.C_TICKS]), "jumps": int(c[st.C_JUMPS]), "jumped_steps": int(c[st.C_JUMPED_STEPS]),
                "steps": int(S.si[:, st.STEPS].sum()), "cohort_steps": int(c[st.C_COHORT_STEPS]),
                "request_steps": int(c[st.C_REQ_STEPS]), "lazy_request_steps": int(c[st.C_LAZY_REQ_STEPS])}
    res = ContinuousResult(
        requests=requests, status=status, reason=reason, replica=replica.astype(np.int32),
        first_scheduled=rf[:, st.T_FIRST_SCHED].copy(), first_token=rf[:, st.T_FIRST_TOKEN].copy(),
        finish=np.where(done, last, np.nan), itl_max=np.where(n_out > 1, rf[:, st.ITL_MAX], np.nan),
        output_emitted=n_out, preemptions=ri[:, st.N_PREEMPT].copy(), prefix_hit_tokens=ri[:, st.HIT_TOKENS].copy(),
        timeseries=ts, steps=steps, itl_hist=L.itl_hist.copy(), itl_sum=float(L.lf[st.LF_ITL_SUM]),
        itl_count=float(L.lf[st.LF_ITL_N]), counters=counters, num_replicas=G, num_gpu_blocks=blocks,
        end_time=end, settings={"max_num_batched_tokens": P.max_batched, "max_num_seqs": P.max_seqs,
                                "num_gpu_blocks": blocks, "block_size": P.block_size,
                                "async_scheduling": P.async_sched, "cpu_s": P.cpu},
    )
    return res


def usable_kv_tokens(engine: ContinuousEngine, hw: Hardware, cap: int | None) -> int:
    """One replica's KV capacity in tokens without vLLM's null block (Algorithm 1's η)."""
    blocks = engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, cap).num_gpu_blocks
    return (blocks - 1) * engine.block_size


def prepare(engine: ContinuousEngine, scheduler: Any, latency_model: Any, gpus: Any
            ) -> tuple[StepTime, Hardware, int | None]:
    """What this engine takes from the other groups: the step form of the latency model, the
    replicas' hardware, and a sequence cap from the scheduler group (``policies``: what each
    scheduler means on this engine)."""
    check_policy(engine, scheduler)
    cap = max_seqs_cap(scheduler)
    step = as_step_time(latency_model)
    memory = getattr(gpus, "memory_gib", None)
    if memory is None:
        from simsched.roofline import GPUS

        spec = GPUS.get(str(gpus.name).lower())
        memory = spec.memory_gib if spec is not None else None
    if getattr(gpus, "pools", None):
        pools = tuple(pool_spec(k, pool, latency_model, step, engine, cap) for k, pool in enumerate(gpus.pools))
        hw = Hardware(sum(p.hw.replicas for p in pools), pools[0].hw.kv_capacity_tokens, pools[0].hw.name,
                      pools[0].hw.memory_gib, pools)
        return pools[0].step, hw, cap
    hw = Hardware(int(gpus.count), int(gpus.kv_capacity_tokens), str(gpus.name), memory)
    engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, cap)   # vLLM's start-up checks
    return step, hw, cap


def pool_spec(k: int, pool: dict[str, Any], latency_model: Any, step: StepTime, engine: ContinuousEngine,
              cap: int | None) -> PoolSpec:
    """One pool of ``gpus.pools``: a ``gpu`` preset takes the roofline latency model to that GPU
    (same model, parallelism and efficiencies), giving its step time and, unless the pool sets
    ``kv_capacity_tokens``, its KV capacity; without one the pool uses the latency model as is."""
    from dataclasses import replace

    from simsched.errors import ConfigError
    from simsched.roofline import GPUS, Roofline

    where = f"gpus.pools[{k}]"
    kv = pool["kv_capacity_tokens"]
    memory = pool["memory_gib"]
    name = str(pool["name"])
    if pool["gpu"] is not None:
        gpu = str(pool["gpu"]).lower()
        if not isinstance(latency_model, Roofline):
            raise ConfigError(f"{where}.gpu", "a pool's gpu preset needs latency_model=roofline", pool["gpu"])
        try:
            model = replace(latency_model, gpu=gpu)
        except ConfigError as exc:
            raise ConfigError(f"{where}.gpu", exc.message, pool["gpu"]) from None
        step = model.step_model
        kv = model.kv_capacity_tokens if kv is None else kv
        memory = GPUS[gpu].memory_gib if memory is None else memory
        name = gpu
    hw = Hardware(int(pool["count"]), int(kv), name, memory)
    try:
        engine.resolved(hw.name, hw.memory_gib, hw.kv_capacity_tokens, cap)   # vLLM's start-up checks
    except ConfigError as exc:
        raise ConfigError(where, exc.message, exc.value, exc.allowed) from None
    return PoolSpec(str(pool["name"]), hw, step)
