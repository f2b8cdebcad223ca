"""Check 3: Multi-Bin with prediction errors (Guldogan et al. §6.2).

The predictor ``Noisy(sigma=0, p_e)`` predicts the true length, then moves a request's bin one
down or one up with probability p_e each (a move past the first or last bin leaves it). The rest
is check 2's saturated single-GPU model (B = 128, l ∈ U(1, 20)). Expected values are exact
[derived in ``theory.saturated_throughput``]: each bin's content is its own lengths plus its
neighbours' moved in, all bins keep equal mass, and round-robin serves them equally often.
The paper's claim to hold: throughput stays increasing in k at every error rate.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from simsched.metrics import Sla, compute_metrics
from simsched.predictor import Noisy
from simsched.validate.common import Settings, figure, finish, poisson_requests, rng, run_sim
from simsched.validate.multibin_theorem import (LATENCY, SATURATED_WINDOW, STEP_S, lengths, multi_bin_static)
from simsched.validate.stats import CheckResult, Row
from simsched.validate.theory import saturated_throughput

B, L_MIN, L_MAX = 128, 1.0, 20.0
OVERLOAD = 2.0
# Bin accuracies of the paper's BERT predictor (86% / 63% / 42% for 2 / 4 / 8 bins) as p_e:
# accuracy = 1 − p_e·(2k − 2)/k (edge bins can only be missed on one side).
BERT_ACCURACY = {2: 0.86, 4: 0.63, 8: 0.42}


def p_e_for_accuracy(k: int, accuracy: float) -> float:
    return (1.0 - accuracy) * k / (2 * k - 2)


def expected(k: int, p_e: float) -> float:
    d = lengths(L_MIN, L_MAX)
    v = np.arange(d.low, d.high + 1)
    cuts = np.asarray(multi_bin_static(B, k, L_MIN, L_MAX).boundaries or [], dtype=float)
    return saturated_throughput(v, np.ones(len(v)), cuts, B, lambda L: STEP_S * L, p_e=p_e)


def simulated(k: int, p_e: float, n: int, reps: int, seed: int) -> list[float]:
    lam = OVERLOAD * B / ((L_MIN + L_MAX) / 2.0)
    out = []
    for r in range(reps):
        req = poisson_requests(lam, lengths(L_MIN, L_MAX), n, rng(seed, 3, r))
        res = run_sim(req, multi_bin_static(B, k, L_MIN, L_MAX), LATENCY, predictor=Noisy(sigma=0.0, p_e=p_e),
                      gen=rng(seed, 3, r, 1))
        out.append(compute_metrics(res, Sla(), SATURATED_WINDOW)["throughput_rps"])
    return out


def check_prediction_errors(ks: tuple[int, ...], p_es: tuple[float, ...], n: int, reps: int, seed: int = 0,
                            tol_rel: float = 0.01) -> tuple[list[Row], list[tuple[str, bool]]]:
    rows, conds = [], []
    base = simulated(1, 0.0, n, reps, seed) if 1 in ks else None
    for p_e in p_es:
        sel = []
        for k in ks:
            vals = base if k == 1 else simulated(k, p_e, n, reps, seed)
            sel.append(Row(f"p_e = {p_e:g}, k = {k}", "throughput (req/time unit)", expected(k, p_e), list(vals),
                           tol_rel=tol_rel))
        rows += sel
        means = [r.mean for r in sel]
        conds.append((f"p_e = {p_e:g}: simulated throughput strictly increasing in k = {list(ks)}",
                       bool(np.all(np.diff(means) > 0))))
    return rows, conds


def check_bert_points(n: int, reps: int, seed: int = 0) -> list[Row]:
    """The paper's predictor accuracies mapped to p_e; the gain over one bin beside the paper's."""
    rows = []
    k1 = np.asarray(simulated(1, 0.0, n, reps, seed))
    for k, acc in BERT_ACCURACY.items():
        p_e = p_e_for_accuracy(k, acc)
        sim = np.asarray(simulated(k, p_e, n, reps, seed)) / k1 - 1.0   # same workloads: paired ratio
        rows.append(Row(f"k = {k}, bin accuracy {acc:.0%} (p_e = {p_e:.3f})", "gain over k = 1",
                        expected(k, p_e) / expected(1, 0.0) - 1.0, list(sim), tol_rel=0.0, max_half_rel=None,
                        extra={"oracle gain (theory)": f"{expected(k, 0.0) / expected(1, 0.0) - 1.0:+.1%}",
                               "paper (end to end, GSM8K)": "+45% oracle → +8% BERT" if k == 4 else "—"}))
    for r in rows:   # a difference of ratios: judged on an absolute 1 percentage point
        r.tol_rel = 0.01 / max(abs(r.expected), 1e-9)
    return rows


def _plot(rows: list[Row], ks: tuple[int, ...], p_es: tuple[float, ...], out: Path) -> str:
    fig, ax = figure()
    for k in ks:
        sel = [r for r in rows if r.point.endswith(f"k = {k}")]
        line, = ax.plot(p_es, [r.expected for r in sel], "-", label=f"exact, k = {k}")
        ax.errorbar(p_es, [r.mean for r in sel], yerr=[r.half for r in sel], fmt="o", color=line.get_color(),
                    capsize=3)
    return finish(fig, ax, out / "c3_prediction_errors.png", "p_e (probability of each neighbouring bin)",
                  "throughput (req/time unit)",
                  f"Bin errors, B = {B}, l ~ U(1, 20): simulated (points, 95% CI) vs exact", legend_size=8, title_size=10)


def run(settings: Settings, out: Path) -> CheckResult:
    t0 = time.perf_counter()
    reps = settings.replications
    n = settings.size(400_000, 150_000)
    ks = (1, 2, 4, 8)
    p_es = (0.0, 0.01, 0.05, 0.1, 0.2) if not settings.quick else (0.0, 0.05)
    rows, conds = check_prediction_errors(ks, p_es, n, reps, settings.seed)
    lam = OVERLOAD * B / ((L_MIN + L_MAX) / 2.0)
    window_s = (1.0 - SATURATED_WINDOW.warmup_fraction) * n / lam
    resolution = B / (expected(1, 0.0) * window_s)    # one batch of the k = 1 completions
    bert = check_bert_points(n, reps, settings.seed)
    setup = (f"Check 2's saturated model (`multi_bin_static`, B = {B}, l ∈ U(1, 20) on the 0.01 grid, one GPU, "
             f"λ = {OVERLOAD:g}·c_max, {n:,} requests, {reps} replications, common random numbers) with predictor "
             "`Noisy(sigma=0, p_e)`: the true length, then the bin moved down or up with probability p_e "
             "each. Expected [derived]: the exact saturated throughput with each bin's content mixed from "
             "its neighbours (all bins keep equal mass; round-robin serves them equally); verdict as in "
             "check 2 (CI widened by 1%). With B = 128 a bin's batch almost surely contains a neighbour's "
             "request once p_e ≳ 0.01, so its time is set by the neighbour's top: most of the gain of "
             "binning goes at small p_e, but k bins still beat k/2 because the mixed bins stay narrower. "
             "As p_e → 0.5 two bins become the same mixture, so k = 2's edge over k = 1 vanishes (0.14% "
             "at p_e = 0.3); `throughput_rps` counts whole batches of 128 in the window, a resolution of "
             f"about {resolution:.2%} per run, so the grid stops at p_e = 0.2 "
             "where the smallest step (k = 1 → 2) is 0.4%.\n\n"
             "The paper's BERT predictor reached bin accuracy 86% / 63% / 42% for 2 / 4 / 8 bins; with "
             "accuracy = 1 − p_e(2k − 2)/k these are the p_e in the second table, whose rows give the "
             "throughput gain over one bin (paired with the same workloads) next to the paper's "
             "end-to-end result (+45% with oracle lengths → +8% with predictions, 1 → 4 bins, on GSM8K "
             "with a real model). Judged against our exact value within 1 percentage point.")
    def gain_kept(k: int, p_e: float) -> float:
        return (expected(k, p_e) - expected(1, 0.0)) / (expected(k, 0.0) - expected(1, 0.0))

    k4 = next(r for r in bert if r.point.startswith("k = 4"))
    discussion = (
        f"Largest deviation from the exact values: {max(abs(r.rel_diff) for r in rows):.2%}. With B = {B} the "
        "gain of binning is fragile: a batch of 128 from a bin almost surely contains some request moved in "
        "from a neighbour once p_e is a few percent, and the batch then lasts as long as the neighbour's "
        f"longest. At p_e = 0.05, k = 2 keeps {gain_kept(2, 0.05):.0%} of its error-free gain, k = 8 keeps "
        f"{gain_kept(8, 0.05):.0%}; more bins still help because a moved request can only come from an adjacent, "
        "narrower bin, so throughput stays increasing in k. With the paper's BERT bin accuracies, k = 4 "
        f"gains {k4.mean:+.1%} here (exact {k4.expected:+.1%}) against {k4.extra['oracle gain (theory)']} "
        "with oracle lengths. The paper measured +45% → +8% end to end (GSM8K, a real model, B and lengths of "
        "its own): the same direction and a similar collapse. Ours keeps more of the gain; plausible reasons, "
        "not tested here: a real predictor also errs by two or more bins (the ±1-bin model never does), "
        "GSM8K lengths are skewed rather than uniform, and an end-to-end measurement carries overheads that "
        "binning does not remove.")
    return CheckResult("c3_prediction_errors", "3. Multi-Bin with prediction errors (§6.2)", setup, rows + bert,
                       conds, [_plot(rows, ks, p_es, out)], discussion=discussion, wall_s=time.perf_counter() - t0)
