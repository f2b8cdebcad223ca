"""Capacity search: the largest arrival rate λ whose SLA violation rate stays at or below a target.

The search is plain bisection on λ over the *mean* violation rate of ``replications`` runs
(replication ``r`` uses seed ``r`` at every λ: common random numbers keep the curve nearly
monotone, so bisection does not chase noise). It knows nothing about the simulator: give it
``violation_at(rate, replication) -> violation rate``. ``simulated_violation`` adapts a simsched
config to that signature; ``with_arrival_rate`` sets a config's rate.

    result = find_capacity(violation_at, target=0.05, lo=1.0, hi=20.0, replications=3, rel_tol=0.01)
    result.capacity, result.bracket, result.curve

``capacity`` is the largest *evaluated* rate whose mean violation met the target (conservative);
the true crossing lies in ``bracket = (capacity, first rate seen violating)``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from simsched.errors import ConfigError, check_positive

ViolationAt = Callable[[float, int], float]
# map_fn(violation_at, [(rate, replication), ...]) -> violation rates, in order.
MapFn = Callable[[ViolationAt, list[tuple[float, int]]], Iterable[float]]


@dataclass(frozen=True)
class CurvePoint:
    """Violation rate at one λ: mean over replications and its 95% confidence half-width."""

    rate: float
    mean: float
    ci95: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class CapacityResult:
    """``status``: ``ok`` (bracketed to ``rel_tol``), ``below_range`` (even the lowest rate tried
    violates: capacity is NaN, bracket (0, that rate)) or ``above_range`` (the highest rate tried
    still meets the target: capacity is a lower bound, bracket (that rate, inf))."""

    target: float
    capacity: float
    bracket: tuple[float, float]
    curve: tuple[CurvePoint, ...]
    replications: int
    status: str
    evaluations: int

    def row(self) -> dict[str, Any]:
        """A flat summary (one table row)."""
        lo, hi = self.bracket
        return {"target": self.target, "capacity_rps": self.capacity, "bracket_lo_rps": lo,
                "bracket_hi_rps": hi, "replications": self.replications, "status": self.status,
                "evaluations": self.evaluations}


@dataclass
class _Evaluator:
    """Memoised mean violation per rate, shared by the searches for several targets."""

    violation_at: ViolationAt
    replications: int
    map_fn: MapFn | None = None
    points: dict[float, CurvePoint] = field(default_factory=dict)
    evaluations: int = 0

    def mean(self, rate: float) -> float:
        if rate not in self.points:
            args = [(rate, r) for r in range(self.replications)]
            values = [float(v) for v in (self.map_fn(self.violation_at, args) if self.map_fn
                                         else (self.violation_at(*a) for a in args))]
            self.evaluations += len(values)
            # A run with nothing measured (NaN) counts as violating: it cannot show it met the SLA.
            values = [1.0 if v != v else v for v in values]
            self.points[rate] = CurvePoint(rate, sum(values) / len(values), ci95_halfwidth(values),
                                           tuple(values))
        return self.points[rate].mean

    def curve(self) -> tuple[CurvePoint, ...]:
        return tuple(self.points[r] for r in sorted(self.points))


def ci95_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the two-sided 95% Student-t confidence interval of the mean (NaN for n < 2)."""
    n = len(values)
    if n < 2:
        return math.nan
    from scipy.stats import t

    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return float(t.ppf(0.975, n - 1) * s / math.sqrt(n))


def _check(target: float, lo: float, hi: float, replications: int, rel_tol: float) -> None:
    check_positive("target", target)
    if target >= 1:
        raise ConfigError("target", "must be a violation rate in (0, 1)", target)
    check_positive("lo", lo)
    check_positive("hi", hi)
    if hi <= lo:
        raise ConfigError("hi", f"must be > lo ({lo})", hi)
    check_positive("replications", replications, integer=True)
    check_positive("rel_tol", rel_tol)


def _search(ev: _Evaluator, target: float, lo: float, hi: float, rel_tol: float,
            max_expand: int) -> CapacityResult:
    # Bracket: lo must meet the target and hi must violate it; halve / double until they do.
    for _ in range(max_expand):
        if ev.mean(lo) <= target:
            break
        lo, hi = lo / 2.0, lo
    for _ in range(max_expand):
        if ev.mean(hi) > target:
            break
        lo, hi = hi, hi * 2.0
    if ev.mean(lo) > target:
        return CapacityResult(target, math.nan, (0.0, lo), ev.curve(), ev.replications, "below_range",
                              ev.evaluations)
    if ev.mean(hi) <= target:
        return CapacityResult(target, hi, (hi, math.inf), ev.curve(), ev.replications, "above_range",
                              ev.evaluations)
    # Tighten with what earlier searches (other targets) already evaluated.
    for rate, point in ev.points.items():
        if lo < rate < hi:
            if point.mean <= target:
                lo = rate
            else:
                hi = rate
    while hi - lo > rel_tol * lo:
        mid = 0.5 * (lo + hi)
        if ev.mean(mid) <= target:
            lo = mid
        else:
            hi = mid
    return CapacityResult(target, lo, (lo, hi), ev.curve(), ev.replications, "ok", ev.evaluations)


def find_capacity(violation_at: ViolationAt, target: float, lo: float, hi: float,
                  replications: int = 3, rel_tol: float = 0.01, *, max_expand: int = 8,
                  map_fn: MapFn | None = None) -> CapacityResult:
    """Largest λ in a bisection bracket whose mean violation rate (over ``replications`` runs)
    is <= ``target``. ``[lo, hi]`` is a first guess: it is halved / doubled (at most
    ``max_expand`` times) until ``lo`` meets and ``hi`` violates the target. Stops when the
    bracket is narrower than ``rel_tol`` × its low end. ``map_fn(violation_at, [(rate, r), ...])``
    may evaluate the replications of one λ in parallel (see ``pool_map``)."""
    return find_capacities(violation_at, [target], lo, hi, replications, rel_tol,
                           max_expand=max_expand, map_fn=map_fn)[0]


def find_capacities(violation_at: ViolationAt, targets: Sequence[float], lo: float, hi: float,
                    replications: int = 3, rel_tol: float = 0.01, *, max_expand: int = 8,
                    map_fn: MapFn | None = None) -> list[CapacityResult]:
    """``find_capacity`` for several targets, sharing every evaluation (one curve)."""
    for t in targets:
        _check(t, lo, hi, replications, rel_tol)
    ev = _Evaluator(violation_at, int(replications), map_fn)
    results = [_search(ev, float(t), float(lo), float(hi), float(rel_tol), max_expand) for t in targets]
    # Every result carries the full curve seen by all searches.
    curve = ev.curve()
    return [CapacityResult(r.target, r.capacity, r.bracket, curve, r.replications, r.status, ev.evaluations)
            for r in results]


# --- configs -----------------------------------------------------------------------------------

def with_arrival_rate(cfg: Any, rate: float) -> Any:
    """A copy of a simsched config whose workload's mean arrival rate is ``rate`` (req/s).

    Trace replays set ``workload.target_rate``; windowed Gamma scales every window's rate;
    Poisson and Gamma-with-rate+cv set ``workload.arrivals.rate``; Gamma given by shape+scale
    keeps its shape (its burstiness) and sets ``scale = 1/(rate·shape)``; ON/OFF scales both
    phase rates by the same factor. Anything else is a ConfigError naming the node.
    """
    from omegaconf import OmegaConf

    check_positive("rate", rate)
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    workload = out.get("workload")
    if workload is not None and "target_rate" in workload and "path" in workload:
        workload.target_rate = float(rate)   # a trace: replayed at the rate that gives this mean
        workload.rps_scale = 1.0
        return out
    arrivals = workload.get("arrivals") if workload is not None else None
    if arrivals is None:
        raise ConfigError("workload.arrivals", "this workload has no arrival process whose rate can be set")
    keys = set(arrivals.keys())
    if "rates" in keys and "window_s" in keys:   # windowed Gamma: keep the pattern, scale its level
        current = arrival_rate(out)
        arrivals.rates = [float(r) * float(rate) / current for r in arrivals.rates]
    elif "rate_on" in keys and "rate_off" in keys:
        current = arrival_rate(out)
        factor = float(rate) / current
        arrivals.rate_on = float(arrivals.rate_on) * factor
        arrivals.rate_off = float(arrivals.rate_off) * factor
    elif "rate" in keys and (arrivals.get("rate") is not None or "shape" not in keys):
        arrivals.rate = float(rate)
    elif "shape" in keys and arrivals.get("shape") is not None:
        arrivals.scale = 1.0 / (float(rate) * float(arrivals.shape))
    else:
        raise ConfigError("workload.arrivals", "cannot set the arrival rate of this process",
                          arrivals.get("_target_"))
    return out


def arrival_rate(cfg: Any) -> float:
    """The nominal mean arrival rate (req/s) of a config's workload, or NaN when it has none."""
    workload = cfg.get("workload") if hasattr(cfg, "get") else None
    arrivals = workload.get("arrivals") if workload is not None else None
    if arrivals is None:
        return math.nan
    get = arrivals.get
    if get("rates") is not None:
        rates = [float(r) for r in get("rates")]
        return sum(rates) / len(rates)
    if get("rate_on") is not None and get("rate_off") is not None:
        on, off = float(get("mean_on_s")), float(get("mean_off_s"))
        return (float(get("rate_on")) * on + float(get("rate_off")) * off) / (on + off)
    if get("rate") is not None:
        return float(get("rate"))
    if get("shape") is not None and get("scale") is not None:
        return 1.0 / (float(get("shape")) * float(get("scale")))
    return math.nan


def simulated_violation(cfg: Any, metric: str = "sla_violation_rate") -> ViolationAt:
    """``violation_at(rate, r)`` for a simsched config: simulate it at ``rate`` with seed
    ``cfg.seed + r`` (nothing written to disk) and return ``metric`` from its metrics."""
    from omegaconf import OmegaConf

    base_seed = int(cfg.get("seed", 0))
    # A plain copy: composed configs carry schema classes that cannot be pickled to a process pool.
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return _SimulatedViolation(plain, metric, base_seed)


@dataclass(frozen=True)
class _SimulatedViolation:
    """A picklable callable (process pools can ship it)."""

    cfg: Any
    metric: str
    base_seed: int

    def __call__(self, rate: float, replication: int) -> float:
        from simsched.run import simulate_config

        cfg = with_arrival_rate(self.cfg, rate)
        cfg.seed = self.base_seed + int(replication)
        _, metrics, _ = simulate_config(cfg)
        if self.metric not in metrics:
            raise ConfigError("metric", "not a metric of a run", self.metric)
        value = metrics[self.metric]
        return math.nan if value is None else float(value)


# --- the command -------------------------------------------------------------------------------

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

    from simsched.__main__ import CONFIG_DIR
    from simsched.cli import _fail, one_line
    from simsched.config import register_configs
    from simsched.run import build_components

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="capacity"):
        def base(ovs: list[str]) -> Any:
            return compose(config_name="config", overrides=ovs)

        try:
            cfg = base(overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            _fail(one_line(exc, overrides, base))
    build_components(cfg)   # a bad value: ConfigError naming its key
    return cfg


def pool_map(jobs: int) -> MapFn:
    """A ``map_fn`` running the replications of one λ in ``jobs`` processes."""
    def run(violation_at: ViolationAt, args: list[tuple[float, int]]) -> list[float]:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(args))) as pool:
            return list(pool.map(violation_at, [a[0] for a in args], [a[1] for a in args]))
    return run


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
    from simsched.report import gain_line
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
        _check(t, lo, hi, args.replications, args.rel_tol)
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


if __name__ == "__main__":
    import os

    from simsched.errors import SimschedError

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        main()
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
