"""The validation suite: its closed forms, reduced versions of checks 1 and 2 that a correct
simulator passes, and the same checks failing on deliberately broken simulators."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simsched.validate import multibin_theorem as c2
from simsched.validate import queueing as c1
from simsched.validate.stats import Row, mean_ci
from simsched.validate.theory import (bin_contents, equal_mass_cuts, lemma51_latency, pk_wait,
                                      saturated_throughput, theorem42_service, theorem42_throughput)
from simsched.workloads.lengths import Fixed, Uniform

# --- closed forms -----------------------------------------------------------------------------


def test_theorem42_reproduces_the_papers_numbers():
    # REFERENCE §2: B = 128, l ~ U(1, 20): 6.447, 8.434, 9.970, 10.969 and c_max = 12.190.
    got = [theorem42_throughput(k, 128, 1, 20) for k in (1, 2, 4, 8, math.inf)]
    assert got == pytest.approx([6.447, 8.434, 9.970, 10.969, 12.190], abs=6e-4)
    # The bracket equals (B − 1)(l_max − l_min) / (2(B + 1)).
    assert theorem42_service(1, 16, 2, 30) - 16 == pytest.approx(15 * 28 / 34)


def test_exact_saturated_throughput_agrees_with_theorem_on_a_fine_grid():
    v = np.arange(1000, 20001)           # l in [1, 20] on a 0.001 grid
    for k in (1, 2, 4):
        cuts = np.array([1000 + i * 19000 / k for i in range(1, k)])
        exact = saturated_throughput(v, np.ones(len(v)), cuts, 128, lambda L: L / 1000)
        assert exact == pytest.approx(theorem42_throughput(k, 128, 1, 20), rel=2e-4)


def test_bin_errors_at_one_half_make_two_bins_identical():
    v = np.arange(1, 101)
    p = np.ones(100)
    cuts = equal_mass_cuts(v, p, 2)
    assert cuts.tolist() == [50.5]
    w = bin_contents(v, p, cuts, p_e=0.5)
    assert np.allclose(w[0] / w[0].sum(), w[1] / w[1].sum())
    one = saturated_throughput(v, p, np.empty(0), 8, lambda L: L)
    assert saturated_throughput(v, p, cuts, 8, lambda L: L, p_e=0.5) == pytest.approx(one)
    assert saturated_throughput(v, p, cuts, 8, lambda L: L, p_e=0.1) > one


def test_pk_and_lemma51_formulas():
    assert pk_wait(0.5, 1.0, 1.0) == pytest.approx(0.5)          # M/D/1 at ρ = 0.5
    assert pk_wait(0.5, 1.0, 2.0) == pytest.approx(1.0)          # M/M/1 at ρ = 0.5
    with pytest.raises(ValueError):
        pk_wait(1.0, 1.0, 1.0)
    assert lemma51_latency(4, 128, 1, 20, 16) == pytest.approx(theorem42_service(4, 128, 1, 20) + 127 * 4 / 32)


def test_verdict_rule_can_fail_and_refuses_wide_intervals():
    assert Row("x", "q", 10.0, [10.0, 10.1, 9.9]).verdict == "PASS"
    assert Row("x", "q", 10.0, [11.0, 11.1, 10.9]).verdict == "FAIL"        # outside CI + 1%
    assert Row("x", "q", 10.0, [5.0, 15.0, 10.0]).verdict == "FAIL"         # CI half-width > 5%
    assert Row("x", "q", None, [1.0, 2.0]).verdict == "info"
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(2.4841, rel=1e-3)              # t(2) = 4.303


# --- check 1, reduced -------------------------------------------------------------------------

SERVICES = {"M/D/1": Fixed(100), "M/G/1 uniform": Uniform(1, 199)}


def test_engine_waits_equal_the_lindley_recursion():
    # The single-server FIFO queue behind check 1, request by request: W_{n+1} = max(0, W_n + S_n − A_{n+1}).
    from simsched.batchers import FixedBatcher
    from simsched.scheduler import Scheduler
    from simsched.validate.common import poisson_requests, rng, run_sim

    req = poisson_requests(0.8, Uniform(1, 199), 5000, rng(0, 99))
    res = run_sim(req, Scheduler(FixedBatcher(1)), c1.LATENCY)
    s, gaps = 0.01 * req.output, np.diff(req.arrival)
    w = np.zeros(len(s))
    for i in range(1, len(s)):
        w[i] = max(0.0, w[i - 1] + s[i - 1] - gaps[i - 1])
    assert np.allclose(res.start - req.arrival, w, atol=1e-9)


def test_check1_reduced_passes():
    rows = c1.check_queueing(SERVICES, (0.3, 0.6), n_requests=20_000, reps=4, max_half_rel=0.1)
    assert [r.verdict for r in rows] == ["PASS"] * 4, [(r.point, r.rel_diff, r.half) for r in rows]


class _IgnoresLength:
    """A broken latency model: every request takes the mean service time (M/G/1 becomes M/D/1)."""

    def batch_time(self, b, L, P):
        return 0.01 * 100.0 + 0.0 * L


class _TenPercentSlow:
    def batch_time(self, b, L, P):
        return 1.1 * 0.01 * L


def test_check1_fails_when_service_ignores_length():
    rows = c1.check_queueing({"M/G/1 uniform": Uniform(1, 199)}, (0.6,), 20_000, 4, latency=_IgnoresLength(),
                             max_half_rel=0.1)
    assert rows[0].verdict == "FAIL" and rows[0].rel_diff < -0.15


def test_check1_fails_when_service_is_ten_percent_slow():
    rows = c1.check_queueing({"M/D/1": Fixed(100)}, (0.6,), 20_000, 4, latency=_TenPercentSlow(), max_half_rel=0.1)
    assert rows[0].verdict == "FAIL" and rows[0].rel_diff > 0.2


# --- check 2, reduced -------------------------------------------------------------------------


def test_check2_reduced_passes():
    rows, conds = c2.check_theorem42(16, 1, 20, (1, 2, 4), n=30_000, reps=3, k_big=32)
    assert [r.verdict for r in rows] == ["PASS"] * 4, [(r.point, r.rel_diff, r.half) for r in rows]
    assert all(ok for _, ok in conds)
    lrows, lconds = c2.check_lemma51(16, 1, 20, (1, 4), lam=4.0, gpus=16, n=8_000, reps=3)
    assert [r.verdict for r in lrows] == ["PASS"] * 2, [(r.point, r.rel_diff, r.half) for r in lrows]
    assert all(ok for _, ok in lconds)


def _mean_not_longest(members, lo, hi, prompt, output):
    """A broken engine step: a batch timed by its average member instead of its longest."""
    rows = [members[j] for j in range(lo, hi)]
    mean = sum(output[r] for r in rows) / len(rows)
    return mean, sum(prompt[r] for r in rows), sum(output[r] for r in rows)


def test_check2_fails_when_batch_time_uses_the_mean_output(monkeypatch):
    from simsched.engines import rtc_loop

    monkeypatch.setenv("SIMSCHED_JIT", "0")      # a patched helper reaches the Python loop only
    monkeypatch.setattr(rtc_loop, "batch_tokens", _mean_not_longest)
    rows, conds = c2.check_theorem42(16, 1, 20, (1, 2, 4), n=30_000, reps=3)
    assert [r.verdict for r in rows] == ["FAIL"] * 3
    assert rows[0].rel_diff > 0.5          # the mean of 16 is ~ half their max: throughput ~ +60%
    lrows, _ = c2.check_lemma51(16, 1, 20, (1,), lam=4.0, gpus=16, n=8_000, reps=3)
    assert lrows[0].verdict == "FAIL"


# --- checks 4, 5, 6: what is judged, against what ----------------------------------------------


def test_check4_judges_the_paper_only_at_points_not_fitted():
    from simsched.validate import eight_servers as c4

    med, sig = 38.0, 0.465
    rows, _ = c4.check_distribution("ln", *c4.lognormal_pmf(med, sig), (1, 2, 32), 30_000, 3, 0, 0, judge_paper=True)
    paper = {int(r.point.rsplit("= ", 1)[1]): r for r in rows if r.quantity == "threshold vs paper (req/s)"}
    assert paper[1].verdict == "info" and paper[32].verdict == "info"     # fitted: agree by construction
    assert paper[2].expected == c4.PAPER[2] and paper[2].verdict == "PASS"
    # Lengths 15% longer than fitted: the predicted point fails against the paper (the fitted ones
    # would too, but they are not judged).
    rows, _ = c4.check_distribution("ln", *c4.lognormal_pmf(1.15 * med, sig), (2,), 30_000, 3, 0, 0,
                                    judge_paper=True)
    assert [r.verdict for r in rows if r.quantity == "threshold vs paper (req/s)"] == ["FAIL"]


def test_check5_curves_move_one_factor_at_a_time():
    from dataclasses import fields

    from simsched.validate import sla_capacity as c5

    curves = c5.curve_settings()
    assert set(curves) == {"deadline", "α", "δ", "ε_D", "window", "release"}
    default = c5.SCHEDULERS[c5.DYNAMIC].batcher
    for factor, points in curves.items():
        assert len(points) >= 2
        for _, dyn, base in points:
            assert base.scheduler is c5.SCHEDULERS[c5.BASELINE]
            assert (dyn.deadline_s, dyn.release) == (base.deadline_s, base.release)   # paired
            changed = [f.name for f in fields(default) if getattr(dyn.scheduler.batcher, f.name) != getattr(default, f.name)]
            moved = changed + (["deadline"] if dyn.deadline_s != c5.DEADLINE_S else []) \
                + (["release"] if dyn.release != "batch_end" else [])
            assert len(moved) <= 1, (factor, moved)


def test_check6_has_the_equal_bmax_static_baseline():
    from simsched.validate import seed_table as c6

    preset, overrides = c6.MODES["static_fifo, B = 128"]
    c = c6.presets(preset, overrides)
    assert c.scheduler.batcher.batch_size == c6.presets("dynamic_no_bins", []).scheduler.batcher.b_max == 128
    assert not getattr(c.scheduler.batcher, "full_batches_only")


def test_check5_replications_in_parallel_give_the_same_capacities():
    from simsched.validate import sla_capacity as c5

    settings = [c5.Setting(c5.SCHEDULERS[c5.DYNAMIC]), c5.Setting(c5.SCHEDULERS[c5.BASELINE], deadline_s=40.0)]
    serial = c5.capacities(settings, 2_000, 2, 0, jobs=1)
    assert c5.capacities(settings, 2_000, 2, 0, jobs=2) == serial
    assert all(c == c and c > 0 for caps in serial for c in caps)
