"""What simsched costs around the simulation: start-up, tracking, sweep overhead (not a test).

    python benchmarks/overhead.py                          # this checkout
    python benchmarks/overhead.py --baseline ../old-tree   # side by side with another source tree

Each case runs ``python -m simsched`` in fresh processes (the source tree first on PYTHONPATH),
alternating between the trees so that both see the same machine load, ``--repeat`` times, and
reports the minimum and the median wall time. On a shared machine only ratios measured in the
same run mean much. Cases:

- ``startup``: a 10-request run, ``tracking=none``, no tables or plots (the speed issue's
  start-up figure); ``startup_default``: the same with the default outputs (tables and plot).
- ``tracking_existing`` / ``tracking_first``: the 10-request run with the default MLflow
  tracking, into a store that exists / in an empty folder; the command's extra wall time is the
  difference to ``startup_default``. ``..._fg``: the same with ``tracking.background=false``
  (the command waits until the run is logged; an older tree always does).
- ``sweep_basic_N`` / ``sweep_joblib_N`` / ``sweep_workers_N``: an N-job seed sweep of
  10-request jobs (simulation negligible), ``tracking=none``, on the default launcher (in one
  process), on Hydra's joblib launcher (2 processes), on two worker processes (simsched's
  launcher; joblib's for a tree without it); per-job overhead = (T(20) - T(1)) / 19, for the
  workers (T(20) - T(2)) / 18 (one job would run in the launching process).
- ``sweep_200x5000``: 200 jobs of 5,000 requests on two worker processes with MLflow tracking
  into a store that exists (``--big``; minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = ["output.quiet=true"]
TINY = ["workload.num_requests=10", "output.plots=false", "output.requests_table=false",
        "output.batches_table=false", *QUIET]


def timed(tree: Path, args: list[str], cwd: Path, timeout: float = 1800) -> float:
    if not (tree / "simsched" / "tracking_state.py").is_file():   # an older tree: always in the foreground
        args = [a for a in args if not a.startswith("tracking.background=")]
    env = dict(os.environ, PYTHONPATH=str(tree), MLFLOW_DISABLE_TELEMETRY="true")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "simsched", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            err.seek(0)
            raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{err.read().decode()[-2000:]}")
    CPU.append(usage.ru_utime + usage.ru_stime)   # this process and its waited-for children
    return wall


CPU: list[float] = []   # CPU seconds of the last timed command (read right after it)


def wait_for_tracking(folder: Path, timeout: float = 300) -> None:
    """A run that logs in the background: wait until its tracking.json says it ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = folder / "tracking.json"
        if not path.is_file() or json.loads(path.read_text()).get("state") in ("logged", "failed"):
            return
        time.sleep(0.2)


def cases(big: bool) -> dict[str, callable]:
    def run(extra: list[str], store: str | None = None):
        def go(tree: Path, work: Path) -> float:
            out = work / f"run{time.perf_counter_ns()}"
            folder = work / (store or "fresh")
            folder.mkdir(exist_ok=True)
            t = timed(tree, [*extra, f"hydra.run.dir={out}"], folder)
            wait_for_tracking(out)
            if store is None:
                shutil.rmtree(folder)
            return t
        return go

    def sweep(n: int, launcher: list[str] | None, extra: list[str]):
        """``launcher`` None: two worker processes, on simsched's launcher where the tree has
        it, else on joblib's (the fastest an older tree offers)."""
        def go(tree: Path, work: Path) -> float:
            chosen = launcher
            if chosen is None:
                ours = (tree / "hydra_plugins" / "simsched_plugins").is_dir()
                chosen = ["hydra.launcher.n_jobs=2"] if ours else ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
            return timed(tree, ["-m", f"seed=range(0,{n})", *extra, *chosen,
                                f"hydra.sweep.dir={work}/sw{time.perf_counter_ns()}"], work)
        return go

    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out = {
        "startup": run(["tracking=none", *TINY], "none"),
        "startup_default": run(["tracking=none", "workload.num_requests=10", *QUIET], "none"),
        "tracking_existing": run(["workload.num_requests=10", *QUIET], "store"),
        "tracking_first": run(["workload.num_requests=10", *QUIET], None),
        "tracking_existing_fg": run(["workload.num_requests=10", *QUIET, "tracking.background=false"], "store"),
        "tracking_first_fg": run(["workload.num_requests=10", *QUIET, "tracking.background=false"], None),
        "sweep_basic_1": sweep(1, [], ["tracking=none", *TINY]),
        "sweep_basic_20": sweep(20, [], ["tracking=none", *TINY]),
        "sweep_joblib_1": sweep(1, joblib, ["tracking=none", *TINY]),
        "sweep_joblib_20": sweep(20, joblib, ["tracking=none", *TINY]),
        "sweep_workers_2": sweep(2, None, ["tracking=none", *TINY]),   # 2 jobs: the workers start either way
        "sweep_workers_20": sweep(20, None, ["tracking=none", *TINY]),
    }
    if big:
        out["sweep_200x5000"] = sweep(200, None, ["workload.num_requests=5000", "output.plots=false", *QUIET,
                                                  "tracking.experiment=big"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="another source tree to run side by side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", help="comma-separated case names (default: all but the big sweep)")
    ap.add_argument("--big", action="store_true", help="also the 200-job sweep of 5,000-request jobs")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    trees = {"this": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    todo = cases(args.big)
    names = args.cases.split(",") if args.cases else list(todo)
    results: dict[str, dict[str, list[float]]] = {n: {t: [] for t in trees} for n in names}
    cpu: dict[str, dict[str, list[float]]] = {n: {t: [] for t in trees} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for label in trees:   # a store that exists already for tracking_existing, and warm caches
            (Path(tmp) / label / "store").mkdir(parents=True)
            (Path(tmp) / label / "none").mkdir(parents=True)
        for r in range(args.repeat):
            for name in names:
                for label, tree in trees.items():
                    t = todo[name](tree, Path(tmp) / label)
                    results[name][label].append(t)
                    cpu[name][label].append(CPU[-1])
                    print(f"{name:>20} {label:>9} #{r}: {t:7.2f} s wall, {CPU[-1]:6.2f} s CPU", flush=True)
    print(f"\n{'case':>20}" + "".join(f"{t + ' min':>14}{t + ' median':>16}" for t in trees)
          + ("    ratio (median)" if len(trees) > 1 else ""))
    summary = {}
    for name in names:
        row = {t: {"min_s": min(v), "median_s": statistics.median(v), "runs_s": v,
                   "cpu_min_s": min(cpu[name][t]), "cpu_median_s": statistics.median(cpu[name][t])}
               for t, v in results[name].items()}
        summary[name] = row
        line = f"{name:>20}" + "".join(f"{row[t]['min_s']:>14.2f}{row[t]['median_s']:>16.2f}" for t in trees)
        if len(trees) > 1:
            line += f"{row['this']['median_s'] / row['baseline']['median_s']:>18.2f}"
        print(line + "   CPU median " + ", ".join(f"{t} {row[t]['cpu_median_s']:.2f} s" for t in trees))
    for t in trees:
        per_job = {}
        for kind, first in (("basic", 1), ("joblib", 1), ("workers", 2)):
            a, b = f"sweep_{kind}_{first}", f"sweep_{kind}_20"
            if a in summary and b in summary:
                per_job[kind] = (summary[b][t]["median_s"] - summary[a][t]["median_s"]) / (20 - first)
        if per_job:
            print(f"{t}: per-job sweep overhead (median): "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in per_job.items()))
            summary.setdefault("per_job_overhead_s", {})[t] = per_job
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
