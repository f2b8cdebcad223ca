"""Check 1: M/D/1 and M/G/1. ``static_fifo`` with batch size 1 on one GPU and a latency model with
no batch or fixed cost (T = β·L) is a single-server FIFO queue, so its mean queueing delay must
match Pollaczek–Khinchine, W_q = λ E[S²] / (2(1 − ρ)), at every load."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from simsched.batchers import FixedBatcher
from simsched.latency import SeedForm
from simsched.metrics import Sla, Window, compute_metrics
from simsched.scheduler import Scheduler
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng, run_sim
from simsched.validate.stats import CheckResult, Row
from simsched.validate.theory import pk_wait
from simsched.workloads.lengths import Empirical, Fixed, Uniform

STEP_S = 0.01   # seconds per output token: S = 0.01·L, E[S] = 1 s for every service below
LATENCY = SeedForm(alpha_s=0.0, beta_s=STEP_S, gamma=0.0)

# name -> (length distribution, its values, their probabilities) for exact moments
SERVICES: dict[str, Any] = {
    "M/D/1 (L = 100)": Fixed(100),
    "M/G/1 (L ~ U{1..199}, cv² 0.33)": Uniform(1, 199),
    "M/G/1 (L = 50 or 300, cv² 1)": Empirical([50, 300], [0.8, 0.2]),   # the variance of M/M/1
}
LOADS = (0.3, 0.5, 0.7, 0.9)


def moments(dist: Any) -> tuple[float, float]:
    """Exact E[S] and E[S²] (seconds) of a length distribution under S = STEP_S·L."""
    if isinstance(dist, Fixed):
        v, p = np.array([dist.value], float), np.array([1.0])
    elif isinstance(dist, Uniform):
        v = np.arange(dist.low, dist.high + 1, dtype=float)
        p = np.full(len(v), 1.0 / len(v))
    elif isinstance(dist, Empirical):
        v = np.asarray(dist.values, float)
        w = np.ones(len(v)) if dist.weights is None else np.asarray(dist.weights, float)
        p = w / w.sum()
    else:
        raise TypeError(f"no exact moments for {type(dist).__name__}")
    s = STEP_S * v
    return float(np.sum(p * s)), float(np.sum(p * s * s))


def check_queueing(services: dict[str, Any], loads: tuple[float, ...], n_requests: int, reps: int,
                   seed: int = 0, latency: Any = LATENCY, tol_rel: float = 0.02,
                   max_half_rel: float = 0.05) -> list[Row]:
    """Simulated vs P-K mean queueing delay for every (service, load); ``latency`` is a
    parameter so that tests can show a wrong model fails.

    Heavy traffic converges slowly (the relaxation time grows like 1/(1 − ρ)²) and the mean of a
    run is right-skewed there (rare long excursions), which makes a t interval from few short
    runs too narrow and too low. So ρ = 0.7 gets twice the replications, and ρ > 0.7 three times
    the replications of twice the requests, with a CI allowed to be twice as wide."""
    rows = []
    sched = Scheduler(FixedBatcher(batch_size=1), name="static_fifo")
    for si, (name, dist) in enumerate(services.items()):
        es, es2 = moments(dist)
        for li, rho in enumerate(loads):
            lam = rho / es
            heavy = rho > 0.7
            waits = []
            for r in range(reps * (3 if heavy else 2 if rho > 0.5 else 1)):
                req = poisson_requests(lam, dist, n_requests * (2 if heavy else 1), rng(seed, 1, si, li, r))
                res = run_sim(req, sched, latency)
                waits.append(compute_metrics(res, Sla(), Window(0.1))["queue_delay_mean_s"])
            rows.append(Row(f"{name}, ρ = {rho}", "mean queueing delay (s)", pk_wait(lam, es, es2), waits,
                            tol_rel=tol_rel, max_half_rel=max_half_rel * (2 if heavy else 1)))
    return rows


def _plot(rows: list[Row], out: Path) -> str:
    fig, ax = figure()
    for name in SERVICES:
        sel = [r for r in rows if r.point.startswith(name)]
        rho = [float(r.point.rsplit("= ", 1)[1]) for r in sel]
        line, = ax.plot(rho, [r.expected for r in sel], "-", label=f"P-K: {name}")
        ax.errorbar(rho, [r.mean for r in sel], yerr=[r.half for r in sel], fmt="o", color=line.get_color(),
                    capsize=3)
    ax.set_yscale("log")
    return finish(fig, ax, out / "c1_queueing.png", "load ρ = λ E[S]", "mean queueing delay (s)",
                  "M/D/1, M/G/1: simulated (points, 95% CI) vs Pollaczek–Khinchine")


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    n = settings.size(60_000, 20_000)
    precision = 0.15 if settings.quick else 0.05
    loads = LOADS if not settings.quick else tuple(rho for rho in LOADS if rho <= 0.7)
    rows = check_queueing(SERVICES, loads, n, settings.replications, settings.seed, max_half_rel=precision)
    setup = (f"`static_fifo` with `FixedBatcher(batch_size=1)`, 1 GPU, latency `SeedForm(alpha_s=0, "
             f"beta_s={STEP_S}, gamma=0)` so a request's service time is S = {STEP_S}·L s (E[S] = 1 s), "
             f"Poisson arrivals at λ = ρ/E[S], {n:,} requests per replication, "
             f"{settings.replications} replications ({2 * settings.replications} at ρ = 0.7, "
             f"{3 * settings.replications} of {2 * n:,} requests at ρ = 0.9"
             + ("; quick mode stops at ρ = 0.7, heavy traffic needs long runs" if settings.quick else "")
             + "). Simulated value: `queue_delay_mean_s` of "
             "`compute_metrics` (requests arriving after the first 10% of the arrival span). "
             "Expected: W_q = λE[S²]/(2(1−ρ)) with the exact moments of each length distribution. "
             f"Verdict: P-K inside the 95% CI widened by 2%, and CI half-width ≤ {precision:.0%} "
             f"({2 * precision:.0%} at ρ = 0.9, where heavy traffic converges slowly).")
    worst = max(rows, key=lambda r: abs(r.rel_diff))
    discussion = (
        f"Largest deviation from P-K: {worst.rel_diff:+.1%} ({worst.point}). The queue is the engine's "
        "FIFO with batch size 1, and the measured quantity is the metrics module's `queue_delay_mean_s` over "
        "its window, so this also checks the window and the start/arrival bookkeeping. Errors that this "
        "check catches: a service time that ignores the length variation (M/G/1 would read as M/D/1, −25% "
        "for the uniform case), any fixed or batch overhead (+10% service time moves W_q at ρ = 0.7 by "
        "about +60%), a wrong dispatch order or a second server. The most variable service here has the "
        "variance of M/M/1 (cv² = 1): with heavier tails (a two-point law with cv² = 2.56 was tried) the "
        "mean of even a 180,000-request run at ρ = 0.9 varies by about 8% between replications, and its "
        "skew made the t interval miss P-K in some suite seeds although the engine's waits equal the "
        "Lindley recursion exactly on the same inputs.")
    return CheckResult("c1_queueing", "1. M/D/1 and M/G/1 against Pollaczek–Khinchine", setup, rows,
                       plots=[_plot(rows, out)], discussion=discussion, wall_s=time.perf_counter() - t0)
