"""Exact decode fast-forward: advancing decoders as a cohort (``lazy_decode``, ordinary runs) or
jumping over runs of decode steps (``fast_forward``, runs that record the step event log)
changes nothing.

Per-request results (status, outputs, preemptions, prefix hits, and every time: first
scheduled, first token, finish, longest inter-token gap) must be identical within 1e-9 s
between fast-forward and plain step-by-step execution, on random workloads (about half of
them preemption-heavy, with shared prefixes, both schedulers and policies) and on the golden
traces' workloads run with a clock. The engine's own end-of-run checks (request and block
conservation) run in both.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from continuous_cases import STEP, differences, random_case  # noqa: F401
from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.engines.continuous.conformance import golden_engine, golden_requests
from simsched.workloads import RequestTable

GOLDENS = sorted((Path(__file__).resolve().parent / "data" / "vllm").glob("*.json.gz"))


def both(req, engine, hw, events=False):
    a, _ = simulate_continuous(req, engine, STEP, hw, record_events=events)
    b, _ = simulate_continuous(req, replace(engine, fast_forward=False), STEP, hw, record_events=events)
    return a, b


@pytest.mark.parametrize("seed", range(12))
def test_fast_forward_equals_step_by_step_on_random_workloads(seed):
    """The decode cohort (the fast-forward of ordinary runs) changes no per-request result."""
    req, engine, hw = random_case(seed)
    a, b = both(req, engine, hw)
    assert differences(a, b) == []
    assert a.counters["lazy_request_steps"] > 0 and b.counters["lazy_request_steps"] == 0
    assert a.counters["request_steps"] == b.counters["request_steps"]


@pytest.mark.parametrize("seed", range(0, 12, 2))
def test_jumps_equal_step_by_step_on_random_workloads(seed):
    """With the event log on (conformance), fast-forward jumps over decode runs instead."""
    req, engine, hw = random_case(seed)
    a, b = both(req, engine, hw, events=True)
    assert differences(a, b) == []
    assert a.counters["jumped_steps"] > 0 and b.counters["jumped_steps"] == 0
    assert a.counters["cohort_steps"] == 0


def test_the_random_cases_preempt_and_share_prefixes():
    """The equivalence above covers preemption-heavy runs and prefix hits."""
    runs = [simulate_continuous(*random_case(seed)[:2], STEP, random_case(seed)[2])[0] for seed in range(12)]
    assert sum(r.preemptions.sum() > 0 for r in runs) >= 4
    assert sum((r.prefix_hit_tokens > 0).any() for r in runs) >= 3


@pytest.mark.skipif(not GOLDENS, reason="no golden traces in tests/data/vllm (branch goldens not merged yet)")
@pytest.mark.parametrize("path", GOLDENS, ids=[p.name.split(".")[0] for p in GOLDENS])
def test_fast_forward_on_golden_workloads_with_a_clock(path):
    import gzip
    import json

    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    req = golden_requests(doc)
    req = RequestTable(req.arrival * 0.013, req.prompt, req.output, priority=req.priority,
                       hash_offsets=req.hash_offsets, hash_values=req.hash_values,
                       hash_block_tokens=req.hash_block_tokens)
    engine, hw = golden_engine(doc)
    a, b = both(req, engine, hw)
    assert differences(a, b) == []


def test_fast_forward_skips_most_steps_of_a_decode_heavy_run():
    rng = np.random.default_rng(5)
    n = 300
    req = RequestTable(np.sort(rng.uniform(0, 60, n)), rng.integers(50, 400, n), rng.integers(100, 400, n))
    engine = ContinuousEngine(max_num_batched_tokens=2048, max_num_seqs=64, num_gpu_blocks=4000, max_model_len=2048)
    a, b = both(req, engine, Hardware(2, 64000, "t", None))
    assert differences(a, b) == []
    assert a.counters["lazy_request_steps"] / a.counters["request_steps"] > 0.5
    assert a.counters["steps"] == b.counters["steps"]


def test_time_series_and_steps_agree_with_and_without_fast_forward():
    req, engine, hw = random_case(3)
    engine = replace(engine, steps_table=True)
    a, b = both(req, engine, hw)
    for key in a.timeseries:
        assert np.array_equal(a.timeseries[key], b.timeseries[key]), key
    for key in a.steps:
        assert np.allclose(a.steps[key], b.steps[key], atol=1e-9, rtol=0), key
