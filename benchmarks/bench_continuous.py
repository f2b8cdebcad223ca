"""Speed benchmark of the continuous engine (not a timed test): ``python benchmarks/bench_continuous.py``.

Runs ``python -m simsched engine=continuous workload=burstgpt`` (BurstGPT-like lengths, Gamma
arrivals CV 1.41, the default roofline step time of Llama-3.1-8B on H100, vLLM's H100 defaults,
prefix caching and async scheduling on) on 4 replicas, in fresh processes with MLflow off. The
load is set from a capacity probe (throughput of a saturated run): ρ = 0.8 below saturation,
ρ = 2 in overload. Per case: the whole process's wall time and peak RSS, the simulation loop's
wall and CPU time and its rate, loop ticks per request, scheduled request-steps per request and
the share of them fast-forwarded (advanced by the decode cohort or a jump, with no per-request
work). Vidur's ~180 requests/s (measured on 2 cores, issue 11) is the reference.

Results go to ``--out`` (default ``outputs/bench_continuous/DATE/TIME/results.json``); an
existing file is never overwritten without ``--force`` (the committed figures are
``benchmarks/results_continuous.json``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["engine=continuous", "workload=burstgpt", "gpus.count=4", "tracking=none", "output.plots=false",
        "output.quiet=true", "output.requests_table=false"]
VIDUR_RPS = 180.0


def run_case(overrides: list[str], workdir: Path, code: Path = REPO) -> dict:
    """One fresh process running the checkout ``code``: wall time, peak RSS (os.wait4) and the
    run's metrics.json."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(code))
    cmd = [sys.executable, "-m", "simsched", *BASE, *overrides, f"hydra.run.dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"benchmark case failed: {' '.join(overrides)}\n{proc.stderr.read().decode()}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "metrics": json.loads((out / "metrics.json").read_text())}


def row(label: str, n: int, rate: float, r: dict) -> dict:
    m = r["metrics"]
    return {"case": label, "requests": n, "rate_rps": round(rate, 2), "wall_s": round(r["wall_s"], 2),
            "loop_s": round(m["sim_loop_s"], 3), "loop_cpu_s": round(m["sim_loop_cpu_s"], 3),
            "loop_requests_per_s": round(n / m["sim_loop_s"]) if m["sim_loop_s"] > 0 else None,
            "loop_requests_per_cpu_s": round(n / m["sim_loop_cpu_s"]) if m["sim_loop_cpu_s"] > 0 else None,
            "ticks_per_request": round(m["sim_ticks_per_request"], 3),
            "request_steps_per_request": round(m["sim_request_steps"] / n, 1) if "sim_request_steps" in m else None,
            "fast_forwarded": round(m.get("sim_fast_forwarded_fraction", m["sim_steps_skipped_fraction"]), 3),
            "peak_rss_mb": round(r["peak_rss_mb"]), "completed": m["completed"],
            "throughput_rps": round(m["throughput_rps"], 2), "running_mean": round(m.get("running_mean", 0), 1),
            "waiting_mean": round(m.get("waiting_mean", 0), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="request counts at ρ = 0.8")
    ap.add_argument("--overload-sizes", default="100000,1000000", help="request counts at ρ = 2")
    ap.add_argument("--out", default=None, help="results JSON (default: a new outputs/bench_continuous folder)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing results file")
    ap.add_argument("--code", default=str(REPO), help="the checkout to measure (default: this one), e.g. an "
                    "exported older commit for a baseline in the same session")
    args = ap.parse_args()
    now = dt.datetime.now()
    out = Path(args.out) if args.out else (REPO / "outputs" / "bench_continuous" / now.strftime("%Y-%m-%d")
                                           / now.strftime("%H-%M-%S") / "results.json")
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists; pass --force to overwrite it")
    sizes = [int(x) for x in args.sizes.split(",") if x]
    over = [int(x) for x in args.overload_sizes.split(",") if x]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code = Path(args.code).resolve()
        run_case(["workload.num_requests=3000"], work, code)     # compiles the kernel once (numba's cache)
        probe = run_case(["workload.num_requests=20000", "workload.arrivals.rate=1000"], work, code)
        capacity = probe["metrics"]["throughput_rps"]
        starts = [run_case(["workload.num_requests=10"], work, code)["wall_s"] for _ in range(3)]
        for label, rho, ns in (("rho=0.8", 0.8, sizes), ("overload rho=2", 2.0, over)):
            for n in ns:
                rows.append(row(label, n, rho * capacity,
                                run_case([f"workload.num_requests={n}", f"workload.arrivals.rate={rho * capacity}"],
                                         work, code)))
                print(json.dumps(rows[-1]), flush=True)
    result = {"date": now.strftime("%Y-%m-%d %H:%M"), "code": "working tree" if code == REPO else "another checkout (--code)", "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "capacity_rps": round(capacity, 2), "startup_s_min_of_3": round(min(starts), 2),
              "vidur_reference_rps": VIDUR_RPS, "cases": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\ncapacity {capacity:.1f} req/s (4 replicas); start-up (10 requests, min of 3) {min(starts):.2f} s")
    print(f"{'case':<16}{'requests':>10}{'wall s':>8}{'loop s':>8}{'loop cpu s':>11}{'req/s (loop)':>13}"
          f"{'req/s (cpu)':>12}{'x Vidur':>8}{'ticks/req':>10}{'ff share':>9}{'RSS MB':>8}")
    for r in rows:
        rps = r["loop_requests_per_s"] or 0
        print(f"{r['case']:<16}{r['requests']:>10}{r['wall_s']:>8.2f}{r['loop_s']:>8.2f}{r['loop_cpu_s']:>11.2f}"
              f"{rps:>13}{r['loop_requests_per_cpu_s'] or 0:>12}{rps / VIDUR_RPS:>8.0f}{r['ticks_per_request']:>10.2f}{r['fast_forwarded']:>9.0%}"
              f"{r['peak_rss_mb']:>8}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
