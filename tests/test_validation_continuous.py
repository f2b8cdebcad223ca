"""Validation check 7 (the continuous engine): each part passes on the engine and fails on a
deliberately broken one. The broken engines run the plain-Python loop (SIMSCHED_JIT=0), where
the monkeypatched functions are the ones the loop calls."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simsched.engines.continuous import lazy_decode, loop, schedule
from simsched.validate import continuous as c7
from simsched.validate.common import Settings

GOLDENS = Path(__file__).resolve().parent / "data" / "vllm"
SMALL = Settings(quick=True, reps=2)


@pytest.fixture(autouse=True)
def python_loop(monkeypatch):
    monkeypatch.setenv("SIMSCHED_JIT", "0")


def test_single_request_closed_form_passes_and_fails_when_cpu_counts_twice():
    assert all(ok for _, ok in c7.single_request_rows())
    broken = c7.single_request_rows(lambda e: replace(e, step_cpu_s=2 * c7.STEP.cpu_s))
    assert not any(ok for _, ok in broken)


def small_little(engine_for=None) -> float:
    req = c7.poisson_requests(8.0, c7.Empirical([20, 200]), 400, np.random.default_rng(1),
                              prompt=c7.Empirical([100, 400]))
    eng = c7.ContinuousEngine(max_num_batched_tokens=2048, max_num_seqs=64, num_gpu_blocks=3000,
                              max_model_len=4096, timeseries_interval_s=0.25)
    return c7.little_ratio(req, eng)


def test_little_holds_and_fails_on_a_time_series_missing_a_request(monkeypatch):
    assert small_little() == pytest.approx(1.0, abs=0.02)
    real = loop.sample

    def missing_one(S, K, L, at):
        real(S, K, L, at)
        for k in range(L.counters[4] - len(S.si), L.counters[4]):
            if L.ts[k, 2] > 0:
                L.ts[k, 2] -= 1

    monkeypatch.setattr(loop, "sample", missing_one)
    assert abs(small_little() - 1.0) > 0.05




def test_single_server_limit_fails_when_steps_run_long(monkeypatch):
    assert c7.lindley_condition(600)[1]
    real = loop.tick_length
    monkeypatch.setattr(loop, "tick_length", lambda P, g, f: real(P, 1.1 * g, f))
    assert not c7.lindley_condition(600)[1]


@pytest.mark.skipif(not any(GOLDENS.glob("*.json.gz")), reason="no golden traces in tests/data/vllm")
def test_conformance_fails_when_victims_go_to_the_back(monkeypatch):
    ok, _ = c7.conformance_conditions()
    assert ok and all(x for _, x in ok)
    monkeypatch.setattr(schedule, "wq_push_front", lambda P, Q, S, g, i: schedule.wq_pop.__globals__[
        "wq_push_back"](P, Q, S, g, i))
    broken, _ = c7.conformance_conditions()
    assert sum(not x for _, x in broken) >= 4


def test_fast_forward_equivalence_fails_when_the_cohort_misreads_gaps(monkeypatch):
    assert all(ok for _, ok in c7.fast_forward_conditions(range(3))[0])
    real = lazy_decode._deque_max_since
    monkeypatch.setattr(lazy_decode, "_deque_max_since", lambda S, g, u: real(S, g, u) + 1e-6)
    assert not all(ok for _, ok in c7.fast_forward_conditions(range(3))[0])


def test_check_8_controller_holds_tbt_where_static_128_breaks_it():
    """Check 8's judged mechanism at one overloaded λ (Pang's step, 70B prefill): the controller's
    p95 TBT stays within D + ε_D while static max_num_seqs = 128 exceeds 50 ms."""
    from simsched.validate import pang_continuous as c8

    s = c8.schedulers(False)
    dyn = c8.measure(s[c8.DYNAMIC], 6.0, 1500, 0, 0)
    static = c8.measure(s[c8.BASELINE], 6.0, 1500, 0, 0)
    assert dyn["tbt_p"] <= 0.055
    assert static["tbt_p"] > 0.05
