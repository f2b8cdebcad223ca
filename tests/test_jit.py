"""simsched.jit: which loop a run gets, the cache fingerprint, and numba staying out of small runs."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from simsched import jit
from simsched.engines import run_to_completion as rtc
from simsched.engines.rtc_loop import serve


def _module(source: str, name: str = "jit_probe") -> types.ModuleType:
    """A throwaway module holding ``source`` (as a mutation harness would rewrite one)."""
    mod = types.ModuleType(name)
    mod.__dict__["jitable"] = jit.jitable
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


HELPERS = """
LIMIT = 3

@jitable
def helper(x):
    return min(x, LIMIT)

def loop(xs):
    total = 0
    for x in xs:
        total += helper(x)
    return total
"""


def test_fingerprint_follows_helpers_and_their_constants():
    base = jit.fingerprint(_module(HELPERS).loop)
    assert jit.fingerprint(_module(HELPERS).loop) == base                       # stable
    assert jit.fingerprint(_module(HELPERS.replace("min(x", "max(x")).loop) != base   # helper code
    assert jit.fingerprint(_module(HELPERS.replace("LIMIT = 3", "LIMIT = 4")).loop) != base  # constant
    assert jit.fingerprint(_module(HELPERS.replace("total += h", "total -= h")).loop) != base  # the loop


def test_compiled_loop_calls_compiled_helpers_and_agrees_with_python():
    mod = _module(HELPERS)
    xs = np.arange(10)
    fast = jit.compiled(mod.loop)
    assert type(fast).__name__ == "CPUDispatcher"
    assert fast(xs) == mod.loop(xs) == 0 + 1 + 2 + 3 * 7
    assert jit.compiled(mod.loop) is fast                                       # compiled once


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv("SIMSCHED_JIT", raising=False)
    assert jit.kernel(serve, 10) is serve
    assert jit.kernel(serve, jit.MIN_COMPILED_REQUESTS) is not serve
    assert not jit.use_compiled(rtc.COMPILED_FROM_REQUESTS - 1, rtc.COMPILED_FROM_REQUESTS)
    assert jit.use_compiled(rtc.COMPILED_FROM_REQUESTS, rtc.COMPILED_FROM_REQUESTS)
    monkeypatch.setenv("SIMSCHED_JIT", "1")
    assert type(jit.kernel(serve, 10)).__name__ == "CPUDispatcher"
    monkeypatch.setenv("SIMSCHED_JIT", "0")
    assert jit.kernel(serve, 10**9) is serve


def test_amortized_kernel_switches_after_enough_python_requests(monkeypatch):
    """A sweep's process: small runs take the Python loop until together they reach the
    threshold, then the compiled one (and stay on it); SIMSCHED_JIT=0 still forces Python."""
    monkeypatch.delenv("SIMSCHED_JIT", raising=False)
    serve = _fresh(rtc.serve)
    picks = [jit.kernel(serve, 400, min_requests=1000, amortize=True) is serve for _ in range(4)]
    assert picks == [True, True, False, False]
    assert jit.kernel(serve, 1, min_requests=1000, amortize=True) is not serve
    monkeypatch.setenv("SIMSCHED_JIT", "0")
    assert jit.kernel(serve, 1, min_requests=1000, amortize=True) is serve
    fresh = _fresh(rtc.serve)
    assert jit.kernel(fresh, 10**9, min_requests=1000, amortize=True) is fresh


def _fresh(fn):
    """A copy of ``fn`` that has never been compiled in this process."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


@pytest.mark.parametrize("n,compiled", [(500, False), (rtc.COMPILED_FROM_REQUESTS, True)])
def test_numba_is_imported_only_by_large_runs(n, compiled):
    code = f"""
import sys
import numpy as np
from simsched.batchers import DynamicBatcher
from simsched.cluster import Gpus
from simsched.engines.run_to_completion import simulate
from simsched.latency import SeedForm
from simsched.predictor import Oracle
from simsched.scheduler import Scheduler
from simsched.workloads import RequestTable
n = {n}
req = RequestTable(np.arange(n) * 0.1, np.full(n, 100), np.full(n, 50))
simulate(req, Scheduler(DynamicBatcher(), k_bins=2), SeedForm(), Gpus(), Oracle(), np.random.default_rng(0))
print("numba" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "SIMSCHED_JIT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(compiled)
