"""Check 5: SLA-constrained dynamic batching (Pang et al.): capacity under a 50 ms TBT SLA,
static vs dynamic batching, as a ratio next to the paper's 5.4 → 6.6 req/s (+22%).

The step time is the paper's measured τ(b) = 0.22·b + 30 ms (``Affine(beta0_s=0.030,
beta1_s=0.00022)``), so a batch's time between tokens exceeds 50 ms exactly when b ≥ 91.
Capacity is the largest Poisson rate whose SLA violation rate stays ≤ 5%, where a request
violates if its TBT exceeds 50 ms (``sla.tbt_s``) or its end-to-end latency exceeds a deadline:
under run-to-completion batching a scheduler that caps b never breaks the TBT budget, however
long its queue, so without a latency deadline "capacity under a TBT SLA" would be unbounded.

The capacity search is the project's ``simsched.capacity_search.find_capacity`` (bisection on λ), run
once per replication, so each replication gives its own capacity and the CI comes from them.
"""
from __future__ import annotations

import time
from pathlib import Path
import numpy as np

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.capacity_search import find_capacity
from simsched.latency import Affine
from simsched.metrics import Sla, Window, compute_metrics
from simsched.scheduler import Scheduler
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng, run_sim
from simsched.validate.stats import CheckResult, Row, mean_ci
from simsched.workloads.lengths import Lognormal

LATENCY = Affine(alpha_s=0.0, beta0_s=0.030, beta1_s=0.00022)
SLA = Sla(latency_s=60.0, tbt_s=0.05)
TARGET = 0.05
OUTPUT = Lognormal(median=100.0, sigma=0.6, minimum=1, maximum=2048)
PAPER = (5.4, 6.6)

SCHEDULERS: dict[str, Scheduler] = {
    "static_fifo, B = 128": Scheduler(FixedBatcher(batch_size=128), name="static_fifo"),
    "dynamic_no_bins, D_SLA = 50 ms": Scheduler(DynamicBatcher(b_max=128, d_sla_s=0.05), name="dynamic_no_bins"),
    "static_fifo, B = 90": Scheduler(FixedBatcher(batch_size=90), name="static_fifo"),
    "dynamic_no_bins, D_SLA = 45 ms": Scheduler(DynamicBatcher(b_max=128, d_sla_s=0.045), name="dynamic_no_bins"),
}
BASELINE, DYNAMIC = "static_fifo, B = 128", "dynamic_no_bins, D_SLA = 50 ms"


def violation(scheduler: Scheduler, rate: float, n: int, seed: int, rep: int) -> float:
    """SLA violation rate of one run; the workload depends only on the replication (common
    random numbers across λ and schedulers: the same requests, arriving proportionally faster)."""
    req = poisson_requests(1.0, OUTPUT, n, rng(seed, 5, rep))
    req.arrival = req.arrival / rate
    res = run_sim(req, scheduler, LATENCY, gen=rng(seed, 5, rep, 1))
    v = compute_metrics(res, SLA, Window(0.1))["sla_violation_rate"]
    return 1.0 if v != v else float(v)   # nothing measured cannot show the SLA was met


def capacities(scheduler: Scheduler, n: int, reps: int, seed: int) -> list[float]:
    """One capacity per replication (bisection on that replication's requests); NaN where even
    the lowest rate tried violates the target."""
    out = []
    for r in range(reps):
        res = find_capacity(lambda lam, _rep: violation(scheduler, lam, n, seed, r), TARGET, 1.0, 8.0,
                            replications=1, rel_tol=0.01)
        out.append(res.capacity)
    return out


def operating_point(scheduler: Scheduler, rate: float, n: int, seed: int) -> dict[str, float]:
    """What a scheduler does at a given λ (replication 0): batch size, TBT, and which part of
    the SLA its violations break."""
    req = poisson_requests(1.0, OUTPUT, n, rng(seed, 5, 0))
    req.arrival = req.arrival / rate
    res = run_sim(req, scheduler, LATENCY, gen=rng(seed, 5, 0, 1))
    m = compute_metrics(res, SLA, Window(0.1))
    lo, hi = Window(0.1).bounds(req.arrival, res.end_time)
    sel = (res.status == 0) & (req.arrival >= lo) & (req.arrival <= hi)
    return {"mean batch size": m["mean_batch_size"], "mean TBT (ms)": 1000 * m["tbt_mean_s"],
            "TBT > 50 ms": float(np.mean(res.tbt[sel] > SLA.tbt_s)),
            f"latency > {SLA.latency_s:g} s": float(np.mean((res.finish - req.arrival)[sel] > SLA.latency_s)),
            "mean latency (s)": m["latency_mean_s"]}


def _op_table(points: dict[str, tuple[float, dict[str, float]]]) -> str:
    keys = list(next(iter(points.values()))[1])
    lines = ["| scheduler | at λ (req/s) | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, (rate, op) in points.items():
        cells = [f"{op[k]:.1%}" if ">" in k else f"{op[k]:.1f}" for k in keys]
        lines.append(f"| {name} | {rate:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def violation_curve(scheduler: Scheduler, rates: np.ndarray, n: int, reps: int, seed: int) -> list[list[float]]:
    """Violation rate per λ of a grid (one list of replications per λ), for the plot."""
    return [[violation(scheduler, float(lam), n, seed, r) for r in range(reps)] for lam in rates]


def _plot(rates: np.ndarray, curves: dict[str, list[list[float]]], caps: dict[str, list[float]], out: Path) -> str:
    fig, ax = figure()
    for name, curve in curves.items():
        stats = [mean_ci(v) for v in curve]
        line, = ax.plot(rates, [m for m, _ in stats], "-o", ms=3, label=name)
        ax.fill_between(rates, [m - h for m, h in stats], [m + h for m, h in stats], color=line.get_color(),
                        alpha=0.15)
        ax.axvline(np.mean(caps[name]), color=line.get_color(), lw=1, ls="--")
    ax.axhline(TARGET, color="grey", lw=1)
    ax.set_ylim(0, 0.5)
    return finish(fig, ax, out / "c5_sla_capacity.png", "arrival rate λ (req/s)",
                  "SLA violation rate (TBT > 50 ms or latency > 60 s)",
                  "Violation vs λ (mean, 95% band); dashed: capacity at 5%", title_size=10)


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    reps = 2 * settings.replications     # one capacity per replication is noisy: twice the usual
    n = 20_000
    caps, curves = {}, {}
    rates = np.linspace(1.5, 4.5, 13)
    for name, sched in SCHEDULERS.items():
        caps[name] = capacities(sched, n, reps, settings.seed)
        curves[name] = violation_curve(sched, rates, n, settings.replications, settings.seed)
    rows = [Row(name, "capacity (req/s)", None, caps[name]) for name in SCHEDULERS]
    ratio = list(np.asarray(caps[DYNAMIC]) / np.asarray(caps[BASELINE]) - 1.0)
    rows.append(Row(f"{DYNAMIC} vs {BASELINE}", "capacity gain", None, ratio,
                    extra={"paper": f"{PAPER[0]} → {PAPER[1]} req/s (+{PAPER[1] / PAPER[0] - 1:.0%})"}))
    for name in ("static_fifo, B = 90", "dynamic_no_bins, D_SLA = 45 ms"):
        rows.append(Row(f"{name} vs {BASELINE}", "capacity gain", None,
                        list(np.asarray(caps[name]) / np.asarray(caps[BASELINE]) - 1.0)))
    gain, half = mean_ci(ratio)
    at_dyn = float(np.mean(caps[DYNAMIC]))
    at_sat = 2.0 * float(np.mean(caps[BASELINE]))
    points = {f"{name} ({label})": (at, operating_point(sched, at, n, settings.seed))
              for label, at in (("at dynamic's capacity", at_dyn), ("saturated", at_sat))
              for name, sched in SCHEDULERS.items()}
    table = _op_table(points)
    conds = [(f"dynamic batching ({DYNAMIC}) has a higher capacity than {BASELINE} (95% CI of the paired "
              "gain above 0)", bool(gain - (half if half == half else 0.0) > 0))]
    setup = (
        "One GPU, latency `Affine(alpha_s=0, beta0_s=0.030, beta1_s=0.00022)`: every decode step takes "
        "τ(b) = 0.22·b + 30 ms, so TBT > 50 ms exactly when b ≥ 91. Poisson arrivals, outputs "
        "`Lognormal(median=100, sigma=0.6, max=2048)` tokens, one-token prompts and a KV cache that never "
        "binds (the check isolates the SLA controller; Algorithm 1 is on but slack). SLA: TBT ≤ 50 ms "
        f"(`sla.tbt_s`) and end-to-end latency ≤ {SLA.latency_s:g} s (needed: with run-to-completion batching a "
        "scheduler that caps b never breaks the TBT budget, however long its queue). Capacity = the largest "
        f"λ with `sla_violation_rate` ≤ {TARGET:.0%}, found by `simsched.capacity_search.find_capacity` (bisection on λ, "
        "1% bracket) separately for each of "
        f"{reps} replications (twice the suite's number: one capacity per replication is noisy; {n:,} "
        "requests each; replication r uses the same requests at every λ and for every scheduler), so the CI "
        "comes from the replications and the gain is paired.\n\n"
        "Schedulers: `static_fifo` with B = 128 (= the dynamic batcher's B_max: fixed batching without SLA "
        "control, the paper's baseline) and `dynamic_no_bins` with the paper's D_SLA = 50 ms (ε_D = 5 ms, "
        "α = 4, δ = 2, window 16). For context (not the paper's comparison): `static_fifo` with B = 90, the "
        "largest fixed batch that meets the TBT budget (a static size tuned to the SLA in hindsight), and the "
        "dynamic batcher aimed at 45 ms so that its tolerance band ends at the SLA. No expected value exists "
        "in closed form: these rows are reported beside the paper's figure, and the judged condition is the "
        "paper's qualitative claim.")
    return CheckResult("c5_sla_capacity", "5. SLA-constrained dynamic batching: capacity under a 50 ms TBT SLA",
                       setup, rows, conds, [_plot(rates, curves, caps, out)],
                       tables=[("Operating points (replication 0): every scheduler at the dynamic batcher's "
                                "capacity, and saturated at twice the static baseline's capacity (where each "
                                "batcher settles)", table)],
                       discussion=_discussion(caps, ratio, points, conds[0][1]), wall_s=time.perf_counter() - t0)


def _discussion(caps: dict[str, list[float]], ratio: list[float], points: dict[str, tuple[float, dict]],
                holds: bool) -> str:
    g, h = mean_ci(ratio)
    dyn = points[f"{DYNAMIC} (saturated)"][1]
    dyn_cap = points[f"{DYNAMIC} (at dynamic's capacity)"][1]
    d45 = points["dynamic_no_bins, D_SLA = 45 ms (saturated)"][1]
    s90 = mean_ci(np.asarray(caps["static_fifo, B = 90"]) / np.asarray(caps[BASELINE]) - 1.0)[0]
    return (
        f"**Why +{g:.0%} (± {h:.0%}) here and +22% in the paper.** The mechanism is the paper's: under load, "
        "fixed batching lets batches grow to B = 128, whose step takes 58 ms, so TBT violations set its "
        "capacity; the dynamic batcher holds the observed TBT near D_SLA and gives up queueing delay instead. "
        "Three things make our gain smaller. (1) Run-to-completion batching: here a batch is formed once and "
        "holds the GPU until its longest member ends, so capping b costs throughput directly and the latency "
        "deadline soon binds; the paper measured continuous (iteration-level) batching in a real server, "
        "where the batch refills every step. (2) Algorithm 2 as written stops moving once τ̄ is inside "
        "[D_SLA − ε_D, D_SLA + ε_D] and re-centres on the recent mean batch, so the controller settles near "
        f"the bottom of the band: saturated, its mean TBT is {dyn['mean TBT (ms)']:.1f} ms with mean batch "
        f"{dyn['mean batch size']:.0f}, below the b = 90 the SLA allows, and near its capacity the "
        f"window-averaged τ̄ lets {dyn_cap['TBT > 50 ms']:.1%} of requests exceed 50 ms while the batch size "
        f"hunts. A fixed B = 90, the largest size that meets the budget, gains {s90:+.0%} over B = 128, more "
        "than the controller; aiming the controller at 45 ms (band top at the SLA) removes its TBT "
        f"violations but it then settles near the band's bottom ({d45['mean TBT (ms)']:.1f} ms, mean batch "
        f"{d45['mean batch size']:.0f}) and loses throughput. (3) Workload and hardware: one GPU with our "
        "log-normal outputs and a 60 s deadline, against LLaMA3-70B on the paper's traces; the ratio "
        "depends on both. The qualitative "
        f"claim (dynamic > static under a TBT SLA) {'holds' if holds else 'is NOT confirmed in this run'}; "
        "the size of the gain is model-dependent and this simulator reports it as such.")
