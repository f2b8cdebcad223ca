"""Step-conformance mode: run the engine on a golden trace of vLLM's real scheduler and compare.

A golden (``tests/data/vllm/*.json.gz``, format in ``tests/data/vllm/README.md``) gives the
scheduler settings, the requests with the engine iteration at which each arrives, and what
vLLM 0.33.0 did at every iteration. ``run_golden`` replays the requests through the engine
with no clock: every step lasts exactly 1, so time is the iteration index (``unit_steps``),
and records the same fields from the engine's event log. ``compare`` lists every difference
in the fields the engine must reproduce exactly: each step's scheduled (request, tokens) pairs
in vLLM's order, its preemptions in order, its prefix-cache hits, the free blocks after
``schedule()`` and at the end of the iteration, the requests finished by each update (in
order), and the running and waiting counts.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np

from simsched.engines.continuous import state as st
from simsched.engines.continuous.options import ContinuousEngine
from simsched.engines.continuous.simulate import Hardware, simulate_continuous
from simsched.latency import StepTime
from simsched.workloads.requests import RequestTable

# Any positive step time: in step-conformance mode every step lasts exactly 1.
UNIT_STEP = StepTime(c0_s=1.0)


def golden_requests(doc: dict[str, Any]) -> RequestTable:
    """The golden's requests, arriving at their iteration indices."""
    reqs = doc["requests"]
    n = len(reqs)
    ids = [r["hash_ids"] or [] for r in reqs]
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in ids]))).astype(np.int64)
    values = np.array([h for x in ids for h in x], dtype=np.int64)
    return RequestTable(
        arrival=np.array([r["arrival_step"] for r in reqs], dtype=float),
        prompt=np.array([r["prompt_len"] for r in reqs], dtype=np.int64),
        output=np.array([r["output_len"] for r in reqs], dtype=np.int64),
        priority=np.array([r["priority"] for r in reqs], dtype=np.int64),
        hash_offsets=offsets, hash_values=values,
        hash_block_tokens=int(doc["config"]["block_size"]),
    )


def golden_engine(doc: dict[str, Any], fast_forward: bool = True) -> tuple[ContinuousEngine, Hardware]:
    """The engine settings of a golden (one replica)."""
    cfg = doc["config"]
    for key, default in (("max_num_active_seqs", cfg["max_num_seqs"]), ("watermark", 0.0),
                         ("prefill_schedule_interval", 1), ("long_prefill_token_threshold_adaptive", False),
                         ("num_speculative_tokens", 0), ("num_lookahead_tokens", 0),
                         ("max_num_scheduled_tokens", cfg["max_num_batched_tokens"])):
        if cfg.get(key, default) != default:
            raise ValueError(f"golden setting {key}={cfg[key]!r} is outside the engine's scope")
    engine = ContinuousEngine(
        max_num_batched_tokens=int(cfg["max_num_batched_tokens"]), max_num_seqs=int(cfg["max_num_seqs"]),
        block_size=int(cfg["block_size"]), num_gpu_blocks=int(cfg["num_gpu_blocks"]),
        max_model_len=int(cfg["max_model_len"]),
        long_prefill_token_threshold=int(cfg["long_prefill_token_threshold"]),
        enable_prefix_caching=bool(cfg["enable_prefix_caching"]), policy=str(cfg["policy"]),
        async_scheduling=bool(doc["async_scheduling"]), full_sequence_gate=bool(cfg["scheduler_reserve_full_isl"]),
        watermark=float(cfg["watermark"]), fast_forward=fast_forward, timeseries_interval_s=1.0)
    return engine, Hardware(1, int(cfg["num_gpu_blocks"]) * int(cfg["block_size"]), "golden", None)


def run_golden(doc: dict[str, Any], fast_forward: bool = True) -> dict[str, Any]:
    """Replay a golden's requests; returns the engine's records, keyed by step label."""
    engine, hw = golden_engine(doc, fast_forward)
    res, ev = simulate_continuous(golden_requests(doc), engine, UNIT_STEP, hw, unit_steps=True,
                                  record_events=True, serve_max_tokens=False)
    names = [r["id"] for r in doc["requests"]]
    rec: dict[str, Any] = {"scheduled": defaultdict(list), "preempted": defaultdict(list),
                           "hits": defaultdict(dict), "finished": defaultdict(list), "free_after_schedule": {},
                           "free_after_update": {}, "counts_schedule": {}, "counts_update": {}, "result": res}
    for step, kind, i, n in zip(ev["step"].tolist(), ev["kind"].tolist(), ev["id"].tolist(), ev["n"].tolist()):
        if kind == st.EV_SCHEDULED:
            rec["scheduled"][step].append([names[i], n])
        elif kind == st.EV_PREEMPTED:
            rec["preempted"][step].append(names[i])
        elif kind == st.EV_HIT:
            rec["hits"][step][names[i]] = n
        elif kind == st.EV_FINISHED:
            rec["finished"][step].append(names[i])
        elif kind == st.EV_STEP:
            rec["free_after_schedule"][step] = n
        elif kind == st.EV_UPDATE:
            rec["free_after_update"][step] = n
        elif kind == st.EV_COUNTS_SCHED:
            rec["counts_schedule"][step] = (i, n)
        elif kind == st.EV_COUNTS_UPDATE:
            rec["counts_update"][step] = (i, n)
    return rec


def compare(doc: dict[str, Any], rec: dict[str, Any], limit: int = 20) -> list[str]:
    """Every difference between a golden and the engine's records (at most ``limit``).

    The engine applies a batch's output at the tick after it (sync) or two after it (async),
    after that tick's arrivals joined WAITING; vLLM reports the end of iteration k before
    the arrivals of iteration k + 1. The waiting count after an update therefore leaves out
    the requests that arrived at that later tick."""
    out: list[str] = []
    depth = 2 if doc["async_scheduling"] else 1
    arrivals_at: dict[int, int] = defaultdict(int)
    for r in doc["requests"]:
        arrivals_at[r["arrival_step"]] += 1
    last_free = int(doc["config"]["num_gpu_blocks"]) - 1
    last_counts = (0, 0)
    for s in doc["steps"]:
        k = s["step"]
        if s["schedule_called"]:
            mine = rec["scheduled"].get(k, [])
            if mine != s["scheduled"]:
                out.append(f"step {k}: scheduled {mine} != vLLM {s['scheduled']}")
            if rec["preempted"].get(k, []) != s["preempted"]:
                out.append(f"step {k}: preempted {rec['preempted'].get(k, [])} != vLLM {s['preempted']}")
            if rec["hits"].get(k, {}) != s["prefix_hit_tokens"]:
                out.append(f"step {k}: prefix hits {rec['hits'].get(k, {})} != vLLM {s['prefix_hit_tokens']}")
            if k in rec["free_after_schedule"]:
                last_free = rec["free_after_schedule"][k]
                last_counts = rec["counts_schedule"][k]
            elif s["scheduled"]:
                out.append(f"step {k}: the engine did not schedule")
            if last_free != s["free_blocks_after_schedule"]:
                out.append(f"step {k}: free blocks after schedule {last_free} != vLLM "
                           f"{s['free_blocks_after_schedule']}")
        u = s["update_of"]
        if u is not None:
            if rec["finished"].get(u, []) != s["finished"]:
                out.append(f"step {k}: finished (batch {u}) {rec['finished'].get(u, [])} != vLLM {s['finished']}")
            if u in rec["free_after_update"]:
                last_free = rec["free_after_update"][u]
                running, waiting = rec["counts_update"][u]
                last_counts = (running, waiting - arrivals_at[u + depth])
        if last_free != s["free_blocks"]:
            out.append(f"step {k}: free blocks {last_free} != vLLM {s['free_blocks']}")
        if last_counts != (s["num_running"], s["num_waiting"]):
            out.append(f"step {k}: running/waiting {last_counts} != vLLM {(s['num_running'], s['num_waiting'])}")
        if len(out) >= limit:
            break
    return out[:limit]


def check_results(doc: dict[str, Any], res: Any) -> list[str]:
    """Per request: output tokens and preemptions as vLLM's results say."""
    out = []
    for i, r in enumerate(doc["requests"]):
        want = doc["results"][r["id"]]
        got = (int(res.output_emitted[i]), int(res.preemptions[i]))
        if got != (want["num_output_tokens"], want["num_preemptions"]):
            out.append(f"{r['id']}: (outputs, preemptions) {got} != vLLM "
                       f"{(want['num_output_tokens'], want['num_preemptions'])}")
    return out


def without_fast_forward(engine: ContinuousEngine) -> ContinuousEngine:
    return replace(engine, fast_forward=False)
