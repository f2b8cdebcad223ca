"""The engine against closed-form queueing results: M/D/1 and M/G/1 (Pollaczek–Khinchine)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_sim

from simsched.batchers import FixedBatcher
from simsched.cluster import Gpus
from simsched.latency import Affine
from simsched.metrics import Sla, Window, compute_metrics
from simsched.scheduler import Scheduler
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Poisson
from simsched.workloads.lengths import Fixed, Uniform

STEP = 0.01  # seconds per output token, no batch effect: service time S = 0.01·L


def mean_wait(lengths, rho: float, n: int, seeds=range(4)) -> tuple[float, float]:
    """Simulated mean queueing delay and the P-K value W_q = λ E[S²] / (2(1 − ρ))."""
    es = STEP * lengths.mean_len
    es2 = STEP**2 * lengths.second_moment
    lam = rho / es
    waits = []
    for seed in seeds:
        req = SyntheticWorkload(Poisson(lam), Fixed(1), lengths.dist, n).generate(np.random.default_rng(seed))
        res = run_sim(req, Scheduler(FixedBatcher(1)), latency=Affine(beta0_s=STEP, beta1_s=0.0),
                      gpus=Gpus(count=1, kv_capacity_tokens=10**6))
        waits.append(compute_metrics(res, Sla(), Window(0.1))["queue_delay_mean_s"])
    return float(np.mean(waits)), lam * es2 / (2 * (1 - rho))


class FixedLen:
    dist = Fixed(100)
    mean_len = 100.0
    second_moment = 100.0**2


class UniformLen:
    dist = Uniform(1, 199)
    mean_len = 100.0
    second_moment = float(np.mean(np.arange(1, 200) ** 2.0))


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7])
def test_md1_mean_queueing_delay(rho):
    sim, theory = mean_wait(FixedLen, rho, 40_000)
    assert sim == pytest.approx(theory, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_mg1_pollaczek_khinchine(rho):
    sim, theory = mean_wait(UniformLen, rho, 40_000)
    assert sim == pytest.approx(theory, rel=0.05)


def test_throughput_is_service_limited_under_overload_not_n_over_makespan():
    # λ = 2 / E[S]: the server completes 1/E[S] per second; N/makespan would report ~λ/2 too,
    # but a window that excludes the drain must report the service rate, and ρ ≈ 2.
    lengths = FixedLen
    es = STEP * lengths.mean_len
    req = SyntheticWorkload(Poisson(2 / es), Fixed(1), lengths.dist, 5000).generate(np.random.default_rng(0))
    model = Affine(beta0_s=STEP, beta1_s=0.0)
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=model, gpus=Gpus(count=1, kv_capacity_tokens=10**6))
    m = compute_metrics(res, Sla(latency_s=5.0), Window(0.1))
    assert m["throughput_rps"] == pytest.approx(1 / es, rel=0.02)
    assert m["gpu_utilization"] == pytest.approx(1.0, abs=0.01)
    assert m["sla_violation_rate"] > 0.5          # an overloaded system must fail its SLA
