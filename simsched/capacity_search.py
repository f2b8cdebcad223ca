"""Capacity search: the largest arrival rate λ whose SLA violation rate stays at or below a target.

The search is plain bisection on λ over the *mean* violation rate of ``replications`` runs
(replication ``r`` uses seed ``r`` at every λ: common random numbers keep the curve nearly
monotone, so bisection does not chase noise). It knows nothing about the simulator: give it
``violation_at(rate, replication) -> violation rate``. ``simulated_violation`` adapts a simsched
config to that signature (``simsched.workloads.rates.with_arrival_rate`` sets a config's rate).

    result = find_capacity(violation_at, target=0.05, lo=1.0, hi=20.0, replications=3, rel_tol=0.01)
    result.capacity, result.bracket, result.curve

``capacity`` is the largest *evaluated* rate whose mean violation met the target (conservative);
the true crossing lies in ``bracket = (capacity, first rate seen violating)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    from scipy.special import stdtrit   # Student t's quantile; importing scipy.stats costs ~1 s more

    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return float(stdtrit(n - 1, 0.975) * s / math.sqrt(n))


def check_search_args(target: float, lo: float, hi: float, replications: int, rel_tol: float) -> None:
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
        check_search_args(t, lo, hi, replications, rel_tol)
    ev = _Evaluator(violation_at, int(replications), map_fn)
    results = [_search(ev, float(t), float(lo), float(hi), float(rel_tol), max_expand) for t in targets]
    # Every result carries the full curve seen by all searches.
    curve = ev.curve()
    return [CapacityResult(r.target, r.capacity, r.bracket, curve, r.replications, r.status, ev.evaluations)
            for r in results]


# --- simsched configs ------------------------------------------------------------------------

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
        from simsched.workloads.rates import with_arrival_rate

        cfg = with_arrival_rate(self.cfg, rate)
        cfg.seed = self.base_seed + int(replication)
        _, metrics, _ = simulate_config(cfg)
        if self.metric not in metrics:
            raise ConfigError("metric", "not a metric of a run", self.metric)
        value = metrics[self.metric]
        return math.nan if value is None else float(value)



def pool_map(jobs: int) -> MapFn:
    """A ``map_fn`` running the replications of one λ in ``jobs`` processes."""
    def run(violation_at: ViolationAt, args: list[tuple[float, int]]) -> list[float]:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(args))) as pool:
            return list(pool.map(violation_at, [a[0] for a in args], [a[1] for a in args]))
    return run
