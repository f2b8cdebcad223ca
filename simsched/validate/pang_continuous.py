"""Check 8: Pang et al. in the paper's own setting: continuous batching, the paper's decode
step τ(b) = 0.22·b + 30 ms plus a 70B-class prefill cost, capacity under a 50 ms TBT SLA.

Capacity = the largest Poisson λ at which the p-th percentile (95th) of per-request TBT (TPOT)
stays ≤ 50 ms *and* the 95th percentile of queueing delay (arrival to first scheduled) stays
≤ ``QUEUE_BOUND_S``: the queueing bound makes "capacity" finite for a controller that keeps
TBT in budget by letting the queue grow. Found by ``find_capacity`` (bisection on λ)
separately per replication, so the gain is paired and the CI comes from the replications.

Default cost is small: the SLA-controlled batcher (the paper's D = 50 ms, ε_D = 5 ms, α = 4,
δ = 2, window 16) against static ``max_num_seqs`` = B_max = 128. ``--c8-curves`` adds the
curves over α, δ, ε_D and the window (one at a time around the defaults) and a static
``max_num_seqs`` = 90 (the largest batch that meets the budget, chosen in hindsight).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.capacity_search import find_capacity
from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.engines.continuous.policies import max_seqs_cap, policy_setup
from simsched.engines.continuous.simulate import usable_kv_tokens
from simsched.latency import StepTime
from simsched.predictor import Oracle
from simsched.roofline import GPUS, MODELS, kv_capacity_tokens_for, step_time_for
from simsched.scheduler import Scheduler
from simsched.serving_metrics import itl_bin_edges
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng
from simsched.validate.stats import CheckResult, Row, mean_ci
from simsched.workloads.lengths import Lognormal

TBT_S, PCT, QUEUE_BOUND_S = 0.050, 95.0, 5.0
PAPER = (5.4, 6.6)
TP = 4                                      # 70B in bf16 on 4 x H100 (tensor parallel)
_ROOF = step_time_for(GPUS["h100"], MODELS["llama3_70b"], tensor_parallel=TP)
STEP = StepTime(c0_s=0.030, c_dec_s=0.00022, c_pf_s=_ROOF.c_pf_s, c_attn_s=_ROOF.c_attn_s,
                name="pang_70b", source="Pang et al.'s decode step; prefill per token and attention from the "
                                        "roofline of Llama-3-70B on 4x H100")
KV_TOKENS = kv_capacity_tokens_for(GPUS["h100"], MODELS["llama3_70b"], tensor_parallel=TP)
PROMPT = Lognormal(median=400.0, sigma=0.7, minimum=1, maximum=4096)   # mean ≈ 510 tokens
OUTPUT = Lognormal(median=200.0, sigma=0.7, minimum=1, maximum=2048)   # mean ≈ 255 tokens
ENGINE = ContinuousEngine(max_model_len=8192, async_scheduling=False, fast_forward=True)
DEFAULT = DynamicBatcher(b_max=128, d_sla_s=0.05, eps_d_s=0.005, alpha=4, delta=2, window=16)
BASELINE = "static max_num_seqs = 128"
DYNAMIC = "SLA-controlled (defaults)"


def schedulers(curves: bool) -> dict[str, Scheduler]:
    out = {BASELINE: Scheduler(FixedBatcher(batch_size=128), name="static_fifo"),
           DYNAMIC: Scheduler(DEFAULT, name="dynamic_no_bins")}
    if curves:
        out["static max_num_seqs = 90"] = Scheduler(FixedBatcher(batch_size=90), name="static_fifo")
        for key, values in (("alpha", (2, 8)), ("delta", (1, 4)), ("eps_d_s", (0.001, 0.0025, 0.01)),
                            ("window", (4, 64))):
            for v in values:
                out[f"{key} = {v:g}"] = Scheduler(replace(DEFAULT, **{key: v}), name="dynamic_no_bins")
    return out


def _pct(hist: np.ndarray, q: float) -> float:
    lows = itl_bin_edges()
    cum = np.cumsum(hist)
    if cum[-1] <= 0:
        return math.nan
    k = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
    return float(lows[min(k + 1, len(lows) - 1)])      # the bin's upper edge: conservative


def measure(scheduler: Scheduler, rate: float, n: int, seed: int, rep: int) -> dict[str, float]:
    """p-th percentile ITL and queueing delay of one run (the same requests at every λ)."""
    req = poisson_requests(1.0, OUTPUT, n, rng(seed, 8, rep), prompt=PROMPT)
    req.arrival = req.arrival / rate
    hw = Hardware(1, KV_TOKENS, "h100", 80.0)
    cap = max_seqs_cap(scheduler)
    pol = policy_setup(ENGINE, scheduler, Oracle(), req, rng(seed, 8, rep, 1), usable_kv_tokens(ENGINE, hw, cap))
    res = simulate_continuous(req, ENGINE, STEP, hw, cap, policy=pol)[0]
    wait = res.first_scheduled - req.arrival
    done = (res.status == 0) & (res.output_emitted > 1)
    tpot = (res.finish - res.first_token)[done] / (res.output_emitted[done] - 1)
    return {"tbt_p": float(np.percentile(tpot, PCT)) if len(tpot) else math.inf,
            "itl_p": _pct(res.itl_hist, PCT), "queue_p": float(np.nanpercentile(wait, PCT)),
            "running_mean": float(np.mean(res.timeseries["running"])) if len(res.timeseries["running"]) else 0.0}


def meets(scheduler: Scheduler, rate: float, n: int, seed: int, rep: int) -> float:
    m = measure(scheduler, rate, n, seed, rep)
    return 0.0 if m["tbt_p"] <= TBT_S and m["queue_p"] <= QUEUE_BOUND_S else 1.0


def capacities(scheduler: Scheduler, n: int, reps: int, seed: int) -> list[float]:
    return [find_capacity(lambda lam, _r, r=r: meets(scheduler, lam, n, seed, r), 0.5, 2.0, 8.0,
                          replications=1, rel_tol=0.02).capacity for r in range(reps)]


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    curves = bool(getattr(settings, "extended", False))
    reps = settings.replications
    n = settings.size(6000, 2500)
    scheds = schedulers(curves)
    caps = {name: capacities(s, n, reps, settings.seed) for name, s in scheds.items()}
    base = np.asarray(caps[BASELINE])
    rows = [Row(name, "capacity (req/s)", None, caps[name]) for name in scheds]
    gains = {name: list(np.asarray(c) / base - 1.0) for name, c in caps.items() if name != BASELINE}
    for name, g in gains.items():
        paper = f"{PAPER[0]} → {PAPER[1]} req/s (+{PAPER[1] / PAPER[0] - 1:.0%})"
        extra = {"paper": paper} if name == DYNAMIC else {}
        rows.append(Row(f"{name} vs {BASELINE}", "capacity gain", None, g, extra=extra))
    g, h = mean_ci(gains[DYNAMIC])
    at = 1.5 * float(np.mean(caps[BASELINE]))
    ops = {name: measure(s, at, n, settings.seed, 0) for name, s in list(scheds.items())[:2]}
    band = DEFAULT.d_sla_s + DEFAULT.eps_d_s
    conds = [(f"overloaded (1.5× the baseline's capacity) the controller keeps the {PCT:g}th-percentile TBT "
              f"within D + ε_D = {band * 1e3:g} ms while static max_num_seqs = 128 exceeds 50 ms (the "
              "mechanism Pang et al. rely on)", bool(ops[DYNAMIC]["tbt_p"] <= band and ops[BASELINE]["tbt_p"] > TBT_S))]
    plots = [_plot(caps, gains, out)] if curves else []
    setup = (
        "One replica (Llama-3-70B on 4× H100, tensor parallel), continuous batching (vLLM v1 step formation, "
        "synchronous scheduling, chunked prefill with an 8192-token budget). Step time: the paper's decode "
        "step τ(b) = 0.22·b + 30 ms (`c0` = 30 ms, `c_dec` = 0.22 ms per sequence, no separate context "
        f"term: the paper's fit includes it) plus prefill costs from the roofline preset "
        f"`step_time_for(H100, llama3_70b, tensor_parallel=4)` in `simsched/roofline.py` "
        f"({STEP.c_pf_s * 1e6:.1f} µs per prompt token and its quadratic attention term), which are datasheet "
        f"figures, not a measurement. KV cache {KV_TOKENS:,} tokens (the same preset; it never binds here). "
        "Workload (assumed: REFERENCE §3 gives no lengths): Poisson arrivals, log-normal prompts (median "
        "400, σ 0.7, mean ≈ 510 tokens) and outputs (median 200, σ 0.7, mean ≈ 255 tokens), the same "
        "requests at every λ per replication. SLA: the 95th percentile of per-request TBT (TPOT: "
        "(last token − first token) / (tokens − 1), the paper's decode latency; single inter-token gaps "
        "include the prefill chunks sharing a step and are "
        "not judged) ≤ 50 ms and, "
        f"as the explicit queueing bound, the 95th percentile of queueing delay ≤ {QUEUE_BOUND_S:g} s. "
        f"Capacity by bisection on λ (2% bracket), once per replication ({reps} replications, {n:,} "
        "requests). Schedulers: `static_fifo` (vLLM FCFS with max_num_seqs = B_max = 128, no SLA control: "
        "the baseline) and `dynamic_no_bins` (FCFS with Pang's Algorithms 1 and 2 capping the running "
        "batch from the observed step time; D = 50 ms, ε_D = 5 ms, α = 4, δ = 2, window 16 steps)."
        + (" Curves: α ∈ {2, 8}, δ ∈ {1, 4}, ε_D ∈ {1, 2.5, 10} ms, window ∈ {4, 64}, one at a time; and a "
           "static max_num_seqs = 90." if curves else " The curves over α, δ, ε_D and the window run with "
           "`--c8-curves`."))
    disc = (
        f"Gain of the SLA-controlled batcher over static max_num_seqs = 128: {g:+.1%} ± {h:.1%} (paper: +22%, "
        f"5.4 → 6.6 req/s). Overloaded at {at:.2f} req/s the static baseline's 95th-percentile TBT is "
        f"{ops[BASELINE]['tbt_p'] * 1e3:.1f} ms (mean running {ops[BASELINE]['running_mean']:.0f}, p95 queueing "
        f"{ops[BASELINE]['queue_p']:.1f} s) and the controller's {ops[DYNAMIC]['tbt_p'] * 1e3:.1f} ms (mean "
        f"running {ops[DYNAMIC]['running_mean']:.0f}, p95 queueing {ops[DYNAMIC]['queue_p']:.1f} s). What "
        "matches the paper: the mechanism (a static cap of 128 lets the running batch grow until τ > 50 ms; "
        "the controller holds the step time near D and trades it for queueing). What does not: the gain. On "
        "this engine prefill chunks share the decode steps, so the controller's observed step time includes "
        "them and it settles at a running batch well below (50 − 30)/0.22 = 91 (the mean running batch above); "
        "the static cap's p95 TBT crosses 50 ms not far below the load where the controller's queue passes "
        "the bound, so the gain measured here is smaller than the paper's +22%. Further, the absolute "
        "capacities depend on the assumed lengths and prefill cost (the "
        "paper's traces and hardware are not reproduced), and Algorithm 2 as written stops moving once τ̄ "
        "is inside D ± ε_D, so it settles near the band's upper edge when it approaches from below "
        "(tests/test_continuous_policies.py): with ε_D = 5 ms a percentile-of-ITL SLA at exactly 50 ms is "
        "then met only through the steps' spread, which is why ε_D matters in the curves.")
    return CheckResult("c8_pang_continuous", "8. Pang et al. in the paper's setting: continuous batching, 70B-class "
                       "step, capacity under a 50 ms TBT SLA", setup, rows, conds, plots, discussion=disc,
                       wall_s=time.perf_counter() - t0)


def _plot(caps: dict[str, list[float]], gains: dict[str, list[float]], out: Path) -> str:
    fig, ax = figure(7.5, 4.0)
    names = list(gains)
    stats = [mean_ci(gains[k]) for k in names]
    ax.errorbar(range(len(names)), [m for m, _ in stats], yerr=[0 if hh != hh else hh for _, hh in stats],
                fmt="o", capsize=3)
    ax.axhline(PAPER[1] / PAPER[0] - 1, color="grey", ls="--", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    return finish(fig, ax, out / "c8_pang_continuous.png", "setting", "capacity gain vs static 128",
                  "Capacity gain (95% CI) over α, δ, ε_D, window; dashed: the paper's +22%", title_size=9)
