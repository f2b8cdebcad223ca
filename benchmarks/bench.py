"""Speed benchmark of simsched in every regime (not a timed test): ``python benchmarks/bench.py``.

Each figure is measured for the working tree ("current") and for a baseline commit
(``--baseline``, default: the last ``main`` commit before the compiled engine of issue 13),
both copied into a temporary folder and run by this same script in fresh processes, and is
reported as min and median over ``--repeats`` with the ratio baseline / current (> 1: current is
faster). What is measured (``--regimes``, default all):

- ``light``, ``rho08``, ``overload``, ``trace``: the simulation loop's own rate (requests per
  second of ``simulate``, in-process after a warm-up, so without start-up and the one-time JIT
  load) for the four modes: Poisson arrivals, 4 GPUs, K = 4 for the multi-bin modes, at the
  default λ = 4 req/s (light load, mean batch <= 3), at offered load ρ ~0.8 and ~1.5 of
  multi_bin_dynamic's saturation throughput μ_sat (a baseline tree without μ_sat: its reference
  capacity), and replaying a synthetic Azure-format trace (bursty arrivals, long
  prompts, short outputs) scaled to load ~0.8, at each of ``--sizes``. The baseline runs at most
  ``--baseline-size`` requests (its loop takes ~30 s per million at light load).
- ``ksweep``: the loop rate of ``multi_bin_dynamic`` and ``multi_bin_static`` for K = 1..16 at ~0.8.
- ``process``: ``python -m simsched`` end to end (``tracking=none``, Parquet outputs written, no
  plot): wall time, CPU time and peak RSS at ``--process-size`` requests per regime; ``memory``: the same
  at ``--memory-size`` (10M) for light load and ~0.8 (current only unless ``--baseline-memory``).
- ``jit``: importing numba, the first call of the compiled loop with an empty numba cache
  (compilation) and with a warm one (loading).
- ``startup``: a 10-request run with ``tracking=none``.
- ``tracking``: the default MLflow tracking's extra seconds per run, in an empty folder (first
  run) and with an existing store.
- ``sweep``: a ``--sweep-jobs``-job sweep of 5,000-request jobs (default tracking, a new store) on
  the default launcher in one process, on two worker processes and on Hydra's joblib launcher:
  the sweep's wall time and the seconds per job beyond the jobs' own simulations.

Prints one table and writes ``results.json`` into ``--out`` (default
``outputs/bench/<date>_<time>/``); ``--update-committed`` also writes ``benchmarks/results.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "probe.py"
BASELINE = "eeb6de8"     # main before issue 13's compiled engine
MODES = ("static_fifo", "dynamic_no_bins", "multi_bin_dynamic", "multi_bin_static")
REGIMES = ("jit", "light", "rho08", "overload", "trace", "ksweep", "process", "memory", "startup", "tracking",
           "sweep")
POISSON = ["workload=poisson", "gpus.count=4", "scheduler.k_bins=4"]
QUIET = ["tracking=none", "output.plots=false", "output.quiet=true"]


class Tree:
    """One version of the code, runnable with ``PYTHONPATH=root``, with its own numba cache."""

    def __init__(self, name: str, root: Path, work: Path):
        self.name, self.root = name, root
        self.numba_cache = work / f"numba-{name}"
        self.numba_cache.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SIMSCHED_JIT", "PYTHONPATH")}
        env.update(PYTHONPATH=str(self.root), MLFLOW_DISABLE_TELEMETRY="true", NUMBA_CACHE_DIR=str(self.numba_cache))
        env.update(extra)
        return env

    def run(self, args: list[str], cwd: Path, **extra: str) -> tuple[float, float, str, float]:
        """One fresh process: wall seconds, peak RSS (MB, from wait4), stdout and CPU seconds."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=self.env(**extra), stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise SystemExit(f"[{self.name}] failed: {' '.join(args)}\n{err.read()[-3000:]}")
            return wall, usage.ru_maxrss / 1024, out.read(), usage.ru_utime + usage.ru_stime

    def simsched(self, overrides: list[str], cwd: Path, **extra: str) -> tuple[float, float, str, float]:
        return self.run(["-m", "simsched", *overrides], cwd, **extra)


def sized(overrides: list[str], n: int) -> list[str]:
    """``overrides`` plus the request count (a trace replay takes its first n requests)."""
    trace = any(o.startswith("workload=") and o.endswith("_trace") for o in overrides)
    return [*overrides, f"workload.{'max_requests' if trace else 'num_requests'}={n}"]


def _copy_tree(dest: Path, files: list[str], source: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)


def _link_package_data(root: Path) -> None:
    """conf/ and sweeps/ ship as simsched.conf and simsched.sweeps (pyproject package-dir)."""
    for name in ("conf", "sweeps"):
        if (root / name).is_dir() and not (root / "simsched" / name).exists():
            (root / "simsched" / name).symlink_to(root / name, target_is_directory=True)


def make_trees(work: Path, baseline: str) -> list[Tree]:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    current = work / "current"
    _copy_tree(current, [f for f in files if (REPO / f).is_file()], REPO)
    _link_package_data(current)
    trees = [Tree("current", current, work)]
    if baseline != "none":
        base = work / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "archive", baseline], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        _link_package_data(base)
        trees.append(Tree("baseline", base, work))
    return trees


def write_trace(path: Path, n: int, seed: int = 0) -> None:
    """A synthetic trace in the Azure LLM 2023 format: Gamma arrivals (CV 2) at ~5 req/s with
    a slow sinusoidal swing, log-normal prompts (median 1,000) and outputs (median 40)."""
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(0.25, 0.8, n)                       # mean 0.2 s, CV 2
    t = np.cumsum(gaps * (1.0 + 0.5 * np.sin(np.arange(n) / 20_000.0)))
    ns = (t * 1e9).astype(np.int64)
    stamps = np.datetime64("2023-11-16T18:00:00", "ns") + ns.astype("timedelta64[ns]")
    text = np.char.add(np.char.replace(np.datetime_as_string(stamps, unit="us"), "T", " "), "0")
    prompt = np.clip(np.rint(1000 * np.exp(1.0 * rng.standard_normal(n))), 1, 8000).astype(np.int64)
    output = np.clip(np.rint(40 * np.exp(1.0 * rng.standard_normal(n))), 1, 2000).astype(np.int64)
    with open(path, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for i in range(0, n, 100_000):
            rows = zip(text[i:i + 100_000], prompt[i:i + 100_000], output[i:i + 100_000])
            f.write("".join(f"{a},{b},{c}\n" for a, b, c in rows))


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "n": len(values)}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.rows: list[dict] = []
        self.trees = make_trees(work, args.baseline)
        self._capacity: float | None = None

    def add(self, regime: str, case: str, figure: str, unit: str, values: dict[str, list[float]],
            higher_is_better: bool = False, **info) -> None:
        row = {"regime": regime, "case": case, "figure": figure, "unit": unit}
        for name, v in values.items():
            if v:
                row[name] = stats(v)
        if "current" in row and "baseline" in row:
            c, b = row["current"]["median"], row["baseline"]["median"]
            row["ratio"] = (c / b if higher_is_better else b / c) if b and c else None
        row.update(info)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    # --- the simulation loop ------------------------------------------------------------------

    def probe_loop(self, tree: Tree, n: int, modes: list[str], overrides: list[str]) -> dict:
        args = [str(PROBE), "loop", str(tree.root / "conf"), str(self.args.repeats), ",".join(modes),
                *sized(overrides, n)]
        out = tree.run(args, self.work)[2]
        return json.loads(out.strip().splitlines()[-1])

    def capacity(self) -> float:
        """multi_bin_dynamic's saturation throughput on the Poisson workload (the current tree's)."""
        if self._capacity is None:
            r = self.probe_loop(self.trees[0], 50_000, ["multi_bin_dynamic"], POISSON)
            self._capacity = r["multi_bin_dynamic"]["capacity_rps"]
        return self._capacity

    def loop_regime(self, regime: str, overrides: list[str], modes=MODES, suffix: str = "") -> None:
        sizes = [int(x) for x in self.args.sizes.split(",")]
        for size in sizes:
            results = {}
            for tree in self.trees:
                n = size if tree.name == "current" else min(size, self.args.baseline_size)
                results[tree.name] = self.probe_loop(tree, n, list(modes), overrides)
            label = f" ({size:,})" if len(sizes) > 1 else ""
            for mode in modes:
                rates = {t: [r[mode]["requests"] / s for s in r[mode]["loop_s"]] for t, r in results.items()}
                cur = results["current"][mode]
                self.add(regime, mode + suffix + label, "loop rate", "requests/s", rates, higher_is_better=True,
                         requests={t: r[mode]["requests"] for t, r in results.items()},
                         mean_batch_size=round(cur["mean_batch_size"], 2), offered_load=round(cur["offered_load"], 3))

    def trace_file(self) -> Path:
        path = self.work / "trace_azure_format.csv"
        if not path.exists():
            write_trace(path, max([int(x) for x in self.args.sizes.split(",")] + [self.args.process_size]))
        return path

    def trace_overrides(self) -> list[str]:
        # The trace's mean token counts differ from the Poisson workload's: aim at ~0.8 of the
        # capacity measured on the trace itself (a short probe at an arbitrary rate first).
        base = ["workload=azure_trace", f"workload.path={self.trace_file()}", "gpus.count=4", "scheduler.k_bins=4"]
        probe = self.probe_loop(self.trees[0], 50_000, ["multi_bin_dynamic"],
                                base + ["workload.target_rate=10"])
        rate = 0.8 * probe["multi_bin_dynamic"]["capacity_rps"]
        return base + [f"workload.target_rate={rate:.4f}"]

    # --- whole processes --------------------------------------------------------------------

    def process(self, regime: str, case: str, overrides: list[str], n: int, trees: list[Tree], repeats: int) -> None:
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        rss: dict[str, list[float]] = {}
        for tree in trees:
            reps = repeats if tree.name == "current" else self.args.baseline_repeats
            for _ in range(reps):
                out = Path(tempfile.mkdtemp(dir=self.work))
                wall, peak, _, cpu = tree.simsched([*QUIET, *sized(overrides, n), f"hydra.run.dir={out}"], self.work)
                walls.setdefault(tree.name, []).append(wall)
                cpus.setdefault(tree.name, []).append(cpu)
                rss.setdefault(tree.name, []).append(peak)
                shutil.rmtree(out)
        self.add(regime, case, "wall", "s", walls, requests=n)
        self.add(regime, case, "cpu (user+sys)", "s", cpus, requests=n)
        self.add(regime, case, "peak RSS", "MB", rss, requests=n)

    def jit(self) -> None:
        tree = self.trees[0]
        shutil.rmtree(tree.numba_cache)
        tree.numba_cache.mkdir()
        def probe() -> dict:
            out = tree.run([str(PROBE), "jit"], self.work, SIMSCHED_JIT="1")[2]
            return json.loads(out.strip().splitlines()[-1])

        cold = probe()
        warm = [probe() for _ in range(self.args.repeats)]
        self.add("jit", "import numba", "time", "s", {"current": [w["numba_import_s"] for w in warm]})
        self.add("jit", "first call, empty cache (compile)", "time", "s", {"current": [cold["first_call_s"]]})
        self.add("jit", "first call, warm cache (load)", "time", "s", {"current": [w["first_call_s"] for w in warm]})

    def startup(self) -> None:
        times = {}
        for tree in self.trees:
            times[tree.name] = [tree.simsched([*QUIET, "workload.num_requests=10", "output.requests_table=false",
                                               "output.batches_table=false",
                                               f"hydra.run.dir={tempfile.mkdtemp(dir=self.work)}"], self.work)[0]
                                for _ in range(max(self.args.repeats, 5))]
        self.add("startup", "10 requests, tracking=none", "wall", "s", times)

    def tracking(self) -> None:
        first, extra = {}, {}
        for tree in self.trees:
            folder = Path(tempfile.mkdtemp(dir=self.work))
            plain = ["workload.num_requests=10", "output.plots=false", "output.quiet=true"]
            none = min(tree.simsched(["tracking=none", *plain, f"hydra.run.dir={folder}/n{i}"], folder)[0]
                       for i in range(3))
            walls = [tree.simsched([*plain, f"hydra.run.dir={folder}/t{i}"], folder)[0]
                     for i in range(1 + self.args.repeats)]
            first[tree.name] = [walls[0] - none]
            extra[tree.name] = [w - none for w in walls[1:]]
        self.add("tracking", "first run in an empty folder", "extra wall", "s", first)
        self.add("tracking", "run with an existing store", "extra wall", "s", extra)

    def sweep(self) -> None:
        """A ``--sweep-jobs``-job sweep of 5,000-request jobs, default MLflow tracking into a store
        created on the way, on three launchers: the default one in one process, two worker
        processes (simsched's launcher; Hydra's joblib launcher for a tree without it) and Hydra's
        joblib launcher. Rows: the sweep's wall time, and the seconds per job beyond the jobs' own
        simulations (charged per core where jobs overlap)."""
        for launcher in ("basic", "workers", "joblib"):
            per_job, walls = {}, {}
            for tree in self.trees:
                jobs = self.args.sweep_jobs if tree.name == "current" else min(self.args.sweep_jobs,
                                                                              self.args.baseline_sweep_jobs)
                folder = Path(tempfile.mkdtemp(dir=self.work))
                args = ["-m", f"seed=range(0,{jobs})", "workload.num_requests=5000", "output.plots=false",
                        "output.quiet=true", f"hydra.sweep.dir={folder}/sweep"]
                if launcher == "joblib":
                    args.append("hydra/launcher=joblib")
                elif launcher == "workers":
                    ours = (tree.root / "hydra_plugins" / "simsched_plugins" / "launcher.py").is_file()
                    args += ["hydra.launcher.n_jobs=2"] if ours else ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
                wall = tree.simsched(args, folder)[0]
                sims = 0.0
                for f in (folder / "sweep").rglob("metrics.json"):
                    m = json.loads(f.read_text())
                    sims += m.get("workload_wall_s", 0.0) + m.get("sim_wall_s", 0.0)
                if launcher != "basic":     # jobs overlap on the cores: charge the simulations per core
                    sims /= min(os.cpu_count() or 1, jobs)
                per_job[tree.name] = [(wall - sims) / jobs]
                walls[tree.name] = [wall]
            counts = {"current": self.args.sweep_jobs, "baseline": min(self.args.sweep_jobs, self.args.baseline_sweep_jobs)}
            self.add("sweep", f"{launcher} launcher", "overhead per job", "s", per_job, jobs=counts)
            self.add("sweep", f"{launcher} launcher", "sweep wall", "s", walls, jobs=counts)

    def run(self) -> None:
        a = self.args
        regimes = a.regimes.split(",")
        for regime in regimes:
            t0 = time.perf_counter()
            if regime == "jit":
                self.jit()
            elif regime == "light":
                self.loop_regime("light", POISSON)
            elif regime in ("rho08", "overload"):
                rate = (0.8 if regime == "rho08" else 1.5) * self.capacity()
                self.loop_regime(regime, POISSON + [f"workload.arrivals.rate={rate:.4f}"])
            elif regime == "trace":
                self.loop_regime("trace", self.trace_overrides())
            elif regime == "ksweep":
                rate = 0.8 * self.capacity()
                for k in (1, 2, 4, 8, 16):
                    self.loop_regime("ksweep", POISSON[:2] + [f"workload.arrivals.rate={rate:.4f}",
                                                              f"scheduler.k_bins={k}"],
                                     modes=("multi_bin_dynamic", "multi_bin_static"), suffix=f" K={k}")
            elif regime == "process":
                cap = self.capacity()
                cases = [("light", POISSON), ("rho08", POISSON + [f"workload.arrivals.rate={0.8 * cap:.4f}"]),
                         ("overload", POISSON + [f"workload.arrivals.rate={1.5 * cap:.4f}"]),
                         ("trace", self.trace_overrides())]
                for case, ovs in cases:
                    self.process("process", f"{case}, multi_bin_dynamic", ovs, a.process_size, self.trees, a.repeats)
            elif regime == "memory":
                cap = self.capacity()
                trees = self.trees if a.baseline_memory else self.trees[:1]
                for case, ovs in [("light", POISSON), ("rho08", POISSON + [f"workload.arrivals.rate={0.8 * cap:.4f}"])]:
                    self.process("memory", f"{case}, multi_bin_dynamic", ovs, a.memory_size, trees, 1)
            elif regime == "startup":
                self.startup()
            elif regime == "tracking":
                self.tracking()
            elif regime == "sweep":
                self.sweep()
            else:
                raise SystemExit(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
            print(f"# {regime}: {time.perf_counter() - t0:.0f} s", flush=True)


def _fmt(v: float, unit: str) -> str:
    if unit == "requests/s":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"
    if unit == "MB":
        return f"{v:,.0f}"
    return f"{v:.2f}"


def table(rows: list[dict]) -> str:
    head = f"{'regime':<9} {'case':<36} {'figure':<17} {'current min / med':>20} {'baseline min / med':>20} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for name in ("current", "baseline"):
            s = r.get(name)
            cells.append(f"{_fmt(s['min'], r['unit'])} / {_fmt(s['median'], r['unit'])}" if s else "-")
        ratio = f"{r['ratio']:.1f}x" if r.get("ratio") else "-"
        lines.append(f"{r['regime']:<9} {r['case'][:36]:<36} {(r['figure'] + ' (' + r['unit'] + ')')[:17]:<17} "
                     f"{cells[0]:>20} {cells[1]:>20} {ratio:>6}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated, of: {', '.join(REGIMES)}")
    ap.add_argument("--sizes", default="1000000", help="requests per loop run (comma-separated: each size)")
    ap.add_argument("--process-size", type=int, default=1_000_000, help="requests per whole-process run")
    ap.add_argument("--memory-size", type=int, default=10_000_000, help="requests per memory run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=BASELINE, help="commit to compare against ('none': no baseline)")
    ap.add_argument("--baseline-size", type=int, default=100_000, help="requests per baseline loop run")
    ap.add_argument("--baseline-repeats", type=int, default=1, help="repeats of baseline whole-process runs")
    ap.add_argument("--baseline-memory", action="store_true", help="also run the baseline at --memory-size")
    ap.add_argument("--sweep-jobs", type=int, default=200)
    ap.add_argument("--baseline-sweep-jobs", type=int, default=40)
    ap.add_argument("--out", default=None, help="output folder (default outputs/bench/<date>_<time>/)")
    ap.add_argument("--update-committed", action="store_true", help="also write benchmarks/results.json")
    args = ap.parse_args()
    out = Path(args.out or REPO / "outputs" / "bench" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="simsched-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.run()
    total = time.perf_counter() - t0
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "python": sys.version.split()[0],
        "cpus": os.cpu_count(), "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        "baseline": args.baseline, "current_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "arguments": vars(args), "bench_wall_s": round(total), "rows": bench.rows,
    }
    text = json.dumps(result, indent=1) + "\n"
    (out / "results.json").write_text(text)
    print()
    print(table(bench.rows))
    print(f"\n{total:.0f} s; written to {out / 'results.json'}")
    if args.update_committed:
        (REPO / "benchmarks" / "results.json").write_text(text)
        print(f"and to {REPO / 'benchmarks' / 'results.json'}")


if __name__ == "__main__":
    main()
