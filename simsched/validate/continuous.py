"""Check 7: the continuous engine (``engine=continuous``).

(a) One request alone: its TTFT and E2E in closed form (its prefill chunks, then L − 1 decode
    steps), synchronous and asynchronous scheduling, several chunkings.
(b) Little's law on the time series: the time-average number of requests in the system
    (running + waiting, sampled every second) equals Σ E2E / T.
(c) An M/D/1 and an M/G/1 limit: ``max_num_seqs = 1`` and a budget that never chunks make one
    replica a FIFO single server with service time S(L); the mean queueing delay (first
    scheduled − arrival) must match Pollaczek–Khinchine.
(d) Conformance: every golden trace of vLLM 0.33.0's scheduler (``tests/data/vllm`` of a
    checkout), replayed in step-conformance mode, step for step.
(e) Fast-forward equivalence: identical per-request results (1e-9 s) with and without it, on
    random workloads, about half of them preemption-heavy.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.latency import StepTime
from simsched.metrics import Sla, Window
from simsched.serving_metrics import compute_serving_metrics
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng
from simsched.validate.stats import CheckResult, Row
from simsched.validate.theory import pk_wait
from simsched.workloads.lengths import Empirical, Fixed
from simsched.workloads.requests import RequestTable

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "vllm"
STEP = StepTime(c0_s=0.008, c_pf_s=4e-5, c_dec_s=3e-4, c_ctx_s=2e-7, c_attn_s=2e-9, cpu_s=0.003)
PER_REQUEST_INTS = ("status", "reason", "replica", "output_emitted", "preemptions", "prefix_hit_tokens")
PER_REQUEST_TIMES = ("first_scheduled", "first_token", "finish", "itl_max")


# --- (a) one request in closed form -----------------------------------------------------------

def single_request_closed_form(prompt: int, output: int, budget: int, step: StepTime,
                               async_sched: bool, arrival: float = 0.0) -> tuple[float, float]:
    """(TTFT, E2E) of a request alone. Prefill chunk k covers n_k tokens from s_k (the budget
    chunks it); its GPU time is c0 + c_pf·n + c_attn·(n·s + n²/2). Decode j (j = 1..L−1) attends
    over P + j tokens: c0 + c_dec + c_ctx·(P + j). Sync: each step lasts cpu + g, tokens at its
    end. Async: the first step is scheduled at arrival, the next one cpu later while the first
    runs, and every later tick comes max(cpu, g) after the one before, g being the step then on
    the GPU; a step's token is emitted one tick after it started running."""
    g = []
    s = 0
    while s < prompt:
        n = min(budget, prompt - s)
        g.append(step.c0_s + step.c_pf_s * n + step.c_attn_s * (n * s + 0.5 * n * n))
        s += n
    k = len(g)
    for j in range(1, output):
        g.append(step.c0_s + step.c_dec_s + step.c_ctx_s * (prompt + j))
    cpu = step.cpu_s
    if async_sched:
        t = arrival + cpu
        times = []
        for x in g:
            t = t + max(cpu, x)
            times.append(t)
    else:
        t = arrival
        times = []
        for x in g:
            t = t + cpu + x
            times.append(t)
    return times[k - 1] - arrival, times[-1] - arrival


def single_request_rows(engine_for: Any = None) -> list[tuple[str, bool]]:
    out = []
    for async_sched in (False, True):
        for prompt, output, budget in ((100, 1, 512), (700, 20, 256), (2000, 300, 512), (37, 2, 8)):
            eng = ContinuousEngine(max_num_batched_tokens=budget, max_num_seqs=8, num_gpu_blocks=4000,
                                   max_model_len=4096, async_scheduling=async_sched)
            if engine_for is not None:
                eng = engine_for(eng)
            req = RequestTable(np.array([1.5]), np.array([prompt]), np.array([output]))
            res, _ = simulate_continuous(req, eng, STEP, Hardware(1, 4000 * 16, "v", None))
            ttft, e2e = single_request_closed_form(prompt, output, budget, STEP, async_sched)
            ok = abs(res.ttft[0] - ttft) < 1e-9 and abs(res.e2e[0] - e2e) < 1e-9
            out.append((f"{'async' if async_sched else 'sync'}, prompt {prompt} in chunks of ≤ {budget}, "
                        f"{output} tokens: TTFT {res.ttft[0]:.6f} s (closed form {ttft:.6f}), "
                        f"E2E {res.e2e[0]:.6f} s (closed form {e2e:.6f})", ok))
    return out


# --- (b) Little's law -------------------------------------------------------------------------

def little_ratio(req: RequestTable, engine: ContinuousEngine, replicas: int = 2) -> float:
    """Time-average requests in the system (the 1-s samples) over Σ E2E / T, for a run that
    starts and ends empty (T from the first sample to the last one)."""
    res, _ = simulate_continuous(req, engine, STEP, Hardware(replicas, 10**6, "v", None))
    ts = res.timeseries
    times = np.unique(ts["time"])
    n_sys = np.array([np.sum((ts["running"] + ts["waiting"])[ts["time"] == t]) for t in times])
    span = float(times[-1] - times[0] + engine.timeseries_interval_s)
    e2e = res.e2e[res.status == 0]
    return float(n_sys.mean()) / (float(e2e.sum()) / span)


def little_rows(settings: Settings, engine_for: Any = None) -> list[Row]:
    rows = []
    n = settings.size(20_000, 4_000)
    for rate in (6.0, 11.0):
        values = []
        for r in range(settings.replications):
            req = poisson_requests(rate, Empirical([20, 200, 600]), n, rng(settings.seed, 7, 2, int(rate), r),
                                   prompt=Empirical([100, 400, 1500]))
            eng = ContinuousEngine(max_num_batched_tokens=2048, max_num_seqs=64, num_gpu_blocks=3000,
                                   max_model_len=4096, timeseries_interval_s=0.25)
            if engine_for is not None:
                eng = engine_for(eng)
            values.append(little_ratio(req, eng))
        rows.append(Row(f"Poisson λ = {rate:g}/s on 2 replicas, {n:,} requests", "time-average N / (Σ E2E / T)",
                        1.0, values, tol_rel=0.01, max_half_rel=0.02))
    return rows


# --- (c) M/D/1 and M/G/1 ----------------------------------------------------------------------

MG1_STEP = StepTime(c0_s=0.01, c_pf_s=1e-4, c_dec_s=0.0, c_ctx_s=0.0, cpu_s=0.0)
MG1_PROMPT = 100


def service_time(output: np.ndarray | float) -> np.ndarray:
    """S(L) = one prefill step of the whole prompt + (L − 1) decode steps (sync, no CPU)."""
    pre = MG1_STEP.c0_s + MG1_STEP.c_pf_s * MG1_PROMPT
    return pre + (np.asarray(output, float) - 1.0) * (MG1_STEP.c0_s + MG1_STEP.c_dec_s)


def mg1_rows(settings: Settings, engine_for: Any = None) -> list[Row]:
    rows = []
    n = settings.size(40_000, 8_000)
    services = {"M/D/1 (L = 50)": ([50], [1.0]), "M/G/1 (L = 10 or 150)": ([10, 150], [0.7, 0.3])}
    for si, (name, (values, weights)) in enumerate(services.items()):
        s = service_time(np.array(values))
        p = np.asarray(weights) / np.sum(weights)
        es, es2 = float(np.sum(p * s)), float(np.sum(p * s * s))
        for rho in (0.5, 0.7):
            lam = rho / es
            waits = []
            for r in range(settings.replications * (2 if rho > 0.5 else 1)):
                out = Empirical(values, weights) if len(values) > 1 else Fixed(values[0])
                req = poisson_requests(lam, out, n, rng(settings.seed, 7, 3, si, int(rho * 10), r),
                                       prompt=Fixed(MG1_PROMPT))
                eng = ContinuousEngine(max_num_batched_tokens=4096, max_num_seqs=1, num_gpu_blocks=1000,
                                       max_model_len=2048, async_scheduling=False, enable_prefix_caching=False)
                if engine_for is not None:
                    eng = engine_for(eng)
                res, _ = simulate_continuous(req, eng, MG1_STEP, Hardware(1, 16000, "v", None))
                waits.append(compute_serving_metrics(res, Sla(latency_s=1e9), Window(0.1))["queue_delay_mean_s"])
            rows.append(Row(f"{name}, ρ = {rho}", "mean queueing delay (s)", pk_wait(lam, es, es2), waits,
                            tol_rel=0.03, max_half_rel=0.25 if settings.quick else 0.06))
    return rows


def lindley_condition(n: int = 3000, seed: int = 0) -> tuple[str, bool]:
    """On one arrival sequence, every queueing delay equals the Lindley recursion
    W_{k+1} = max(0, W_k + S_k − A_{k+1}) of a FIFO single server (within 1e-9 s)."""
    gen = np.random.default_rng([seed, 7, 3])
    out = np.where(gen.random(n) < 0.7, 10, 150)
    arr = np.cumsum(gen.exponential(1.0 / 0.9, n))
    req = RequestTable(arr, np.full(n, MG1_PROMPT), out)
    eng = ContinuousEngine(max_num_batched_tokens=4096, max_num_seqs=1, num_gpu_blocks=1000, max_model_len=2048,
                           async_scheduling=False, enable_prefix_caching=False)
    res, _ = simulate_continuous(req, eng, MG1_STEP, Hardware(1, 16000, "v", None))
    s = service_time(out)
    w = np.zeros(n)
    for k in range(n - 1):
        w[k + 1] = max(0.0, w[k] + s[k] - (arr[k + 1] - arr[k]))
    err = float(np.max(np.abs((res.first_scheduled - arr) - w)))
    return (f"M/G/1 at ρ = 0.48, {n:,} requests: every queueing delay equals the Lindley recursion "
            f"(largest difference {err:.2g} s)", err < 1e-9)


# --- (d) conformance --------------------------------------------------------------------------

def conformance_conditions(golden_dir: Path = GOLDEN_DIR, engine_for: Any = None) -> tuple[list[tuple[str, bool]], int]:
    import gzip
    import json

    from simsched.engines.continuous import conformance

    paths = sorted(golden_dir.glob("*.json.gz"))
    out = []
    steps = 0
    for path in paths:
        with gzip.open(path, "rt") as fh:
            doc = json.load(fh)
        rec = conformance.run_golden(doc, fast_forward=True) if engine_for is None else engine_for(doc)
        diffs = conformance.compare(doc, rec, limit=3) + conformance.check_results(doc, rec["result"])[:2]
        steps += len(doc["steps"])
        name = path.name.replace(".json.gz", "")
        out.append((f"golden `{name}` ({len(doc['steps'])} steps): "
                    + ("identical" if not diffs else "; ".join(diffs)), not diffs))
    return out, steps


# --- (e) fast-forward -------------------------------------------------------------------------

def random_case(seed: int, n_max: int = 250) -> tuple[RequestTable, ContinuousEngine, Hardware]:
    """A random workload and engine configuration: about half the cases preempt heavily (tiny
    pools), half share prompt prefixes (hash ids), both schedulers and both policies."""
    r = np.random.default_rng(seed)
    n = int(r.integers(20, n_max))
    block = int(r.choice([4, 16]))
    blocks = int(r.choice([70, 120, 400, 4000]))
    mml = min(2048, (blocks - 1) * block)
    prompt = r.integers(1, min(600, mml - 1), n)
    shared = r.random() < 0.5
    hash_off = hash_val = None
    if shared:
        ids = []
        for p in prompt:
            k = -(-int(p) // block)
            root = int(r.integers(0, 4))
            common = int(r.integers(0, k + 1))
            ids.append([root * 1000 + j for j in range(common)] + [int(x) for x in r.integers(10**6, 10**9, k - common)])
        hash_off = np.concatenate(([0], np.cumsum([len(x) for x in ids])))
        hash_val = np.array([h for x in ids for h in x], dtype=np.int64)
    req = RequestTable(np.sort(r.uniform(0, float(r.uniform(1, 40)), n)), prompt, r.integers(1, 300, n),
                       priority=r.integers(0, 3, n), hash_offsets=hash_off, hash_values=hash_val,
                       hash_block_tokens=block if shared else None)
    seqs = int(r.choice([8, 32, 64]))
    engine = ContinuousEngine(
        async_scheduling=bool(r.integers(2)), policy=("fcfs", "priority")[int(r.integers(2))],
        num_gpu_blocks=blocks, block_size=block, max_model_len=mml,
        max_num_batched_tokens=int(r.choice([max(64, seqs), 512, 2048])), max_num_seqs=seqs,
        long_prefill_token_threshold=int(r.choice([0, 0, 48])), enable_prefix_caching=bool(r.random() < 0.75),
        full_sequence_gate=bool(r.integers(2)))
    return req, engine, Hardware(int(r.integers(1, 4)), blocks * block, "test", None)


def differences(a: Any, b: Any, atol: float = 1e-9) -> list[str]:
    """Per-request fields that differ between two results (times within ``atol`` seconds)."""
    bad = [f for f in PER_REQUEST_INTS if not np.array_equal(getattr(a, f), getattr(b, f))]
    for f in PER_REQUEST_TIMES:
        x, y = getattr(a, f), getattr(b, f)
        if not np.allclose(x, y, atol=atol, rtol=0, equal_nan=True):
            bad.append(f"{f} (max diff {np.nanmax(np.abs(x - y)):.3g} s)")
    return bad


def fast_forward_conditions(seeds: range, step: StepTime = STEP) -> tuple[list[tuple[str, bool]], float]:
    out = []
    skipped = []
    for seed in seeds:
        req, eng, hw = random_case(seed)
        a, _ = simulate_continuous(req, eng, step, hw)
        b, _ = simulate_continuous(req, replace(eng, fast_forward=False), step, hw)
        diffs = differences(a, b)
        skipped.append(a.counters["lazy_request_steps"] / max(a.counters["request_steps"], 1))
        out.append((f"random case {seed} ({len(req)} requests, {int(a.preemptions.sum())} preemptions, "
                    f"{a.counters['lazy_request_steps']} of {a.counters['request_steps']} request-steps "
                    "fast-forwarded): "
                    + ("identical" if not diffs else ", ".join(diffs)), not diffs))
    return out, float(np.mean(skipped))


def _plot(rows: list[Row], out: Path) -> str:
    fig, ax = figure()
    mg = [r for r in rows if r.quantity == "mean queueing delay (s)"]
    ax.errorbar(range(len(mg)), [r.mean for r in mg], yerr=[r.half for r in mg], fmt="o", capsize=3,
                label="simulated (95% CI)")
    ax.plot(range(len(mg)), [r.expected for r in mg], "x", markersize=9, label="Pollaczek–Khinchine")
    ax.set_xticks(range(len(mg)))
    ax.set_xticklabels([r.point.replace(", ", "\n") for r in mg], fontsize=7)
    return finish(fig, ax, out / "c7_continuous.png", "", "mean queueing delay (s)",
                  "Continuous engine, max_num_seqs = 1: simulated vs P-K")


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    conditions = single_request_rows()
    rows = little_rows(settings) + mg1_rows(settings)
    conditions.append(lindley_condition())
    golden, n_steps = conformance_conditions()
    conditions += golden
    ff, skipped = fast_forward_conditions(range(4 if settings.quick else 10))
    conditions += ff
    setup = (
        f"(a) One request alone, step time `{STEP}`: TTFT and E2E against the closed form (sum of its prefill "
        "chunks, then L − 1 decode steps; sync: cpu + g per step; async: the first step starts cpu after "
        "arrival, each later one max(cpu, g) after the last), within 1e-9 s. "
        "(b) Little's law: Poisson arrivals, prompts {100, 400, 1500}, outputs {20, 200, 600}, 2 replicas; "
        "the time-average of running + waiting (samples every 0.25 s) over Σ E2E / T must be 1 within 1%. "
        f"(c) `max_num_seqs = 1`, a budget that never chunks, sync, prefix caching off, step time `{MG1_STEP}`, "
        f"prompts of {MG1_PROMPT} tokens: one replica is a FIFO single server with S(L) = (c0 + c_pf·P) + "
        "(L − 1)·c0; the mean queueing delay (first scheduled − arrival, over the window) against "
        "Pollaczek–Khinchine, within the CI widened by 3%, and on one arrival sequence every delay against the "
        "Lindley recursion of a FIFO single server (exact). "
        f"(d) Every golden trace in `tests/data/vllm` ({len(golden)} files, {n_steps:,} engine iterations of "
        "vLLM 0.33.0's Scheduler and AsyncScheduler), step-conformance mode with fast-forward on: every step's "
        "scheduled (request, tokens) list, preemptions, prefix hits, finishes, free blocks and counts identical"
        + ("" if golden else " (no goldens found: a checkout has them)") + ". "
        "(e) Random workloads (both schedulers and policies, half of them with tiny KV pools that force "
        "preemption, half with shared prefixes): identical per-request results with and without fast-forward (there: the decode cohort, which advances "
        "steady decoders together without per-request work).")
    discussion = (
        f"Fast-forward advanced {skipped:.0%} of the request-steps of the random cases on average. A broken engine "
        "fails these (tests/test_validation_continuous.py): a CPU time counted twice breaks (a); a time series "
        "that misses a request breaks (b); an idle tick between two requests breaks (c); victims taken from "
        "the head instead of the tail break (d); a decode cohort that misreads its members' longest inter-token gap breaks (e).")
    return CheckResult("c7_continuous", "7. Continuous engine: closed forms, Little, M/G/1, vLLM goldens, "
                       "fast-forward", setup, rows, conditions=conditions, plots=[_plot(rows, out)],
                       discussion=discussion, wall_s=time.perf_counter() - t0)
