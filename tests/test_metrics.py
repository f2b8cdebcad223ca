"""Metrics that cannot improve by losing requests: unfinished requests at the horizon count
against the SLA and enter the latency statistics censored (REFERENCE §6); offered load is
relative to the scheduler's own saturation throughput."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_sim, table

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.cluster import Gpus
from simsched.latency import Affine, SeedForm
from simsched.metrics import Sla, Window, compute_metrics
from simsched.saturation import saturated_rate, saturation_throughput
from simsched.predictor import Oracle
from simsched.scheduler import Scheduler
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Gamma
from simsched.workloads.lengths import Bimodal, Zipf
from simsched.workloads.requests import RequestTable

SLA = Sla(latency_s=20.0)
SCHEDULERS = {
    "static_fifo": Scheduler(FixedBatcher(8)),
    "dynamic_no_bins": Scheduler(DynamicBatcher()),
    "multi_bin_dynamic": Scheduler(DynamicBatcher(), k_bins=4),
}
RATE = {"static_fifo": 2.5, "dynamic_no_bins": 6.0, "multi_bin_dynamic": 8.0}   # loaded, not swamped


def bursty(n: int = 1500, rate: float = 6.0) -> RequestTable:
    wl = SyntheticWorkload(Gamma(rate=rate, cv=1.41), Zipf(223, 1.5), Bimodal(0.3, 40, 0.7, 337, 0.624), n)
    return wl.generate(np.random.default_rng(7))


def truncated(req: RequestTable, horizon: float) -> RequestTable:
    keep = req.arrival <= horizon
    return RequestTable(req.arrival[keep], req.prompt[keep], req.output[keep])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_shortening_the_horizon_never_lowers_the_violation_rate(name):
    # REFERENCE §6 / issue 14: with the horizon at the last arrival, 2.7% violations once read 0.0%.
    sched, req = SCHEDULERS[name], bursty(rate=RATE[name])
    gpus = Gpus(count=2, kv_capacity_tokens=60_000)
    full = run_sim(req, sched, gpus=gpus)
    end = float(np.nanmax(full.finish))
    last = float(req.arrival[-1])
    rates = []
    for h in [None, *np.linspace(end, last, 8)]:   # every request arrives: the same population
        m = compute_metrics(run_sim(req, sched, gpus=gpus, horizon_s=h), SLA, Window(0.0))
        assert m["measured"] == len(req)
        rates.append(m["sla_violation_rate"])
        assert m["sla_violation_rate_known"] <= m["sla_violation_rate"]
    assert all(b >= a for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] > rates[0] > 0.0            # the horizon bites, and the metric shows it
    # A horizon before the last arrival: the requests that arrived by then, served to the end
    # in a run of their own, never violate more often than the cut-off run says.
    for h in np.linspace(last * 0.4, last, 5):
        cut = compute_metrics(run_sim(req, sched, gpus=gpus, horizon_s=float(h)), SLA, Window(0.0))
        served = compute_metrics(run_sim(truncated(req, float(h)), sched, gpus=gpus), SLA, Window(0.0))
        assert cut["measured"] == served["measured"]
        assert cut["sla_violation_rate"] >= served["sla_violation_rate"] - 1e-12, h
        assert served["sla_violation_rate"] >= cut["sla_violation_rate_known"] - 1e-12, h


def test_unfinished_requests_past_their_deadline_are_violations_and_latencies_are_censored():
    # One GPU, batches of one; request 0 runs 0..10 s. Horizon 5 s, deadline 3 s.
    req = table([0.0, 0.1, 4.5], [1, 1, 1], [1000, 10, 10])
    lat = Affine(alpha_s=0.0, beta0_s=0.01, beta1_s=0.0)
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=lat, gpus=Gpus(count=1), horizon_s=5.0)
    assert res.counts()["unfinished"] == 3
    m = compute_metrics(res, Sla(latency_s=3.0), Window(0.0))
    assert m["measured"] == 3 and m["measured_unfinished"] == 3
    # 0 (in flight 5 s) and 1 (queued 4.9 s) are past the deadline; 2 (0.5 s) is undecided.
    assert m["sla_violation_rate_known"] == pytest.approx(2 / 3)
    assert m["sla_undecided"] == 1
    assert m["sla_violation_rate"] == 1.0
    assert m["goodput_rps"] == 0.0
    assert m["latency_max_s"] == pytest.approx(5.0) and m["latency_mean_s"] == pytest.approx((5.0 + 4.9 + 0.5) / 3)
    assert m["queue_delay_mean_s"] == pytest.approx((0.0 + 4.9 + 0.5) / 3)   # 0 started at once
    assert m["tbt_mean_s"] == pytest.approx(0.01)                             # known for the started one
    # With a generous deadline nothing is late yet: all undecided, still counted.
    m = compute_metrics(res, Sla(latency_s=100.0), Window(0.0))
    assert m["sla_violation_rate_known"] == 0.0 and m["sla_undecided"] == 3 and m["sla_violation_rate"] == 1.0
    # Served to the end, the same requests: exact latencies, and request 2 meets the deadline.
    done = compute_metrics(run_sim(req, Scheduler(FixedBatcher(1)), latency=lat, gpus=Gpus(count=1)),
                           Sla(latency_s=100.0), Window(0.0))
    assert done["measured_unfinished"] == 0 and done["sla_violation_rate"] == 0.0


def test_saturation_throughput_of_a_fixed_batch_is_its_service_rate():
    # 2 GPUs, B = 4, every output 50 tokens, T = 0.01·L·b-independent: a batch of 4 takes 0.5 s,
    # so μ_sat = 2 · 4 / 0.5 = 16 req/s whatever the arrival pattern.
    n = 400
    req = table(np.arange(n) * 10.0, [1] * n, [50] * n)     # arrivals far apart: never saturated
    lat = SeedForm(alpha_s=0.0, beta_s=0.01, gamma=0.0)
    mu = saturation_throughput(req, Scheduler(FixedBatcher(4)), lat, Gpus(count=2), Oracle(),
                               np.random.default_rng(0))
    assert mu == pytest.approx(16.0)
    res = run_sim(req, Scheduler(FixedBatcher(4)), latency=lat, gpus=Gpus(count=2))
    m = compute_metrics(res, Sla(), Window(0.0), saturation_rps=mu)
    assert m["offered_load"] == pytest.approx(0.1 / 16.0)
    assert m["mean_batch_size"] == 1.0          # what the run itself did: batches of one
    assert math.isnan(compute_metrics(res, Sla(), Window(0.0))["offered_load"])
    assert math.isnan(saturation_throughput(req, Scheduler(FixedBatcher(4)), lat, Gpus(count=2), Oracle(),
                                            np.random.default_rng(0), sample=0))


def test_saturated_rate_leaves_out_each_bins_drain_remnant():
    req = table(np.zeros(10), [1] * 10, [10] * 10)
    res = run_sim(req, Scheduler(FixedBatcher(4)), latency=SeedForm(alpha_s=0.0, beta_s=0.1, gamma=0.0),
                  gpus=Gpus(count=1))
    assert res.batches["size"].tolist() == [4, 4, 2]
    assert saturated_rate(res) == pytest.approx(8 / 2.0)     # the batch of 2 is not a saturated batch


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_offered_load_below_one_keeps_up_and_above_one_does_not(name):
    # ρ = λ / μ_sat is the scheduler's own stability line: at ρ = 0.7 the queue stays short, at
    # ρ = 1.4 the backlog grows through the run.
    sched, gpus = SCHEDULERS[name], Gpus(count=2, kv_capacity_tokens=60_000)
    base = bursty(5000)
    mu = saturation_throughput(base, sched, SeedForm(), gpus, Oracle(), np.random.default_rng(0))
    rate0 = (len(base) - 1) / (base.arrival[-1] - base.arrival[0])
    backlog = {}
    for rho in (0.7, 1.4):
        req = RequestTable(base.arrival * rate0 / (rho * mu), base.prompt, base.output)
        res = run_sim(req, sched, gpus=gpus)
        m = compute_metrics(res, SLA, Window(0.1), saturation_rps=mu)
        assert m["offered_load"] == pytest.approx(rho, rel=0.01)
        wait = res.start - req.arrival
        backlog[rho] = (np.mean(wait[-300:]), np.mean(wait[300:600]))
        if rho < 1:
            assert m["throughput_rps"] == pytest.approx(m["arrival_rate_rps"], rel=0.1)
    late, early = backlog[1.4]
    assert late > 3.0 * early + 5.0, backlog             # the queue grows through the run above 1
    late, early = backlog[0.7]
    assert late < 1.6 * early + 2.0, backlog             # and does not below it
