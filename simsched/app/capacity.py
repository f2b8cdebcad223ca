"""``python -m simsched.capacity``: the capacity of one or more schedulers (the largest λ whose
SLA violation rate stays within each target), by the bisection of ``simsched.capacity_search``
over simulated runs; writes tables and a plot, then logs one MLflow run."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from simsched.capacity_search import (CapacityResult, MapFn, ViolationAt, check_search_args, find_capacities,
                                      pool_map, simulated_violation)
from simsched.errors import ConfigError, check_positive
from simsched.workloads.rates import arrival_rate

USAGE = """python -m simsched.capacity [options] [config overrides ...]

Find the capacity (largest λ whose SLA violation rate is <= each target) of one or more
schedulers on the hardware and workload the overrides describe, e.g.

  python -m simsched.capacity --schedulers static_fifo,dynamic_no_bins,multi_bin_dynamic \\
      workload=poisson workload.num_requests=3000 sla.latency_s=20

The first scheduler is the baseline the others' capacity gains are stated against."""


def compose_config(overrides: list[str]) -> Any:
    """The project's config with these overrides; a bad one exits 2 with one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from simsched.app.cli import _fail, one_line
    from simsched.app.paths import config_dir
    from simsched.config import register_configs
    from simsched.run import build_components

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="capacity"):
        def base(ovs: list[str]) -> Any:
            return compose(config_name="config", overrides=ovs)

        try:
            cfg = base(overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            _fail(one_line(exc, overrides, base))
    build_components(cfg)   # a bad value: ConfigError naming its key
    return cfg


def _progress_map(inner: MapFn | None, label: str, estimate: int) -> tuple[MapFn, Any]:
    """Wrap a map_fn with a progress bar (runs done, ETA) and a line per evaluated λ."""
    from tqdm import tqdm

    bar = tqdm(total=estimate, desc=label, unit="run", file=sys.stderr, dynamic_ncols=True)

    def run(violation_at: ViolationAt, args: list[tuple[float, int]]) -> list[float]:
        values = list(inner(violation_at, args)) if inner else [violation_at(*a) for a in args]
        bar.update(len(values))
        if bar.n > bar.total:
            bar.total = bar.n
        shown = [1.0 if v != v else v for v in values]
        bar.write(f"  {label}: λ = {args[0][0]:.4g} req/s, violation {sum(shown) / len(shown):.2%} "
                  f"over {len(shown)} run(s)")
        return values
    return run, bar


def plot_curves(curves: dict[str, list[CapacityResult]], path: Path, metric: str) -> Path:
    """Violation vs λ per scheduler (mean ± 95% CI), the targets and the capacities found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, results in curves.items():
        pts = results[0].curve
        ci = [0.0 if p.ci95 != p.ci95 else p.ci95 for p in pts]
        yerr = [[min(c, p.mean) for c, p in zip(ci, pts)], [min(c, 1 - p.mean) for c, p in zip(ci, pts)]]
        line = ax.errorbar([p.rate for p in pts], [p.mean for p in pts], yerr=yerr, marker="o", ms=3,
                           capsize=2, label=name)
        for r in results:
            if r.capacity == r.capacity:
                ax.axvline(r.capacity, color=line[0].get_color(), ls=":", lw=1)
    targets = sorted({r.target for rs in curves.values() for r in rs})
    for t in targets:
        ax.axhline(t, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("arrival rate λ (req/s)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("SLA violation vs λ (dotted: capacity per target)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, list[CapacityResult]]:
    import argparse
    import json
    import time

    import pandas as pd

    parser = argparse.ArgumentParser(prog="python -m simsched.capacity", usage=USAGE)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m simsched")
    parser.add_argument("--schedulers", help="comma-separated scheduler options (default: the config's)")
    parser.add_argument("--targets", default="0.01,0.05",
                        help="comma-separated violation-rate targets (default: 0.01,0.05)")
    parser.add_argument("--lo", type=float, help="first guess of a rate meeting the targets (default: λ/2)")
    parser.add_argument("--hi", type=float, help="first guess of a rate violating them (default: 2λ)")
    parser.add_argument("--replications", type=int, default=3, help="seeds per rate (default: 3)")
    parser.add_argument("--rel-tol", type=float, default=0.02, help="bracket width / capacity (default: 0.02)")
    parser.add_argument("--metric", default="sla_violation_rate",
                        help="metric compared with the target (default: sla_violation_rate; "
                             "sla_violation_rate_with_rejected counts rejected requests)")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the replications (default: 1)")
    parser.add_argument("--out", help="output folder (default: capacity/<date>_<time>)")
    args = parser.parse_intermixed_args(argv)

    from simsched.config import build
    from simsched.app.report import gain_line
    from simsched.run import flat_params
    from simsched.tracking import git_commit

    check_positive("--jobs", args.jobs, integer=True)
    try:
        args.targets = [float(t) for t in str(args.targets).split(",") if t.strip()]
    except ValueError:
        raise ConfigError("--targets", "must be comma-separated numbers", args.targets) from None
    base = compose_config(list(args.overrides))
    names = [s.strip() for s in args.schedulers.split(",") if s.strip()] if args.schedulers \
        else [str(base.scheduler.get("name", "scheduler"))]
    configs = {n: (compose_config(list(args.overrides) + [f"scheduler={n}"]) if args.schedulers else base)
               for n in names}
    rate = arrival_rate(base)
    lo = args.lo if args.lo is not None else (rate / 2 if rate == rate else None)
    hi = args.hi if args.hi is not None else (2 * rate if rate == rate else None)
    if lo is None or hi is None:
        raise ConfigError("--lo", "give --lo and --hi: this workload has no nominal arrival rate")
    for t in args.targets:
        check_search_args(t, lo, hi, args.replications, args.rel_tol)
    out = Path(args.out) if args.out else Path("capacity") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)

    inner = pool_map(args.jobs) if args.jobs > 1 else None
    steps = 2 + math.ceil(math.log2(max(hi - lo, 1e-12) / (args.rel_tol * lo))) if hi > lo else 2
    results: dict[str, list[CapacityResult]] = {}
    for name, cfg in configs.items():
        cfg.output.quiet = True
        map_fn, bar = _progress_map(inner, name, (steps + len(args.targets)) * args.replications)
        try:
            results[name] = find_capacities(simulated_violation(cfg, args.metric), args.targets, lo, hi,
                                            args.replications, args.rel_tol, map_fn=map_fn)
        finally:
            bar.close()

    rows, curve_rows, lines = [], [], []
    baseline = names[0]
    for name, res in results.items():
        for r in res:
            base_cap = next(b.capacity for b in results[baseline] if b.target == r.target)
            ratio = r.capacity / base_cap if base_cap == base_cap and base_cap > 0 else math.nan
            rows.append({"scheduler": name, **r.row(), "ratio_vs_baseline": ratio, "baseline": baseline})
            lines.append(f"{name}: capacity @ {r.target:.0%} = {r.capacity:.4g} req/s "
                         f"(bracket {r.bracket[0]:.4g} – {r.bracket[1]:.4g}, {r.status})")
            if r.status == "above_range":
                lines.append("  (the highest λ tried still meets the target: a finite workload may drain "
                             "before overload shows; raise workload.num_requests or --hi)")
            elif r.status == "below_range":
                lines.append("  (even the lowest λ tried violates the target: lower --lo, or the SLA "
                             "cannot be met on this hardware)")
        for p in res[0].curve:
            curve_rows.append({"scheduler": name, "rate_rps": p.rate, "violation_mean": p.mean,
                               "violation_ci95": p.ci95, "values": json.dumps(list(p.values))})
    for name in names[1:]:
        for r, b in zip(results[name], results[baseline]):
            lines.append(gain_line(name, baseline, r.target, b.capacity, r.capacity,
                                   ">=" if b.status == "above_range" else "=",
                                   ">=" if r.status == "above_range" else "="))
    table = pd.DataFrame(rows)
    table.to_csv(out / "capacity.csv", index=False)
    pd.DataFrame(curve_rows).to_csv(out / "curve.csv", index=False)
    png = plot_curves(results, out / "violation_vs_rate.png", args.metric)
    from omegaconf import OmegaConf

    OmegaConf.save(base, out / "config.yaml")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"outputs in {out}")

    if base.get("tracking") is not None:
        tracker = build(base.tracking, "tracking")
        params = {f"capacity.{k}": v for k, v in vars(args).items() if k != "overrides"}
        params["capacity.overrides"] = " ".join(args.overrides)
        params |= flat_params(base)
        metrics = {}
        for row in rows:
            pct = f"{row['target'] * 100:g}pct"
            metrics[f"capacity_{row['scheduler']}_{pct}"] = row["capacity_rps"]
            metrics[f"ratio_{row['scheduler']}_{pct}"] = row["ratio_vs_baseline"]
        tags = {"simsched.kind": "capacity", "schedulers": ",".join(names), "git_commit": git_commit(),
                "workload": str(base.workload.get("name", "")), "gpus": str(base.gpus.get("count", "")),
                "mlflow.runName": f"capacity {','.join(names)}"}
        tracker.log_run(out, params, metrics, [out / "capacity.csv", out / "curve.csv", png,
                                               out / "config.yaml", out / "summary.txt"], tags)
    return results


def cli() -> None:
    """The command: one line and exit code 2 for a user's mistake."""
    import os

    from simsched.app.cli import run_command

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    run_command(main)
