"""The fast engine against the straightforward reference simulator, bit for bit, in every
regime the engine's speed is measured in (benchmarks/bench.py): light load (mean batch <= 3),
moderate load, overload, trace-like replays with tied timestamps, K = 1..16, all four modes,
every bin-selection rule, both release rules, a horizon, noisy predictions. Each case runs on
the Python loop and on the compiled loop (``SIMSCHED_JIT=0`` and ``=1``): both must equal the
reference, and so each other."""
from __future__ import annotations

import math

import numpy as np
import pytest
from reference_engine import reference_simulate

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.cluster import Gpus
from simsched.engines.run_to_completion import STATUS_NAMES, simulate
from simsched.latency import Affine, SeedForm, StepTime
from simsched.predictor import Noisy, Oracle
from simsched.scheduler import Scheduler
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Gamma, Poisson
from simsched.workloads.lengths import Bimodal, Zipf

STATIC = FixedBatcher(8)
FULL_ONLY = FixedBatcher(6, full_batches_only=True)
DYNAMIC = DynamicBatcher()
STEP = StepTime(c0_s=0.012, c_pf_s=2e-5, c_dec_s=3e-4, c_ctx_s=1e-7, c_attn_s=1e-10, cpu_s=0.003)
TICKS = SeedForm(alpha_s=0.25, beta_s=0.0078125, gamma=0.0)   # every duration a multiple of 1/128 s
AFFINE_KV = Affine(alpha_s=0.01, beta0_s=0.03, beta1_s=0.0004, prefill_s_per_token=1e-5, kv_s_per_token=1e-8)

# name: (scheduler, latency, arrival rate (req/s), options). Service takes ~0.3-1 s a batch, so
# rate 0.5 is light load (batches of 1-3), 20 moderate and 400 overload (queues only grow).
CASES = {
    "static_fifo": (Scheduler(STATIC), SeedForm(), 20.0, {}),
    "static_fifo light": (Scheduler(STATIC), SeedForm(), 0.5, {}),
    "static_fifo overload": (Scheduler(FixedBatcher(4)), SeedForm(), 400.0, {}),
    "multi_bin_static full-only": (Scheduler(FULL_ONLY, k_bins=3), SeedForm(alpha_s=0, gamma=0), 20.0, {}),
    "multi_bin_static full-only K16 light": (Scheduler(FULL_ONLY, k_bins=16), SeedForm(), 0.5, {}),
    "multi_bin_static overload": (Scheduler(FixedBatcher(8), k_bins=4), Affine(), 400.0, {}),
    "dynamic_no_bins": (Scheduler(DynamicBatcher(window=5)), Affine(), 20.0, {}),
    "dynamic_no_bins light": (Scheduler(DYNAMIC), SeedForm(), 0.5, {}),
    "dynamic_no_bins overload": (Scheduler(DynamicBatcher(b_max=16)), AFFINE_KV, 400.0, {}),
    "dynamic sla-bound": (Scheduler(DynamicBatcher(d_sla_s=0.031, eps_d_s=0.0005, window=4)), Affine(), 200.0, {}),
    "dynamic memory-unaware": (Scheduler(DynamicBatcher(memory_aware=False), k_bins=2), STEP, 20.0, {}),
    "dynamic sla-unaware": (Scheduler(DynamicBatcher(sla_aware=False), k_bins=2), STEP, 400.0, {}),
    "multi_bin rr K4": (Scheduler(DYNAMIC, k_bins=4), SeedForm(), 20.0, {}),
    "multi_bin rr K16 light": (Scheduler(DYNAMIC, k_bins=16), SeedForm(), 0.5, {}),
    "multi_bin longest K3": (Scheduler(DynamicBatcher(b_max=32), k_bins=3, bin_selection="longest_queue"),
                             Affine(), 20.0, {}),
    "multi_bin longest K16 overload": (Scheduler(DYNAMIC, k_bins=16, bin_selection="longest_queue"), SeedForm(),
                                       400.0, {}),
    "multi_bin oldest K8": (Scheduler(DYNAMIC, k_bins=8, bin_selection="oldest_first"), SeedForm(), 20.0, {}),
    "multi_bin oldest K12 light": (Scheduler(DYNAMIC, k_bins=12, bin_selection="oldest_first"), STEP, 0.5, {}),
    "own_length static": (Scheduler(STATIC, k_bins=2), SeedForm(), 20.0, {"release": "own_length"}),
    "own_length dynamic K4": (Scheduler(DYNAMIC, k_bins=4), AFFINE_KV, 20.0, {"release": "own_length"}),
    "own_length full-only light": (Scheduler(FULL_ONLY, k_bins=2), STEP, 0.5, {"release": "own_length"}),
    "horizon static": (Scheduler(STATIC), SeedForm(), 20.0, {"horizon": 0.5}),
    "horizon dynamic K4 overload": (Scheduler(DYNAMIC, k_bins=4), Affine(), 400.0, {"horizon": 0.5}),
    "horizon full-only K3": (Scheduler(FULL_ONLY, k_bins=3), SeedForm(), 20.0, {"horizon": 0.5}),
    "horizon own_length light": (Scheduler(DYNAMIC, k_bins=2), SeedForm(), 0.5, {"horizon": 0.5,
                                                                                  "release": "own_length"}),
    "noisy predictions K4": (Scheduler(DYNAMIC, k_bins=4), SeedForm(), 20.0, {"predictor": Noisy(0.5, p_e=0.1)}),
    "noisy predictions K8 light": (Scheduler(FULL_ONLY, k_bins=8), SeedForm(), 0.5,
                                   {"predictor": Noisy(0.8, p_e=0.2)}),
    # Memory binds before any completion, so Algorithm 1 runs on predictions alone.
    "noisy predictions overload": (Scheduler(DYNAMIC, k_bins=2), SeedForm(), 400.0, {"predictor": Noisy(1.0)}),
    # Durations and arrivals on a 1/4 s grid: completions and arrivals fall on the same instants.
    "exact ties dynamic K2": (Scheduler(DynamicBatcher(window=3), k_bins=2), TICKS, 4.0, {"grid": 0.25}),
    "exact ties static": (Scheduler(FixedBatcher(3)), TICKS, 4.0, {"grid": 0.25}),
    # 1/64 s a token (not TICKS' 1/128): with 1/128 no completion of seed 1 falls on an arrival.
    "exact ties full-only K2": (Scheduler(FixedBatcher(3, full_batches_only=True), k_bins=2),
                                SeedForm(alpha_s=0.25, beta_s=0.015625, gamma=0.0), 4.0, {"grid": 0.25}),
}


def _workload(rate: float, seed: int, grid: float | None = None, n: int = 1500):
    """Seed 0: Poisson; 1: bursty Gamma; 2: a replay with whole-second timestamps (many ties).
    ``grid``: arrivals rounded down to multiples of it."""
    arrivals = Gamma(rate=rate, cv=2.0) if seed == 1 else Poisson(rate)
    wl = SyntheticWorkload(arrivals, Zipf(50, 1.3, 20000), Bimodal(0.3, 20, 0.7, 150, 0.6), n)
    req = wl.generate(np.random.default_rng(seed))
    step = grid if grid is not None else 1.0 if seed == 2 else None
    if step is not None:
        req.arrival = np.floor(req.arrival / step) * step
    return req


def _check(res, ref, mode: str) -> None:
    for key in ("batch", "gpu", "start", "first_token", "finish", "tbt"):
        assert np.array_equal(getattr(res, key), ref[key], equal_nan=True), f"{key} differs ({mode} loop)"
    assert np.array_equal(np.array(STATUS_NAMES)[res.status], ref["status"]), f"status differs ({mode} loop)"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_matches_reference(name, seed, monkeypatch):
    scheduler, latency, rate, opts = CASES[name]
    req = _workload(rate, seed, opts.get("grid"))
    gpus = Gpus(count=1 + seed, kv_capacity_tokens=15000)
    horizon = opts.get("horizon")
    if horizon is not None:           # a horizon on the arrival at that fraction of the requests
        horizon = float(req.arrival[int(horizon * len(req))])
    release = opts.get("release", "batch_end")
    results = {}
    for mode, flag in (("python", "0"), ("compiled", "1")):
        monkeypatch.setenv("SIMSCHED_JIT", flag)
        results[mode] = simulate(req, scheduler, latency, gpus, opts.get("predictor", Oracle()),
                                 np.random.default_rng(seed), horizon_s=horizon, release=release)
    res = results["python"]
    ref = reference_simulate(req, scheduler, latency, gpus, res.bin, res.predicted,
                             horizon=math.inf if horizon is None else horizon, release=release)
    for mode, r in results.items():
        _check(r, ref, mode)
    # The case exercises what its name says (and never trivially).
    sizes = res.batches["size"]
    span = req.arrival[-1] - req.arrival[0]
    assert len(sizes) >= (1 if horizon is not None else 10)
    if rate <= 0.5 and not getattr(scheduler.batcher, "full_batches_only", False):
        assert sizes.mean() <= 3.0                                 # light load
    if rate >= 400 and horizon is None:
        assert res.end_time - req.arrival[0] > 3 * span            # overload: a backlog to drain
    if horizon is not None:
        assert res.counts()["unfinished"] + res.counts()["not_arrived"] > 0
    if "grid" in opts:                # some completion falls on an arrival instant
        assert np.isin(res.batches["end"], req.arrival).any()


def test_reference_catches_a_wrong_engine(monkeypatch):
    """The comparison can fail: an engine whose batches are timed by their first member."""
    from simsched.engines import rtc_loop

    def first_not_longest(members, lo, hi, prompt, output):
        rows = [members[j] for j in range(lo, hi)]
        return output[rows[0]], sum(prompt[r] for r in rows), sum(output[r] for r in rows)

    monkeypatch.setenv("SIMSCHED_JIT", "0")
    monkeypatch.setattr(rtc_loop, "batch_tokens", first_not_longest)
    scheduler, latency, rate, _ = CASES["multi_bin rr K4"]
    req = _workload(rate, 0)
    gpus = Gpus(count=1, kv_capacity_tokens=15000)
    res = simulate(req, scheduler, latency, gpus, Oracle(), np.random.default_rng(0))
    ref = reference_simulate(req, scheduler, latency, gpus, res.bin, res.predicted)
    with pytest.raises(AssertionError, match="differs"):
        _check(res, ref, "python")
