"""The compiled loop (numba, no reference counting) and the plain Python loop are the same
functions; they must agree bit for bit (I6), with the step event log (fast-forward jumps) and
without it (the decode cohort). Slow: the first run compiles the kernel (about a
minute and a half on 2 cores; cached afterwards)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import pickle, sys
sys.path.insert(0, {tests!r})
from continuous_cases import STEP, random_case
from dataclasses import replace
from simsched.engines.continuous import simulate_continuous
out = []
for seed in range(6):
    req, engine, hw = random_case(seed)
    res, ev = simulate_continuous(req, replace(engine, steps_table=True), STEP, hw, record_events=True)
    out.append((res.status, res.first_scheduled, res.first_token, res.finish, res.itl_max, res.preemptions,
                res.prefix_hit_tokens, res.timeseries, res.steps, res.itl_hist, ev))
    # without the event log: the decode cohort (lazy_decode) instead of jumps
    res, _ = simulate_continuous(req, replace(engine, steps_table=True), STEP, hw)
    out.append((res.status, res.first_scheduled, res.first_token, res.finish, res.itl_max, res.preemptions,
                res.prefix_hit_tokens, res.timeseries, res.steps, res.itl_hist, res.itl_sum,
                res.counters["lazy_request_steps"]))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def run(jit: str) -> list:
    import os
    import pickle

    env = dict(os.environ, SIMSCHED_JIT=jit)
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests"))], env=env,
                         capture_output=True, check=True, cwd=ROOT, timeout=1200)
    return pickle.loads(out.stdout)


@pytest.mark.slow
def test_compiled_and_python_loops_agree_bit_for_bit():
    import numpy as np

    a, b = run("0"), run("1")
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, dict):
                assert x.keys() == y.keys()
                for k in x:
                    assert np.array_equal(x[k], y[k], equal_nan=True), k
            else:
                assert np.array_equal(x, y, equal_nan=True)
