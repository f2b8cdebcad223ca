"""Loop speed of every scheduler on the continuous engine, as a ratio against FCFS (vLLM) in
the same run: ``python benchmarks/bench_policies.py`` (not a timed test).

The setting of ``bench_continuous.py``: ``workload=burstgpt``, 4 replicas (H100 defaults,
roofline step time), fresh processes with MLflow off, the load ρ = 0.8 of a saturated FCFS
run's throughput. The static schedulers get ``batch_size=1024`` (vLLM's ``max_num_seqs``) and
the dynamic ones ``b_max=1024``, so no policy is overloaded by a small batch at this load;
the predictor is the noisy one (σ = 0.5). Each round runs every scheduler once, FCFS first,
and the ratios are taken within a round (the machine is shared: absolute rates are noisy).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_continuous import run_case  # noqa: E402

CASES = {
    "vllm (fcfs)": ["scheduler=vllm"],
    "static_fifo": ["scheduler=static_fifo", "scheduler.batcher.batch_size=1024"],
    "dynamic_no_bins": ["scheduler=dynamic_no_bins", "scheduler.batcher.b_max=1024"],
    "multi_bin_static": ["scheduler=multi_bin_static", "scheduler.batcher.batch_size=1024"],
    "multi_bin_dynamic": ["scheduler=multi_bin_dynamic", "scheduler.batcher.b_max=1024"],
    "sjf": ["scheduler=sjf"],
    "priority": ["scheduler=priority"],
    "lpm": ["scheduler=lpm"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", required=True, help="results JSON (rows appended as they come)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case in CASES.values():                       # compile every variant once
            run_case([*case, "workload.num_requests=3000", "predictor=noisy"], work)
        probe = run_case(["workload.num_requests=20000", "workload.arrivals.rate=1000"], work)
        rate = 0.8 * probe["metrics"]["throughput_rps"]
        for rnd in range(args.rounds):
            base = None
            for name, case in CASES.items():
                m = run_case([*case, f"workload.num_requests={args.requests}", f"workload.arrivals.rate={rate}",
                              "predictor=noisy"], work)["metrics"]
                cpu = m["sim_loop_cpu_s"]
                base = cpu if base is None else base
                rows.append({"round": rnd, "scheduler": name, "rate_rps": round(rate, 2),
                             "loop_cpu_s": round(cpu, 3), "loop_requests_per_cpu_s": round(args.requests / cpu),
                             "cpu_time_vs_fcfs": round(cpu / base, 3),
                             "steps_skipped": round(m["sim_steps_skipped_fraction"], 3),
                             "completed": m["completed"], "ttft_p99_s": m["ttft_p99_s"], "tpot_p99_s": m["tpot_p99_s"]})
                print(json.dumps(rows[-1]), flush=True)
                out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
