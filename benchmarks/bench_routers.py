"""Loop rate of every router against round robin (not a timed test): ``python benchmarks/bench_routers.py``.

One process, the compiled loop: the BurstGPT-like workload (``workload=burstgpt``, roofline
Llama-3.1-8B on H100, vLLM's defaults) with ``--requests`` requests at 15 req/s per replica
(ρ ≈ 0.8 of this fleet's measured saturation, ~19 req/s per H100), on 4 and 16 replicas, noisy
predictions (σ 0.5). Each router is timed ``--repeat`` times, interleaved with round robin on
the same workload, and reported as the ratio of its loop CPU time to round robin's median (a
shared machine: ratios from the same process are what can be compared; absolute figures are noisy).
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from hydra import compose, initialize_config_dir

from simsched.app.paths import config_dir
from simsched.config import register_configs
from simsched.engines.continuous import simulate_continuous
from simsched.engines.continuous.routing import ROUTERS, Router
from simsched.engines.continuous.simulate import prepare
from simsched.run import build_components


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--replicas", type=int, nargs="+", default=[4, 16])
    args = ap.parse_args()
    register_configs()
    rows = []
    for G in args.replicas:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "engine=continuous", "workload=burstgpt", f"gpus.count={G}", "tracking=none",
                f"workload.num_requests={args.requests}", f"workload.arrivals.rate={15 * G}", "predictor=noisy"])
        comps = build_components(cfg)
        req = comps.workload.generate(np.random.default_rng(0))
        pred = comps.predictor.predict(req.output, np.random.default_rng(1))
        step, hw, cap = prepare(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
        simulate_continuous(req, comps.engine, step, hw, cap)       # compile (or load) first

        def loop_cpu(name: str) -> tuple[float, dict]:
            res, _ = simulate_continuous(req, comps.engine, step, hw, cap, router=Router(name), predicted=pred)
            return res.counters["loop_cpu_ms"] / 1000, res.counters

        for name in ROUTERS[1:]:
            rr, mine, counters, rr_counters = [], [], {}, {}
            for _ in range(args.repeat):
                t, rr_counters = loop_cpu("round_robin")
                rr.append(t)
                t, counters = loop_cpu(name)
                mine.append(t)
            base = statistics.median(rr)
            rows.append({"replicas": G, "router": name, "requests": len(req),
                         "round_robin_loop_cpu_s": round(base, 3), "loop_cpu_s": round(statistics.median(mine), 3),
                         "ratio_to_round_robin": round(statistics.median(mine) / base, 3),
                         "loop_requests_per_cpu_s": round(len(req) / statistics.median(mine)),
                         "jumped_steps_share": round(counters["jumped_steps"] / max(counters["steps"], 1), 3),
                         "round_robin_jumped_steps_share": round(rr_counters["jumped_steps"]
                                                                 / max(rr_counters["steps"], 1), 3)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
