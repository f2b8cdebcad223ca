"""In-process timing of the simulation loop, run by ``bench.py`` in a fresh process against one
source tree (``PYTHONPATH=TREE python probe.py ...``); prints one JSON line.

``loop CONFIG_DIR REPEATS MODES OVERRIDES...``: compose each mode's config, generate its
workload once, run ``simulate`` once on a small slice (so numba is loaded, or compiled), then
``REPEATS`` times on the whole workload: the loop's own time, without start-up or the one-time
JIT load (``bench.py`` measures those separately). ``jit``: the cost of loading numba and the
compiled loop (a first call with an empty ``NUMBA_CACHE_DIR`` compiles). Uses only the API that
the engine has had since the engines/ layout (baseline trees included).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def _compose(config_dir: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from simsched.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="bench"):
        return compose(config_name="config", overrides=overrides)


def _simulate(comps, cfg, requests, seed_ss):
    from simsched.engines.run_to_completion import simulate

    return simulate(requests, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                    np.random.default_rng(seed_ss), horizon_s=cfg.engine.horizon_s, release=cfg.engine.release)


def loop(config_dir: str, repeats: int, modes: list[str], overrides: list[str]) -> dict:
    from simsched.run import build_components
    from simsched.workloads.requests import RequestTable

    out = {}
    for mode in modes:
        ovs = [f"scheduler={mode}"] + [o for o in overrides if not (o.startswith("scheduler.k_bins=")
                                                                 and not mode.startswith("multi"))]
        cfg = _compose(config_dir, ovs)
        comps = build_components(cfg)
        workload_ss, sim_ss = np.random.SeedSequence(int(cfg.seed)).spawn(2)
        t0 = time.perf_counter()
        req = comps.workload.generate(np.random.default_rng(workload_ss))
        t_workload = time.perf_counter() - t0
        # The warm-up is as large as the smallest run that gets the compiled loop (if the tree has one).
        from simsched.engines import run_to_completion as engine

        m = min(len(req), max(25_000, getattr(engine, "COMPILED_FROM_REQUESTS", 0)))
        warm = RequestTable(req.arrival[:m].copy(), req.prompt[:m].copy(), req.output[:m].copy())
        t0 = time.perf_counter()
        _simulate(comps, cfg, warm, sim_ss)
        t_warm = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = _simulate(comps, cfg, req, sim_ss)
            times.append(time.perf_counter() - t0)
        metrics, capacity = _metrics(res, comps, req, sim_ss)
        out[mode] = {"requests": len(req), "loop_s": times, "workload_s": t_workload, "warmup_s": t_warm,
                     "mean_batch_size": metrics["mean_batch_size"], "offered_load": metrics["offered_load"],
                     "capacity_rps": capacity, "arrival_rate_rps": metrics["arrival_rate_rps"]}
    return out


def _metrics(res, comps, req, seed_ss) -> tuple[dict, float]:
    """The run's metrics and the capacity its load is measured against, in the tree's own terms:
    the scheduler's saturation throughput μ_sat (ρ = λ / μ_sat) where the tree has it, else the
    older reference capacity (baseline trees)."""
    import inspect

    from simsched.metrics import compute_metrics

    if "saturation_rps" in inspect.signature(compute_metrics).parameters:
        from simsched.saturation import saturation_throughput

        mu = saturation_throughput(req, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                                   np.random.default_rng(seed_ss))
        return compute_metrics(res, comps.sla, comps.window, saturation_rps=mu), mu
    metrics = compute_metrics(res, comps.sla, comps.window, comps.latency_model, comps.scheduler.batcher.max_batch)
    return metrics, metrics["reference_capacity_rps"]


def jit() -> dict:
    """numba's import, then the first and second call of the compiled loop on 10 requests."""
    t0 = time.perf_counter()
    import numba  # noqa: F401
    t1 = time.perf_counter()
    from simsched.batchers import DynamicBatcher
    from simsched.cluster import Gpus
    from simsched.engines.run_to_completion import simulate
    from simsched.latency import SeedForm
    from simsched.predictor import Oracle
    from simsched.scheduler import Scheduler
    from simsched.workloads.requests import RequestTable

    req = RequestTable(np.arange(10) * 0.5, np.full(10, 100), np.full(10, 50))
    calls = []
    for _ in range(2):
        t2 = time.perf_counter()
        simulate(req, Scheduler(DynamicBatcher(), k_bins=2), SeedForm(), Gpus(), Oracle(), np.random.default_rng(0))
        calls.append(time.perf_counter() - t2)
    return {"numba_import_s": t1 - t0, "first_call_s": calls[0], "second_call_s": calls[1]}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "loop":
        result = loop(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:])
    elif what == "jit":
        result = jit()
    else:
        raise SystemExit(f"unknown probe {what!r}")
    print(json.dumps(result))
