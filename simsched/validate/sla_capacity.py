"""Check 5: SLA-constrained dynamic batching (Pang et al.): the capacity gain of the dynamic
batcher over fixed batching under a 50 ms TBT SLA, as a *curve* over the end-to-end deadline and
over the controller's parameters α, δ, ε_D and window (and the release rule), next to the
paper's 5.4 → 6.6 req/s (+22%). No single point of it is a reproduction of the paper.

The step time is the paper's measured τ(b) = 0.22·b + 30 ms (``Affine(beta0_s=0.030,
beta1_s=0.00022)``), so a batch's time between tokens exceeds 50 ms exactly when b ≥ 91.
Capacity is the largest Poisson rate whose SLA violation rate stays ≤ 5%, where a request
violates if its TBT exceeds 50 ms (``sla.tbt_s``) or its end-to-end latency exceeds a deadline:
under run-to-completion batching a scheduler that caps b never breaks the TBT budget, however
long its queue, so without a latency deadline "capacity under a TBT SLA" would be unbounded,
and the deadline chosen sets much of the gain (hence the curve).

The capacity search is the project's ``simsched.capacity_search.find_capacity`` (bisection on
λ), run once per replication, so each replication gives its own capacity and the CI of the
paired gain comes from them. Replications are independent: ``Settings.jobs`` runs them in
parallel processes (the results do not depend on it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.capacity_search import find_capacity
from simsched.latency import Affine
from simsched.metrics import Sla, Window, compute_metrics
from simsched.scheduler import Scheduler
from simsched.validate.common import Settings, figure, finish, parallel_map, poisson_requests, rng, run_sim, save
from simsched.validate.report import rows_table
from simsched.validate.stats import CheckResult, Row, mean_ci
from simsched.workloads.lengths import Lognormal

LATENCY = Affine(alpha_s=0.0, beta0_s=0.030, beta1_s=0.00022)
TBT_S = 0.05
DEADLINE_S = 60.0
TARGET = 0.05
OUTPUT = Lognormal(median=100.0, sigma=0.6, minimum=1, maximum=2048)
PAPER = (5.4, 6.6)
DYNAMIC_SPEC = DynamicBatcher(b_max=128, d_sla_s=0.05)      # ε_D 5 ms, α 4, δ 2, window 16

SCHEDULERS: dict[str, Scheduler] = {
    "static_fifo, B = 128": Scheduler(FixedBatcher(batch_size=128), name="static_fifo"),
    "dynamic_no_bins, D_SLA = 50 ms": Scheduler(DYNAMIC_SPEC, name="dynamic_no_bins"),
    "static_fifo, B = 90": Scheduler(FixedBatcher(batch_size=90), name="static_fifo"),
    "dynamic_no_bins, D_SLA = 45 ms": Scheduler(replace(DYNAMIC_SPEC, d_sla_s=0.045), name="dynamic_no_bins"),
}
BASELINE, DYNAMIC = "static_fifo, B = 128", "dynamic_no_bins, D_SLA = 50 ms"

# The curves: one factor moved at a time from the defaults above (deadline 60 s, batch_end).
DEADLINES_S = (30.0, 40.0, 60.0, 90.0, 120.0, 240.0)
CONTROLLER = {   # factor -> (field of DynamicBatcher, values, unit scale for labels, unit)
    "α": ("alpha", (1, 2, 4, 8, 16), 1, ""),
    "δ": ("delta", (1, 2, 4, 8), 1, ""),
    "ε_D": ("eps_d_s", (0.001, 0.0025, 0.005, 0.01), 1000, " ms"),
    "window": ("window", (1, 4, 16, 64), 1, " batches"),
}
RELEASES = ("batch_end", "own_length")


@dataclass(frozen=True)
class Setting:
    """One capacity to find: a scheduler under an SLA deadline and a release rule."""

    scheduler: Scheduler
    deadline_s: float = DEADLINE_S
    release: str = "batch_end"

    @property
    def sla(self) -> Sla:
        return Sla(latency_s=self.deadline_s, tbt_s=TBT_S)


def violation(setting: Setting, rate: float, n: int, seed: int, rep: int) -> float:
    """SLA violation rate of one run; the workload depends only on the replication (common
    random numbers across λ and schedulers: the same requests, arriving proportionally faster)."""
    req = poisson_requests(1.0, OUTPUT, n, rng(seed, 5, rep))
    req.arrival = req.arrival / rate
    res = run_sim(req, setting.scheduler, LATENCY, gen=rng(seed, 5, rep, 1), release=setting.release)
    v = compute_metrics(res, setting.sla, Window(0.1))["sla_violation_rate"]
    return 1.0 if v != v else float(v)   # nothing measured cannot show the SLA was met


def capacity_task(task: tuple[Setting, int, int, int]) -> float:
    """The capacity of one replication (bisection on its own requests); NaN where even the
    lowest rate tried violates the target. A module-level function so that processes can run it."""
    setting, n, seed, rep = task
    return find_capacity(lambda lam, _r: violation(setting, lam, n, seed, rep), TARGET, 1.0, 8.0,
                         replications=1, rel_tol=0.01).capacity


def capacities(settings_list: list[Setting], n: int, reps: int, seed: int, jobs: int) -> list[list[float]]:
    """Per setting, one capacity per replication (all settings' replications in one pool)."""
    tasks = [(s, n, seed, r) for s in settings_list for r in range(reps)]
    flat = parallel_map(capacity_task, tasks, jobs)
    return [flat[i * reps:(i + 1) * reps] for i in range(len(settings_list))]


def curve_settings() -> dict[str, list[tuple[str, Setting, Setting]]]:
    """factor -> [(point label, dynamic setting, its baseline setting)]."""
    base, dyn = SCHEDULERS[BASELINE], SCHEDULERS[DYNAMIC]
    curves: dict[str, list[tuple[str, Setting, Setting]]] = {
        "deadline": [(f"deadline = {d:g} s", Setting(dyn, d), Setting(base, d)) for d in DEADLINES_S]}
    for factor, (key, values, scale, unit) in CONTROLLER.items():
        curves[factor] = [(f"{factor} = {v * scale:g}{unit}",
                           Setting(Scheduler(replace(DYNAMIC_SPEC, **{key: v}), name="dynamic_no_bins")),
                           Setting(base)) for v in values]
    curves["release"] = [(f"release = {r}", Setting(dyn, release=r), Setting(base, release=r)) for r in RELEASES]
    return curves


def operating_point(scheduler: Scheduler, rate: float, n: int, seed: int) -> dict[str, float]:
    """What a scheduler does at a given λ (replication 0, 60 s deadline): batch size, TBT, and
    which part of the SLA its violations break."""
    req = poisson_requests(1.0, OUTPUT, n, rng(seed, 5, 0))
    req.arrival = req.arrival / rate
    res = run_sim(req, scheduler, LATENCY, gen=rng(seed, 5, 0, 1))
    sla = Setting(scheduler).sla
    m = compute_metrics(res, sla, Window(0.1))
    lo, hi = Window(0.1).bounds(req.arrival, res.end_time)
    sel = (res.status == 0) & (req.arrival >= lo) & (req.arrival <= hi)
    return {"mean batch size": m["mean_batch_size"], "mean TBT (ms)": 1000 * m["tbt_mean_s"],
            "TBT > 50 ms": float(np.mean(res.tbt[sel] > TBT_S)),
            f"latency > {DEADLINE_S:g} s": float(np.mean((res.finish - req.arrival)[sel] > DEADLINE_S)),
            "mean latency (s)": m["latency_mean_s"]}


def _op_table(points: dict[str, tuple[float, dict[str, float]]]) -> str:
    keys = list(next(iter(points.values()))[1])
    lines = ["| scheduler | at λ (req/s) | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, (rate, op) in points.items():
        cells = [f"{op[k]:.1%}" if ">" in k else f"{op[k]:.1f}" for k in keys]
        lines.append(f"| {name} | {rate:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve_table(curves: dict[str, list[tuple[str, list[float], list[float]]]]) -> str:
    lines = ["| factor | point | static B = 128 (req/s) | dynamic (req/s) | gain (95% CI) |", "|---|---|---|---|---|"]
    for factor, points in curves.items():
        for label, dyn, base in points:
            g, h = mean_ci(np.asarray(dyn) / np.asarray(base) - 1.0)
            (mb, hb), (md, hd) = mean_ci(base), mean_ci(dyn)
            lines.append(f"| {factor} | {label} | {mb:.2f} ± {hb:.2f} | {md:.2f} ± {hd:.2f} | "
                         f"{g:+.1%} [{g - h:+.1%}, {g + h:+.1%}] |")
    return "\n".join(lines)


def _plot_curves(curves: dict[str, list[tuple[str, list[float], list[float]]]], out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.0 * len(curves), 3.4), sharey=True)
    paper = PAPER[1] / PAPER[0] - 1.0
    for ax, (factor, points) in zip(axes, curves.items()):
        stats = [mean_ci(np.asarray(dyn) / np.asarray(base) - 1.0) for _, dyn, base in points]
        x = np.arange(len(points))
        ax.errorbar(x, [100 * m for m, _ in stats], yerr=[100 * h for _, h in stats], fmt="o-", capsize=3)
        ax.axhline(0.0, color="grey", lw=1)
        ax.axhline(100 * paper, color="k", lw=1, ls="--", label="paper +22% (continuous batching)")
        ax.set_xticks(x, [label.split(" = ")[1] for label, _, _ in points], fontsize=7, rotation=30)
        ax.set_title(factor, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("capacity gain over static B = 128 (%)")
    axes[0].legend(fontsize=6)
    return save(fig, out / "c5_gain_curves.png")


def _plot_violation(rates: np.ndarray, curves: dict[str, list[list[float]]], caps: dict[str, list[float]],
                    out: Path) -> str:
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
                  f"SLA violation rate (TBT > 50 ms or latency > {DEADLINE_S:g} s)",
                  "Violation vs λ (mean, 95% band); dashed: capacity at 5%", title_size=10)


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    reps = 2 * settings.replications     # one capacity per replication is noisy: twice the usual
    n = settings.size(20_000, 8_000)
    curve_defs = curve_settings()
    # Every distinct setting once: the defaults recur in every curve.
    distinct: list[Setting] = [Setting(s) for s in SCHEDULERS.values()]
    for points in curve_defs.values():
        for _, dyn, base in points:
            distinct += [s for s in (dyn, base) if s not in distinct]
    found = dict(zip(distinct, capacities(distinct, n, reps, settings.seed, settings.jobs)))
    caps = {name: found[Setting(s)] for name, s in SCHEDULERS.items()}
    curves = {factor: [(label, found[dyn], found[base]) for label, dyn, base in points]
              for factor, points in curve_defs.items()}

    rows = [Row(name, "capacity (req/s)", None, caps[name]) for name in SCHEDULERS]
    ratio = list(np.asarray(caps[DYNAMIC]) / np.asarray(caps[BASELINE]) - 1.0)
    rows.append(Row(f"{DYNAMIC} vs {BASELINE} (deadline {DEADLINE_S:g} s)", "capacity gain", None, ratio,
                    extra={"paper (continuous batching)": f"{PAPER[0]} → {PAPER[1]} req/s "
                                                          f"(+{PAPER[1] / PAPER[0] - 1:.0%})"}))
    for name in ("static_fifo, B = 90", "dynamic_no_bins, D_SLA = 45 ms"):
        rows.append(Row(f"{name} vs {BASELINE}", "capacity gain", None,
                        list(np.asarray(caps[name]) / np.asarray(caps[BASELINE]) - 1.0)))
    for factor, points in curves.items():
        for label, dyn, base in points:
            rows.append(Row(f"curve {factor}: {label}", "capacity gain", None,
                            list(np.asarray(dyn) / np.asarray(base) - 1.0)))
    gain, half = mean_ci(ratio)
    rates = np.linspace(1.5, 4.5, 13)
    violation_curves = {name: [[violation(Setting(s), float(lam), n, settings.seed, r)
                                for r in range(settings.replications)] for lam in rates]
                        for name, s in SCHEDULERS.items()}
    at_dyn = float(np.mean(caps[DYNAMIC]))
    at_sat = 2.0 * float(np.mean(caps[BASELINE]))
    points = {f"{name} ({label})": (at, operating_point(sched, at, n, settings.seed))
              for label, at in (("at dynamic's capacity", at_dyn), ("saturated", at_sat))
              for name, sched in SCHEDULERS.items()}
    conds = [(f"dynamic batching ({DYNAMIC}) has a higher capacity than {BASELINE} at the {DEADLINE_S:g} s "
              "deadline (95% CI of the paired gain above 0): the paper's qualitative claim, not its size",
              bool(gain - (half if half == half else 0.0) > 0))]
    setup = (
        "One GPU, latency `Affine(alpha_s=0, beta0_s=0.030, beta1_s=0.00022)`: every decode step takes "
        "τ(b) = 0.22·b + 30 ms, so TBT > 50 ms exactly when b ≥ 91. Poisson arrivals, outputs "
        "`Lognormal(median=100, sigma=0.6, max=2048)` tokens, one-token prompts and a KV cache that never "
        "binds (the check isolates the SLA controller; Algorithm 1 is on but slack). SLA: TBT ≤ 50 ms "
        "(`sla.tbt_s`) and an end-to-end deadline (needed: with run-to-completion batching a "
        "scheduler that caps b never breaks the TBT budget, however long its queue). Capacity = the largest "
        f"λ with `sla_violation_rate` ≤ {TARGET:.0%}, found by `simsched.capacity_search.find_capacity` "
        "(bisection on λ, 1% bracket) separately for each of "
        f"{reps} replications (twice the suite's number: one capacity per replication is noisy; {n:,} "
        "requests each; replication r uses the same requests at every λ and for every scheduler), so the CI "
        "comes from the replications and the gain is paired.\n\n"
        "Schedulers: `static_fifo` with B = 128 (= the dynamic batcher's B_max: fixed batching without SLA "
        "control, the paper's baseline) and `dynamic_no_bins` with the paper's D_SLA = 50 ms (ε_D = 5 ms, "
        "α = 4, δ = 2, window 16; the paper gives no α, δ, ε_D or window). For context (not the paper's "
        "comparison): `static_fifo` with B = 90, the largest fixed batch that meets the TBT budget (a static "
        "size tuned to the SLA in hindsight), and the dynamic batcher aimed at 45 ms so that its tolerance "
        "band ends at the SLA.\n\n"
        "**The gain is a curve, not a number.** The second table moves one thing at a time from those "
        f"defaults: the end-to-end deadline ({', '.join(f'{d:g}' for d in DEADLINES_S)} s; the baseline is "
        "re-measured at each), the controller's α, δ, ε_D and window, and the release rule (`own_length`: "
        "a request completes at its own last token; both schedulers). Every point is the paired gain over "
        f"{reps} replications with its 95% CI. **This is not a reproduction of the paper's +22%:** the "
        "paper measured continuous (iteration-level) batching in a real server, with the SLA on per-token "
        "TBT percentiles; here batches run to completion and a request's TBT is its batch's mean step "
        "(every step of a batch is equally long with this step form, so the percentile and the mean "
        "coincide per request). No expected value exists in closed form: all rows are *info*; the one "
        "judged condition is the paper's qualitative claim at the default deadline.")
    op_heading = ("Operating points (replication 0, 60 s deadline): every scheduler at the dynamic batcher's "
                  "capacity, and saturated at twice the static baseline's capacity (where each batcher settles)")
    return CheckResult("c5_sla_capacity", "5. SLA-constrained dynamic batching: capacity gain under a 50 ms TBT "
                       "SLA, as a curve (not a reproduction)",
                       setup, rows, conds,
                       [_plot_curves(curves, out), _plot_violation(rates, violation_curves, caps, out)],
                       tables=[(f"At the defaults (deadline {DEADLINE_S:g} s)", rows_table(rows[:len(SCHEDULERS) + 3])),
                               (f"Capacity gain of {DYNAMIC} over {BASELINE}, one factor moved at a time "
                                f"(paired, {reps} replications, mean and 95% CI)", _curve_table(curves)),
                               (op_heading, _op_table(points))],
                       show_rows=False, discussion=_discussion(caps, ratio, points, curves, conds[0][1]),
                       wall_s=time.perf_counter() - t0)


def _gain(points: list[tuple[str, list[float], list[float]]], label: str) -> tuple[float, float]:
    dyn, base = next((d, b) for lab, d, b in points if lab == label)
    return mean_ci(np.asarray(dyn) / np.asarray(base) - 1.0)


def _span(points: list[tuple[str, list[float], list[float]]]) -> str:
    gains = [(lab.split(" = ")[1], mean_ci(np.asarray(d) / np.asarray(b) - 1.0)[0]) for lab, d, b in points]
    lo, hi = min(gains, key=lambda x: x[1]), max(gains, key=lambda x: x[1])
    return f"{lo[1]:+.1%} ({lo[0]}) to {hi[1]:+.1%} ({hi[0]})"


def _discussion(caps: dict[str, list[float]], ratio: list[float], points: dict[str, tuple[float, dict]],
                curves: dict[str, list[tuple[str, list[float], list[float]]]], holds: bool) -> str:
    g, h = mean_ci(ratio)
    dyn = points[f"{DYNAMIC} (saturated)"][1]
    dyn_cap = points[f"{DYNAMIC} (at dynamic's capacity)"][1]
    d45 = points["dynamic_no_bins, D_SLA = 45 ms (saturated)"][1]
    s90 = mean_ci(np.asarray(caps["static_fifo, B = 90"]) / np.asarray(caps[BASELINE]) - 1.0)[0]
    spans = "; ".join(f"{factor}: {_span(p)}" for factor, p in curves.items())
    base_by_deadline = [(lab.split(" = ")[1], mean_ci(b)[0]) for lab, _, b in curves["deadline"]]
    top = max(v for _, v in base_by_deadline)
    flat_from = next(d for d, v in base_by_deadline if v >= 0.99 * top)
    return (
        f"**What sets the gain.** At the defaults the dynamic batcher gains {g:+.1%} (± {h:.1%}) over "
        f"static B = 128. Moving one thing at a time, the mean gain ranges over: {spans}. The deadline "
        "matters most: a full B = 128 batch takes 58 ms a step, so from a deadline of "
        f"{flat_from} on the static batch's capacity is set by its TBT violations and stops growing "
        f"({top:.2f} req/s), while the dynamic batcher trades TBT for queueing delay and gains capacity as "
        "the deadline allows more queueing; at short deadlines queueing binds both. Any single point of these curves (the 60 s "
        "default included) is one choice among many, and none of them is the paper's setting.\n\n"
        "**Why the mechanism differs from the paper's.** (1) Run-to-completion batching: a batch is formed "
        "once and holds the GPU until its longest member ends, so capping b costs throughput directly and "
        "the latency deadline soon binds; the paper measured continuous (iteration-level) batching in a "
        "real server, where the batch refills every step and its SLA is on per-token TBT percentiles. "
        "(2) Algorithm 2 as written stops moving once τ̄ is inside [D_SLA − ε_D, D_SLA + ε_D] and re-centres "
        "on the recent mean batch, so the controller settles anywhere in the band: saturated, its mean TBT "
        f"is {dyn['mean TBT (ms)']:.1f} ms with mean batch {dyn['mean batch size']:.0f}, against the b = 90 "
        f"the SLA allows, and near its capacity the window-averaged τ̄ lets {dyn_cap['TBT > 50 ms']:.1%} of "
        f"requests exceed 50 ms while the batch size hunts (the ε_D and window curves show both effects). "
        f"A fixed B = 90, the largest size that meets the budget, gains {s90:+.0%} over B = 128; aiming the "
        f"controller at 45 ms (band top at the SLA) removes its TBT violations but it then settles near the "
        f"band's bottom ({d45['mean TBT (ms)']:.1f} ms, mean batch {d45['mean batch size']:.0f}) and loses "
        "throughput. (3) Workload and hardware: one GPU with our log-normal outputs against LLaMA3-70B on "
        "the paper's traces. The qualitative claim (dynamic > static B_max under a TBT SLA, at the default "
        f"deadline) {'holds' if holds else 'is NOT confirmed in this run'}; the size of the gain is a "
        "property of the setting, and the continuous-batching engine is where the paper's setting can be "
        "reproduced.")
