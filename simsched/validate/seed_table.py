"""Check 6: the seed simulator's three-mode comparison table, rerun here.

The seed reported, for 1,500 requests on 2 GPUs with bursty arrivals and its latency form:
violations 93.9 / 75.4 / 27.9%, mean latency 5.81 / 1.20 / 0.77 s, throughput 28.9 / 35.2 /
35.2 req/s and utilisation 85.9 / 39.4 / 39.2% for static_fifo / dynamic_no_bins /
multi_bin_dynamic. Its arrival rate, length distribution and SLA are not recorded with the
table, so the project's own presets fill them in (``conf/``: workload ``burstgpt``, gpus
``h100``, latency ``synthetic`` = the seed form with the seed's α, β, γ, ``sla.latency_s`` 20 s):

* **defaults**: the ``burstgpt`` preset as it stands (10 req/s, Gamma CV 1.41), 1,500 requests;
* **seed's load**: the rate set to 1.22 × static_fifo's saturated throughput, the ratio of the
  seed's dynamic throughput (35.2, which equals its arrival rate: it kept up) to its static one
  (28.9): static overloaded by the same factor as in the seed.

Our numbers are judged only on the ordering both the seed and the papers claim; the
discussion says why the values differ.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from simsched.engines.run_to_completion import COMPLETED
from simsched.metrics import compute_metrics
from simsched.saturation import saturation_throughput
from simsched.validate.common import Settings, rng, run_sim, save
from simsched.validate.stats import CheckResult, Row, fmt, mean_ci

SEED_MODES = ("static_fifo", "dynamic_no_bins", "multi_bin_dynamic")
# label -> (preset, overrides). The last row is not in the seed's table: a fixed batch as large as
# the dynamic batcher's B_max (128), without memory or SLA control: the equal-B_max baseline that
# tells what the seed's B = 8 vs B_max = 128 comparison measures.
MODES = {mode: (mode, []) for mode in SEED_MODES} | {
    "static_fifo, B = 128": ("static_fifo", ["scheduler.batcher.batch_size=128"])}
SEED = {
    "violations": (0.939, 0.754, 0.279),
    "mean latency (s)": (5.81, 1.20, 0.77),
    "throughput (req/s)": (28.9, 35.2, 35.2),
    "utilisation": (0.859, 0.394, 0.392),
}
LOAD_VS_STATIC = 35.2 / 28.9
N_REQUESTS = 1500


def presets(mode: str, overrides: list[str]) -> Any:
    """The project's components for ``scheduler=mode`` plus overrides (Hydra compose)."""
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir
    from simsched.config import register_configs
    from simsched.run import build_components

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="validate"):
        cfg = compose(config_name="config", overrides=[f"scheduler={mode}", "tracking=none", *overrides])
    return build_components(cfg)


def measure(mode: str, rate: float | None, n: int, reps: int, seed: int, scenario: int) -> dict[str, list[float]]:
    """Per replication: the seed's four figures (ours), plus N/makespan, slot efficiency, the
    offered load ρ = λ / the scheduler's saturation throughput, and KV-overflowing batches."""
    preset, extra = MODES[mode]
    ov = [f"workload.num_requests={n}"] + ([f"workload.arrivals.rate={rate}"] if rate else []) + extra
    c = presets(preset, ov)
    out: dict[str, list[float]] = {}
    for r in range(reps):
        req = c.workload.generate(rng(seed, 6, scenario, r))
        res = run_sim(req, c.scheduler, c.latency_model, gpus=c.gpus.count, predictor=c.predictor,
                      gen=rng(seed, 6, scenario, r, 1), kv_capacity_tokens=c.gpus.kv_capacity_tokens)
        mu = saturation_throughput(req, c.scheduler, c.latency_model, c.gpus, c.predictor, rng(seed, 6, scenario, r, 2))
        m = compute_metrics(res, c.sla, c.window, saturation_rps=mu)
        done = res.status == COMPLETED
        makespan = float(np.max(res.finish[done]) - req.arrival[0])
        vals = {"violations": m["sla_violation_rate"], "mean latency (s)": m["latency_mean_s"],
                "throughput (req/s)": m["throughput_rps"], "utilisation": m["gpu_utilization"],
                "N / makespan (req/s)": done.sum() / makespan, "slot efficiency": m["slot_efficiency"],
                "ρ = λ / μ_sat": m["offered_load"], "KV-overflow batches": m["kv_overflow_batches"],
                "arrival rate (req/s)": m["arrival_rate_rps"]}
        for key, v in vals.items():
            out.setdefault(key, []).append(float(v))
    return out


def static_capacity(n: int, reps: int, seed: int) -> float:
    """static_fifo's saturated throughput on the burstgpt lengths (λ far above it)."""
    return float(np.mean(measure("static_fifo", 100.0, n, reps, seed, 9)["throughput (req/s)"]))


def _wide_table(results: dict[str, dict[str, list[float]]]) -> str:
    keys = list(SEED) + ["slot efficiency", "N / makespan (req/s)", "ρ = λ / μ_sat", "KV-overflow batches"]
    head = "| mode | " + " | ".join(f"{k}: ours | seed" if k in SEED else f"{k}: ours" for k in keys) + " |"
    sep = "|---|" + "|".join("---|---" if k in SEED else "---" for k in keys) + "|"
    lines = [head, sep]
    for i, mode in enumerate(MODES):
        cells = []
        for k in keys:
            m, h = mean_ci(results[mode][k])
            pct = k in ("violations", "utilisation", "slot efficiency")
            ours = f"{m:.1%} ± {h:.1%}" if pct else f"{fmt(m, 3)} ± {fmt(h, 2)}"
            cells.append(ours)
            if k in SEED:
                seed_v = SEED[k][i] if i < len(SEED_MODES) else None
                cells.append("—" if seed_v is None else f"{seed_v:.1%}" if pct else f"{seed_v:g}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(scenarios: dict[str, dict[str, dict[str, list[float]]]], out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    x = np.arange(len(MODES))
    width = 0.8 / (len(scenarios) + 1)
    for j, key in enumerate(SEED):
        ax = axes[j]
        ax.bar(x[:len(SEED_MODES)] - 0.4 + width / 2, SEED[key], width, color="grey", label="seed")
        for s, (label, res) in enumerate(scenarios.items()):
            ax.bar(x - 0.4 + width * (s + 1.5), [np.mean(res[m][key]) for m in MODES], width,
                   yerr=[mean_ci(res[m][key])[1] for m in MODES], capsize=2, label=f"ours: {label}")
        ax.set_xticks(x, ["static", "dynamic", "multi-bin", "static 128"], fontsize=8)
        ax.set_title(key, fontsize=9)
        if key == "mean latency (s)":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    return save(fig, out / "c6_seed_table.png")


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    reps = settings.replications
    cap = static_capacity(settings.size(6_000, 3_000), reps, settings.seed)
    matched = round(LOAD_VS_STATIC * cap, 3)
    scenario_rates = {"defaults (10 req/s)": None, f"seed's load ({matched:g} req/s)": matched}
    scenarios: dict[str, dict[str, dict[str, list[float]]]] = {}
    rows, conds, tables = [], [], []
    for s, (label, rate) in enumerate(scenario_rates.items()):
        res = {mode: measure(mode, rate, N_REQUESTS, reps, settings.seed, s) for mode in MODES}
        scenarios[label] = res
        for i, mode in enumerate(MODES):
            for key, seed_vals in SEED.items():
                extra = {"seed": seed_vals[i]} if i < len(SEED_MODES) else {}
                rows.append(Row(f"{label}: {mode}", key, None, res[mode][key], extra=extra))
        tables.append((f"Scenario *{label}*: mean ± 95% CI over {reps} replications", _wide_table(res)))
        m = {mode: {k: float(np.mean(v)) for k, v in res[mode].items()} for mode in MODES}
        dyn_modes = SEED_MODES[1:]
        conds += [
            (f"{label}: static_fifo (B = 8) has the most SLA violations and the highest mean latency of the "
             "seed's three modes",
             all(m["static_fifo"][k] > m[o][k] for k in ("violations", "mean latency (s)") for o in dyn_modes)),
            (f"{label}: both dynamic modes have a higher throughput than static_fifo (B = 8)",
             all(m[o]["throughput (req/s)"] > m["static_fifo"]["throughput (req/s)"] for o in dyn_modes)),
            (f"{label}: multi_bin_dynamic's mean latency is below dynamic_no_bins'",
             m["multi_bin_dynamic"]["mean latency (s)"] < m["dynamic_no_bins"]["mean latency (s)"]),
        ]
    c = presets("static_fifo", [])
    seed_batch_s = 2 * SEED["utilisation"][0] * 8 / SEED["throughput (req/s)"][0]
    seed_L = (seed_batch_s - c.latency_model.alpha_s) / (c.latency_model.beta_s * (1 + c.latency_model.gamma * 7 / 8))
    d = {label: {mode: {k: float(np.mean(v)) for k, v in res.items()} for mode, res in sc.items()}
         for label, sc in scenarios.items()}
    dflt, loaded = d[list(d)[0]], d[list(d)[1]]
    discussion = (
        "**Why our figures differ from the seed's.** The ordering agrees (static_fifo worst, multi-bin best "
        "on violations and latency; dynamic modes above static on throughput), the values do not, for "
        "reasons that are mostly about what was measured:\n\n"
        f"1. *Time scale (lengths).* The seed's own figures imply a static batch of 8 lasting "
        f"2 GPUs × {SEED['utilisation'][0]:.1%} × 8 / {SEED['throughput (req/s)'][0]} req/s = {seed_batch_s:.2f} s, "
        f"i.e. a longest output of about {seed_L:.0f} tokens under its own latency form. Our BurstGPT-like "
        "outputs (p50 238, p95 841 tokens, the published BurstGPT quantiles) make a batch of 8 last about "
        f"5 s, so our rates are about ten times lower (static_fifo saturates at {cap:.2f} req/s) and our "
        "latencies ten times longer, with the SLA (20 s vs the seed's 1 s) scaled alike.\n"
        "2. *Throughput.* The seed's 35.2 = 35.2 req/s for both dynamic modes is N / makespan, which equals "
        "the arrival rate whenever the system keeps up (REFERENCE §7). Our `throughput_rps` counts "
        "completions inside the window; the *N / makespan* column shows that the seed's definition "
        f"reproduces its artefact here too (dynamic {loaded['dynamic_no_bins']['N / makespan (req/s)']:.2f} ≈ "
        f"multi-bin {loaded['multi_bin_dynamic']['N / makespan (req/s)']:.2f} ≈ λ at the seed's load).\n"
        "3. *Utilisation.* Ours is busy time / (G · window). Every preset batches whatever is waiting (up to "
        "its limit), so a GPU that has work is busy, and near saturation all three read ≈ 100%: utilisation "
        "says whether the GPUs were busy, not whether a mode keeps up (that is ρ = λ / μ_sat, the arrival "
        "rate over the mode's own saturation throughput on the same lengths: at the seed's load "
        f"{loaded['static_fifo']['ρ = λ / μ_sat']:.2f} for static B = 8, "
        f"{loaded['dynamic_no_bins']['ρ = λ / μ_sat']:.2f} for dynamic_no_bins and "
        f"{loaded['multi_bin_dynamic']['ρ = λ / μ_sat']:.2f} for multi-bin) nor what the busy time "
        "bought (slot efficiency). The "
        "seed's 39% for its dynamic modes means GPUs idle most of the time, so its 27.9–75.4% violations "
        "must come from service times close to its 1 s deadline rather than from queueing. The padding "
        "that utilisation hides is *slot efficiency*: multi-bin wastes far fewer slots "
        f"({loaded['multi_bin_dynamic']['slot efficiency']:.0%} vs "
        f"{loaded['dynamic_no_bins']['slot efficiency']:.0%} for one queue), which is where its lower latency comes "
        "from.\n"
        "4. *Controller inputs.* The audit of the seed (REFERENCE §7) found its SLA controller fed a model "
        "constant instead of observed latency, a batch-size floor taken from other GPUs' load and memory "
        "admission using true output lengths; ours uses observed TBT, N_decode = 0 on a free GPU and online "
        "estimates. With the seed form the 50 ms TBT budget never binds (per-token cost ≤ 7.6 ms), so our "
        "dynamic batch sizes are set by Algorithm 1 (memory), not by the SLA.\n"
        "5. *Arrivals.* The seed's burst model and rate are not recorded with its table; ours are Gamma "
        "inter-arrivals with CV 1.41 (BurstGPT's fitted shape). Violation rates at 1,500 requests depend "
        "strongly on the bursts in that short a run: note the width of the CIs.\n"
        "6. *The equal-B_max baseline (not in the seed's table).* The seed compares a fixed B = 8 with "
        "dynamic batching up to B_max = 128. A fixed B = 128 without memory or SLA control reads "
        f"{dflt['static_fifo, B = 128']['violations']:.1%} violations and "
        f"{dflt['static_fifo, B = 128']['mean latency (s)']:.1f} s mean latency at the defaults, against "
        f"{dflt['dynamic_no_bins']['violations']:.1%} and {dflt['dynamic_no_bins']['mean latency (s)']:.1f} s "
        f"for dynamic_no_bins ({loaded['static_fifo, B = 128']['violations']:.1%} / "
        f"{loaded['dynamic_no_bins']['violations']:.1%} at the seed's load), with "
        f"{dflt['static_fifo, B = 128']['KV-overflow batches']:.1f} batches per run overflowing the KV cache "
        f"(dynamic_no_bins: {dflt['dynamic_no_bins']['KV-overflow batches']:.1f}). With the seed form the "
        "TBT budget never binds, so most of what separates the seed's static and dynamic rows is the batch "
        "size (8 against up to 128); what Algorithm 1 adds over a large fixed batch is memory safety. "
        + ("Binning has the lowest mean latency of all four modes in both scenarios."
           if all(sc["multi_bin_dynamic"]["mean latency (s)"] == min(v["mean latency (s)"] for v in sc.values())
                  for sc in d.values())
           else "Binning does not beat both in every scenario here: see the tables."))
    setup = (
        f"{N_REQUESTS:,} requests, {c.gpus.count} GPUs ({c.gpus.name}, {c.gpus.kv_capacity_tokens:,} KV tokens "
        f"each), the project's `burstgpt` workload (Gamma arrivals CV {c.workload.arrivals.cv}, Zipf-like "
        "prompts, bimodal outputs with p50/p95 ≈ 238/841 tokens), latency `synthetic` = the seed form with "
        f"the seed's α = {c.latency_model.alpha_s * 1000:g} ms, β = {c.latency_model.beta_s * 1000:g} ms/token, "
        f"γ = {c.latency_model.gamma}; the three presets as shipped (static B = 8; dynamic B_max 128, "
        f"D_SLA 50 ms TBT; multi-bin K = 4, round robin); SLA: latency ≤ {c.sla.latency_s:g} s; metrics window "
        f"from {c.window.warmup_fraction:.0%} of the arrival span to the last arrival; {reps} replications. "
        f"static_fifo's saturated throughput on these lengths is {cap:.2f} req/s, so the *seed's load* "
        f"scenario runs at {LOAD_VS_STATIC:.2f} × {cap:.2f} = {matched:g} req/s. *N / makespan* is the seed's "
        "throughput definition, shown for comparison; *slot efficiency* is Σ own tokens / Σ b·L (the "
        "padding that utilisation hides); ρ = λ / μ_sat is the offered load against each mode's own saturation "
        "throughput (ρ < 1: it keeps up); *KV-overflow batches* counts batches whose true tokens exceed the "
        "KV cache. The last row, static B = 128, is not in the seed's table: it is fixed batching as large as "
        "the dynamic batcher's B_max (see 6 below).")
    return CheckResult("c6_seed_table", "6. The seed's comparison table, rerun", setup, rows, conds,
                       [_plot(scenarios, out)], tables=tables, show_rows=False, discussion=discussion,
                       wall_s=time.perf_counter() - t0)
