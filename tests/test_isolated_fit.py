"""The step-time fit on isolated requests: which requests count, and coefficient recovery."""
from __future__ import annotations

import numpy as np
import pytest

from simsched.errors import SimschedError
from simsched.isolated_fit import cached_tokens, fit_isolated, isolated
from simsched.workloads.measured import MeasuredRun

TRUE = dict(c0=0.021, c_pf=7.0e-5, c_attn=1.5e-8, c_ctx=3.0e-7)


def synthetic(n=30, budget=1000, block=16, prefix=512, seed=0, c_dec=0.0, spacing=20.0):
    """Requests far apart, each timed by hand from the step form: prefill chunks of at most
    ``budget`` tokens after a whole-block prefix hit (none for the first request), then L − 1
    single-sequence decode steps."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(600, 3000, n)
    output = rng.integers(1, 60, n)
    ttft, e2e = np.zeros(n), np.zeros(n)
    for i in range(n):
        hit = 0 if i == 0 else (min(prefix, prompt[i] - 1) // block) * block
        todo, start, t = prompt[i] - hit, hit, 0.0
        while todo > 0:
            k = min(todo, budget)
            t += TRUE["c0"] + TRUE["c_pf"] * k + TRUE["c_attn"] * (k * start + k * k / 2)
            start, todo = start + k, todo - k
        ttft[i] = t
        ctx = prompt[i] + np.arange(1, output[i])
        e2e[i] = t + np.sum(TRUE["c0"] + c_dec + TRUE["c_ctx"] * ctx)
    arrival = np.arange(n) * spacing
    return MeasuredRun("synthetic", "table", arrival, prompt.astype(np.int64), output.astype(np.int64), ttft, e2e,
                       np.ones(n, bool), "timestamps", np.full(n, prefix, np.int64), np.zeros(n, np.int64))


def test_the_fit_recovers_known_coefficients_with_chunked_prefills():
    run = synthetic()
    fit = fit_isolated(run, block_size=16, max_num_batched_tokens=1000)
    got = fit.coefficients()
    assert len(fit.used) == 30
    assert got["c0_s"] == pytest.approx(TRUE["c0"], rel=1e-6)
    assert got["c_pf_s"] == pytest.approx(TRUE["c_pf"], rel=1e-6)
    assert got["c_attn_s"] == pytest.approx(TRUE["c_attn"], rel=1e-5)
    assert got["c_ctx_s"] == pytest.approx(TRUE["c_ctx"], rel=1e-6)
    assert got["c_dec_s"] == 0.0 and fit.ttft_mape < 1e-9 and fit.decode_mape < 1e-9
    # With the per-sequence cost given, c0 is what remains of the decode step.
    fit2 = fit_isolated(synthetic(c_dec=0.004), block_size=16, max_num_batched_tokens=1000, c_dec_s=0.004)
    assert fit2.coefficients()["c0_s"] == pytest.approx(TRUE["c0"], rel=1e-6)
    # A wrong chunk budget leaves a visible in-sample error.
    assert fit_isolated(run, block_size=16, max_num_batched_tokens=4096).ttft_mape > 1e-3


def test_only_requests_served_alone_are_used():
    run = synthetic(n=8)
    run.arrival[3] = run.arrival[2] + 0.5 * run.e2e[2]     # 2 and 3 overlap
    run.ok[6] = False                                      # a failed request: end unknown
    run.arrival[6] = run.arrival[5] + 0.5 * run.e2e[5]     # ...arriving inside 5's life
    assert isolated(run).tolist() == [0, 1, 4, 7]
    with pytest.raises(SimschedError, match="only 4 request"):
        fit_isolated(run, min_requests=5)


def test_cached_tokens_are_whole_blocks_of_the_shared_prefix():
    run = synthetic(n=3, prefix=100)
    run.prompt[:] = [500, 90, 500]
    run.prefix_tokens[:] = [100, 90, 100]
    assert cached_tokens(run, 16).tolist() == [0, 80, 96]
