"""Speed benchmark of the whole command (not a timed test): ``python benchmarks/bench.py``.

Runs ``python -m simsched`` in fresh processes (MLflow off, Poisson arrivals at offered load
~0.8, 4 GPUs, K = 4) and reports end-to-end wall time, the simulation loop's own rate
(``sim_requests_per_s`` from metrics.json) and peak RSS per case, plus the start-up time of a
10-request run. Writes the table as JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["tracking=none", "workload=poisson", "gpus.count=4", "scheduler.k_bins=4", "output.plots=false",
        "output.quiet=true"]


def run_case(overrides: list[str], workdir: Path) -> dict:
    """One fresh process; wall time, peak RSS (os.wait4) and the run's metrics.json."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "simsched", *BASE, *overrides, f"hydra.run.dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"benchmark case failed: {' '.join(overrides)}\n{proc.stderr.read().decode()}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "metrics": metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000",
                    help="request counts for the scaling table (multi_bin_dynamic)")
    ap.add_argument("--modes", default="multi_bin_dynamic,dynamic_no_bins,static_fifo,multi_bin_static",
                    help="schedulers run at 1M requests")
    ap.add_argument("--load", type=float, default=0.8, help="target offered load")
    ap.add_argument("--out", default="benchmarks/results.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        probe = run_case(["workload.num_requests=50000"], work)
        rate = args.load * probe["metrics"]["saturation_throughput_rps"]
        starts = [run_case(["workload.num_requests=10", "output.requests_table=false",
                            "output.batches_table=false"], work)["wall_s"] for _ in range(3)]
        rows = []
        cases = [("multi_bin_dynamic", int(n)) for n in args.sizes.split(",")]
        cases += [(m, 1_000_000) for m in args.modes.split(",") if m != "multi_bin_dynamic"]
        for mode, n in cases:
            r = run_case([f"scheduler={mode}", f"workload.num_requests={n}", f"workload.arrivals.rate={rate}"]
                         + (["scheduler.k_bins=4"] if mode.startswith("multi") else []), work)
            m = r["metrics"]
            rows.append({"scheduler": mode, "requests": n, "wall_s": round(r["wall_s"], 3),
                         "sim_loop_s": round(m["sim_wall_s"], 3),
                         "sim_requests_per_s": round(m["sim_requests_per_s"]),
                         "end_to_end_requests_per_s": round(n / r["wall_s"]),
                         "peak_rss_mb": round(r["peak_rss_mb"], 1),
                         "offered_load": round(m["offered_load"], 3),
                         "mean_batch_size": round(m["mean_batch_size"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "arrival_rate_rps": rate,
              "startup_s_min_of_3": round(min(starts), 3), "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nstart-up (10-request run, min of 3): {min(starts):.2f} s; arrival rate {rate:.2f} req/s")
    head = f"{'scheduler':<18}{'requests':>10}{'wall s':>9}{'loop s':>9}{'loop req/s':>12}{'RSS MB':>9}{'load':>6}"
    print(head)
    for r in rows:
        print(f"{r['scheduler']:<18}{r['requests']:>10}{r['wall_s']:>9.2f}{r['sim_loop_s']:>9.2f}"
              f"{r['sim_requests_per_s']:>12}{r['peak_rss_mb']:>9.0f}{r['offered_load']:>6.2f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
