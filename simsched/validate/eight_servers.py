"""Check 4: the shape of Multi-Bin's 8-server experiment (Guldogan et al.): 8 GPUs, B = 8,
0.0366 s per generated token (Phi-3.5-mini), thresholds 22.71 / 27.48 / 31.91 / 35.27 / 37.87 /
39.65 req/s for 1 / 2 / 4 / 8 / 16 / 32 bins.

The paper drew output lengths from GSM8K answers, which cannot be shipped or downloaded here.
We use a right-skewed log-normal length distribution (integer tokens) whose two parameters are
fitted so that the exact saturated throughput matches the paper at the two ends of the curve
(k = 1 and k = 32); the four interior values are then out-of-sample. A uniform distribution
fitted the same way (the paper's own theoretical model) shows how much the shape of the length
distribution matters. The threshold is the largest sustainable arrival rate, i.e. the service
rate of the 8 GPUs while saturated (above it the queue grows without bound).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import lognorm

from simsched.batchers import FixedBatcher
from simsched.latency import SeedForm
from simsched.metrics import Sla, compute_metrics
from simsched.scheduler import Scheduler
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng, run_sim
from simsched.validate.multibin_theorem import SATURATED_WINDOW
from simsched.validate.stats import CheckResult, Row
from simsched.validate.theory import equal_mass_cuts, saturated_throughput
from simsched.workloads.lengths import Empirical

PAPER = {1: 22.71, 2: 27.48, 4: 31.91, 8: 35.27, 16: 37.87, 32: 39.65}
GPUS, B, STEP_S = 8, 8, 0.0366
LATENCY = SeedForm(alpha_s=0.0, beta_s=STEP_S, gamma=0.0)
MAX_TOKENS = 1000


def _service(L: np.ndarray) -> np.ndarray:
    return STEP_S * L


def thresholds(values: np.ndarray, probs: np.ndarray, ks) -> np.ndarray:
    """Exact saturated throughput (req/s) of the 8 GPUs for each k, equal-mass cuts."""
    return np.array([saturated_throughput(values, probs, equal_mass_cuts(values, probs, k), B, _service, GPUS)
                     for k in ks])


def lognormal_pmf(median: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(1, MAX_TOKENS + 1)
    edges = np.concatenate(([0.0], v[:-1] + 0.5, [np.inf]))
    return v, np.diff(lognorm.cdf(edges, sigma, scale=median))


def fit_lognormal() -> tuple[float, float]:
    """(median, sigma) matching the paper's 1-bin and 32-bin thresholds."""
    target = np.array([PAPER[1], PAPER[32]])

    def resid(x: np.ndarray) -> np.ndarray:
        return thresholds(*lognormal_pmf(math.exp(x[0]), x[1]), (1, 32)) / target - 1.0

    sol = least_squares(resid, [math.log(40.0), 0.5], bounds=([math.log(5.0), 0.05], [math.log(500.0), 2.0]))
    return math.exp(sol.x[0]), float(sol.x[1])


def fit_uniform() -> tuple[int, int]:
    """Integer U{a..b} matching the paper's 1-bin and 32-bin thresholds (least squares)."""
    target = np.array([PAPER[1], PAPER[32]])
    best, best_err = (1, 2), math.inf
    for a in range(1, 21):
        for b in range(a + 32, 200):
            v = np.arange(a, b + 1)
            err = float(np.sum((thresholds(v, np.ones(len(v)), (1, 32)) / target - 1.0) ** 2))
            if err < best_err:
                best, best_err = (a, b), err
    return best


def simulated(values: np.ndarray, probs: np.ndarray, k: int, n: int, reps: int, seed: int, dist_id: int) -> list[float]:
    """Saturated throughput of the 8 GPUs. λ is high enough that even the lightest bin (the
    integer grid makes masses unequal) receives more than its round-robin share."""
    cuts = equal_mass_cuts(values, probs, k)
    base = np.searchsorted(cuts, values, side="right")
    min_share = min(float(probs[base == j].sum()) for j in range(k)) * k / float(probs.sum())
    cap = thresholds(values, probs, (k,))[0]
    lam = max(2.0, 1.5 / min_share) * cap
    sched = Scheduler(FixedBatcher(batch_size=B, full_batches_only=True), name="multi_bin_static", k_bins=k,
                      boundaries=list(cuts) or None)
    dist = Empirical(values=[int(x) for x in values], weights=[float(p) for p in probs])
    out = []
    for r in range(reps):
        req = poisson_requests(lam, dist, n, rng(seed, 4, dist_id, r))
        res = run_sim(req, sched, LATENCY, gpus=GPUS, gen=rng(seed, 4, dist_id, r, 1))
        out.append(compute_metrics(res, Sla(), SATURATED_WINDOW)["throughput_rps"])
    return out


FITTED = (1, 32)       # the paper's points the length distributions are fitted to
PAPER_TOL = 0.02       # under half the smallest step between adjacent paper values (+4.7%, k = 16 → 32)


def check_distribution(label: str, values: np.ndarray, probs: np.ndarray, ks, n: int, reps: int, seed: int,
                       dist_id: int, judge_paper: bool = False) -> tuple[list[Row], list[tuple[str, bool]]]:
    """Simulated vs exact threshold at every k (the simulator's check); with ``judge_paper``
    also simulated vs the paper, judged only at the k the distribution was not fitted to."""
    rows, paper_rows = [], []
    exact = thresholds(values, probs, ks)
    for k, e in zip(ks, exact):
        vals = simulated(values, probs, k, n, reps, seed, dist_id)
        point = "fitted" if k in FITTED else "predicted"
        rows.append(Row(f"{label}, k = {k}", "threshold (req/s)", float(e), vals, tol_rel=0.01,
                        extra={"paper": PAPER[k], "sim vs paper": f"{np.mean(vals) / PAPER[k] - 1:+.1%}",
                               "paper point": point}))
        if judge_paper:
            paper_rows.append(Row(f"{label}, k = {k}", "threshold vs paper (req/s)",
                                  None if k in FITTED else PAPER[k], vals, tol_rel=PAPER_TOL,
                                  extra={"paper": PAPER[k], "paper point": point + (
                                      ": agrees by construction, not judged" if k in FITTED else "")}))
    means = np.array([r.mean for r in rows])
    steps = np.diff(means)
    return rows + paper_rows, [(f"{label}: threshold increasing in k", bool(np.all(steps > 0))),
                  (f"{label}: diminishing returns (each doubling of k gains less than the one before)",
                   bool(np.all(np.diff(steps) < 0)))]


def _plot(rows: list[Row], labels: list[str], out: Path) -> str:
    fig, ax = figure()
    ks = list(PAPER)
    ax.plot(ks, [PAPER[k] for k in ks], "k-s", label="paper (GSM8K lengths)")
    for label in labels:
        sel = [r for r in rows if r.point.startswith(label) and r.quantity == "threshold (req/s)"]
        line, = ax.plot(ks, [r.expected for r in sel], "--", label=f"exact: {label}")
        ax.errorbar(ks, [r.mean for r in sel], yerr=[r.half for r in sel], fmt="o", color=line.get_color(),
                    capsize=3, label=f"simulated: {label}")
    ax.set_xscale("log", base=2)
    return finish(fig, ax, out / "c4_eight_servers.png", "bins k", "throughput threshold (req/s)",
                  "8 GPUs, B = 8, 0.0366 s/token")


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    reps = settings.replications
    n = settings.size(100_000, 40_000)
    ks = tuple(PAPER)
    med, sig = fit_lognormal()
    a, b = fit_uniform()
    v_ln, p_ln = lognormal_pmf(med, sig)
    mean_ln = float(np.sum(v_ln * p_ln))
    ln_label = f"log-normal (median {med:.1f}, σ {sig:.3f})"
    un_label = f"uniform U{{{a}..{b}}}"
    ln_rows, conds = check_distribution(ln_label, v_ln, p_ln, ks, n, reps, settings.seed, 0, judge_paper=True)
    v_un = np.arange(a, b + 1)
    r2, c2 = check_distribution(un_label, v_un, np.ones(len(v_un)), ks, n, reps, settings.seed, 1)
    rows = [r for r in ln_rows if r.quantity == "threshold (req/s)"]
    paper_rows = [r for r in ln_rows if r not in rows]
    interior = tuple(k for k in ks if k not in FITTED)
    setup = (
        f"{GPUS} GPUs, `multi_bin_static` with `FixedBatcher({B}, full_batches_only=True)`, latency "
        f"`SeedForm(alpha_s=0, beta_s={STEP_S}, gamma=0)` (T = {STEP_S}·max L s, linear per token, no batch "
        "effect), bins with equal-mass cut points of the length distribution (x + 0.5 above the quantile "
        "value, integer lengths), round-robin. Threshold = service rate while saturated (λ ≥ 2× the "
        f"threshold), `throughput_rps` over [30%, last arrival], {n:,} requests, {reps} replications.\n\n"
        "**Lengths.** The paper used GSM8K answers, which are not available offline. Primary: a "
        f"log-normal on integer tokens 1..{MAX_TOKENS}, median {med:.1f} and σ {sig:.3f} (mean "
        f"{mean_ln:.1f} tokens), fitted by least squares so that the exact threshold equals the paper's at "
        f"k = 1 and k = 32 only; k = 2..16 are predictions. Secondary: the integer uniform U{{{a}..{b}}} "
        "fitted the same way (Theorem 4.2's model). Expected = the exact saturated throughput of that "
        "distribution (`theory.saturated_throughput`); the verdict judges the simulator against it (CI "
        "widened by 1%); the paper's figure is beside it, with the difference, and the shape conditions "
        "(increasing, diminishing returns) are judged on the simulated values.\n\n"
        "**Against the paper, only the points not fitted are judged.** The log-normal agrees with the paper "
        "at k = 1 and k = 32 by construction (its two parameters were fitted there), so those rows are "
        f"*info*; the rows *threshold vs paper* judge the simulated log-normal thresholds at k = "
        f"{', '.join(map(str, interior))} against the paper's figures within {PAPER_TOL:.0%} (under half the "
        "smallest step between adjacent paper values, +4.7% from k = 16 to 32, so a judged point cannot pass "
        "as its neighbour). The uniform is shown to make the point that the shape of the length distribution "
        "matters; it is not judged against the paper.")
    def vs_paper(rs: list[Row], ks_: tuple[int, ...]) -> float:
        return max(abs(r.mean / PAPER[k] - 1.0) for r, k in zip(rs, ks) if k in ks_)

    discussion = (
        f"The simulator matches the exact thresholds of both distributions (largest deviation "
        f"{max(abs(r.rel_diff) for r in rows + r2):.2%}). Against the paper: the log-normal, fitted only at "
        f"k = 1 and 32, is within {vs_paper(rows, interior):.1%} of the paper at k = 2..16 (within "
        f"{vs_paper(rows, tuple(PAPER)):.1%} everywhere); the uniform fitted the same way overshoots the "
        f"interior by up to {vs_paper(r2, interior):.1%}: with uniform lengths the first splits remove much more "
        "of the max-of-8 than with skewed ones, so the paper's GSM8K lengths behave like a right-skewed "
        f"distribution with a mean near {mean_ln:.0f} tokens at its 0.0366 s/token. Remaining differences: (1) the "
        "length distribution is fitted, not GSM8K itself; (2) the paper's thresholds come from sweeping λ "
        "and reading off the largest stable rate, ours are the exact saturated service rate (a sweep with a "
        "finite grid and finite runs reads slightly lower or higher); (3) integer lengths make equal-mass "
        "bins only approximately equal at k = 32 (about 2–3 distinct lengths per bin), which the exact "
        "value accounts for but the paper's bins may have handled differently.")
    return CheckResult("c4_eight_servers", "4. Multi-Bin's 8-server experiment (shape)", setup,
                       rows + r2 + paper_rows, conds + c2, [_plot(rows + r2, [ln_label, un_label], out)], discussion=discussion,
                       wall_s=time.perf_counter() - t0)
