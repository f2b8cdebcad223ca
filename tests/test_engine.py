"""Engine invariants: conservation, rejection, determinism, ties, bins, horizon."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_sim, table

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.cluster import Gpus
from simsched.engines.run_to_completion import COMPLETED, REJECTED, REASONS, UNFINISHED
from simsched.errors import ConfigError
from simsched.latency import Affine, SeedForm
from simsched.predictor import Noisy
from simsched.scheduler import Scheduler, warmup_schedule
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Gamma, Poisson
from simsched.workloads.lengths import Bimodal, Uniform, Zipf


def burst(n=3000, rate=10.0, seed=1):
    wl = SyntheticWorkload(Gamma(rate=rate, cv=1.41), Zipf(223, 1.5), Bimodal(0.3, 40, 0.7, 337, 0.624), n)
    return wl.generate(np.random.default_rng(seed))


SCHEDULERS = {
    "static_fifo": Scheduler(FixedBatcher(8), name="static_fifo"),
    "dynamic_no_bins": Scheduler(DynamicBatcher(), name="dynamic_no_bins"),
    "multi_bin_dynamic": Scheduler(DynamicBatcher(), name="multi_bin_dynamic", k_bins=4),
    "multi_bin_static": Scheduler(FixedBatcher(8, full_batches_only=True), k_bins=4),
    "longest_queue": Scheduler(DynamicBatcher(), k_bins=4, bin_selection="longest_queue"),
    "oldest_first": Scheduler(DynamicBatcher(), k_bins=8, bin_selection="oldest_first"),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_request_completes_once_and_in_order(name):
    req = burst()
    res = run_sim(req, SCHEDULERS[name])
    assert res.counts()["completed"] == len(req)
    assert np.all(res.start >= req.arrival) and np.all(res.finish > res.start)
    b = res.batches
    # Each request is in exactly one batch, and batch sizes add up to the request count.
    assert np.bincount(res.batch, minlength=len(b["size"])).tolist() == b["size"].tolist()
    # A GPU never runs two batches at once.
    for g in range(2):
        s = np.sort(b["start"][b["gpu"] == g])
        e = b["end"][b["gpu"] == g][np.argsort(b["start"][b["gpu"] == g])]
        assert np.all(s[1:] >= e[:-1] - 1e-12)
    # Batch length is the longest member's output (the max, not the mean).
    for bid in range(0, len(b["size"]), 37):
        members = res.batch == bid
        assert b["max_output"][bid] == req.output[members].max()


def test_oversized_request_is_rejected_with_reason_and_blocks_nobody():
    req = table([0.0, 0.0, 0.1, 0.2], [10, 5000, 10, 10], [10, 10, 10, 10])
    res = run_sim(req, gpus=Gpus(count=1, kv_capacity_tokens=1000))
    assert res.status.tolist() == [COMPLETED, REJECTED, COMPLETED, COMPLETED]
    assert REASONS[res.reason[1]] == "exceeds_kv_capacity"
    assert res.finish[3] < 10.0  # the others were served promptly


def test_capacity_smaller_than_every_request_is_a_config_error():
    req = table([0.0, 1.0], [100, 100], [100, 100])
    with pytest.raises(ConfigError, match="kv_capacity_tokens"):
        run_sim(req, gpus=Gpus(count=1, kv_capacity_tokens=50))


def test_same_seed_same_results_different_seed_differs():
    req = burst(1500)
    sch = Scheduler(DynamicBatcher(), k_bins=4)
    a = run_sim(req, sch, predictor=Noisy(sigma=0.5, p_e=0.1), seed=3)
    b = run_sim(req, sch, predictor=Noisy(sigma=0.5, p_e=0.1), seed=3)
    c = run_sim(req, sch, predictor=Noisy(sigma=0.5, p_e=0.1), seed=4)
    assert np.array_equal(a.finish, b.finish) and np.array_equal(a.batch, b.batch)
    assert not np.array_equal(a.predicted, c.predicted)


def test_k_bins_one_is_dynamic_no_bins_exactly():
    req = burst(2000)
    a = run_sim(req, Scheduler(DynamicBatcher(), name="dynamic_no_bins"))
    b = run_sim(req, Scheduler(DynamicBatcher(), name="multi_bin_dynamic", k_bins=1,
                               bin_selection="longest_queue"))
    assert np.array_equal(a.finish, b.finish) and np.array_equal(a.batch, b.batch)


def test_simultaneous_events_break_ties_deterministically():
    # Four identical requests at t=0 on two GPUs, batch size 1: lowest GPU id first, arrival order kept.
    req = table([0, 0, 0, 0], [1, 1, 1, 1], [10, 10, 10, 10])
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=Affine(beta0_s=0.1, beta1_s=0.0),
                  gpus=Gpus(count=2))
    assert res.gpu.tolist() == [0, 1, 0, 1]
    assert res.start.tolist() == [0.0, 0.0, 1.0, 1.0]
    # An arrival at the exact instant a GPU frees up is served at that instant.
    req = table([0.0, 1.0], [1, 1], [10, 10])
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=Affine(beta0_s=0.1, beta1_s=0.0),
                  gpus=Gpus(count=1))
    assert res.start.tolist() == [0.0, 1.0]
    # ... and the completion is handled first: GPU 0 frees at t = 1 exactly when request 2 arrives,
    # while GPU 1 has been free since t = 0.5; the lowest free id, 0, takes it.
    req = table([0.0, 0.0, 1.0], [1, 1, 1], [10, 5, 10])
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=Affine(beta0_s=0.1, beta1_s=0.0),
                  gpus=Gpus(count=2))
    assert res.gpu.tolist() == [0, 1, 0] and res.start.tolist() == [0.0, 0.0, 1.0]


def test_bins_hold_exactly_their_predicted_range_open_ended():
    req = burst(3000)
    sch = Scheduler(DynamicBatcher(), k_bins=4, warmup_requests=50)  # a small warm-up sample
    res = run_sim(req, sch, predictor=Noisy(sigma=0.8))
    # After the warm-up every request is binned by the final cut points; during it, by the cut
    # points known at its arrival.
    cuts = np.tile(np.concatenate(([-np.inf], res.cut_points, [np.inf])), (len(req), 1))
    for lo, hi, early in warmup_schedule(res.predicted, 4, 50):
        cuts[lo:hi, 1:-1] = early
    rows = np.arange(len(req))
    lo, hi = cuts[rows, res.bin], cuts[rows, res.bin + 1]
    assert np.all((res.predicted >= lo) & (res.predicted < hi))
    # Predictions beyond the warm-up range land in the first or last bin by value.
    assert res.predicted[res.bin == 0].min() == res.predicted.min()
    assert res.predicted[res.bin == 3].max() == res.predicted.max()


def test_equal_mass_boundaries_are_quantiles_and_configured_ones_are_used():
    pred = np.random.default_rng(0).permutation(np.arange(1, 1001))
    sch = Scheduler(DynamicBatcher(), k_bins=4, warmup_requests=1000)
    assert np.allclose(sch.cut_points(pred), [250.75, 500.5, 750.25])
    sizes = np.bincount(sch.assign_bins(pred, sch.cut_points(pred)))
    assert sizes.sum() == 1000 and np.all(np.abs(sizes - 250) < 40)   # learnt during the warm-up
    later = np.concatenate((pred, pred))                                # after it: exactly equal mass
    assert np.bincount(sch.assign_bins(later, sch.cut_points(later))[1000:]).tolist() == [250] * 4
    fixed = Scheduler(DynamicBatcher(), k_bins=3, boundaries=[10, 100])
    assert fixed.assign_bins(np.array([1, 10, 99, 100, 10**6]), fixed.cut_points(pred)).tolist() == [0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="boundaries"):
        Scheduler(DynamicBatcher(), k_bins=3, boundaries=[100, 10])


@pytest.mark.parametrize("warmup", [1, 7, 64, 1000])
def test_bins_never_depend_on_requests_that_have_not_arrived(warmup):
    # A request's bin is a function of the predictions up to its own row (arrival order): changing
    # every later prediction must leave it alone (REFERENCE §7: no cut points from the future).
    rng = np.random.default_rng(3)
    pred = rng.integers(1, 2000, 1500)
    sch = Scheduler(DynamicBatcher(), k_bins=4, warmup_requests=warmup)
    base = sch.assign_bins(pred, sch.cut_points(pred))
    for i in (0, 1, 2, 5, 100, 600, 998, 999, 1200):
        future = pred.copy()
        future[i + 1:] = rng.integers(1, 20, len(pred) - i - 1)   # much shorter futures
        got = sch.assign_bins(future, sch.cut_points(future))
        assert np.array_equal(got[:i + 1], base[:i + 1]), i


def test_round_robin_does_not_starve_long_requests():
    req = burst(4000, rate=14)
    res = run_sim(req, Scheduler(DynamicBatcher(), k_bins=4))
    assert res.counts()["completed"] == len(req)
    waits = [np.mean(res.start[res.bin == k] - req.arrival[res.bin == k]) for k in range(4)]
    assert max(waits) < 10 * (min(waits) + 1.0)


def test_full_batches_only_forms_full_batches_until_the_drain():
    req = SyntheticWorkload(Poisson(50.0), Uniform(1, 1), Uniform(1, 20), 2000).generate(np.random.default_rng(0))
    res = run_sim(req, Scheduler(FixedBatcher(16, full_batches_only=True), k_bins=2),
                  latency=SeedForm(alpha_s=0.0, beta_s=0.01, gamma=0.0), gpus=Gpus(count=1))
    b = res.batches
    last_arrival = req.arrival[-1]
    assert np.all(b["size"][b["start"] < last_arrival] == 16)
    assert res.counts()["completed"] == len(req)


def test_horizon_leaves_requests_unfinished_and_accounted():
    req = burst(2000, rate=20)
    horizon = float(req.arrival[1000])
    res = run_sim(req, Scheduler(FixedBatcher(8)), horizon_s=horizon)
    c = res.counts()
    assert c["not_arrived"] == int(np.sum(req.arrival > horizon))
    assert c["unfinished"] > 0
    assert c["completed"] + c["unfinished"] + c["rejected"] + c["not_arrived"] == len(req)
    assert np.all(res.finish[res.status == COMPLETED] <= horizon)
    inflight = (res.status == UNFINISHED) & (res.batch >= 0)
    assert np.all(res.start[inflight] <= horizon)


def test_own_length_release_completes_short_requests_earlier():
    req = table([0, 0], [10, 10], [5, 100])
    a = run_sim(req, Scheduler(FixedBatcher(2)), release="batch_end")
    b = run_sim(req, Scheduler(FixedBatcher(2)), release="own_length")
    assert a.finish[0] == a.finish[1] == b.finish[1]
    assert b.finish[0] < b.finish[1]


def test_memory_aware_batcher_avoids_kv_overflow_that_static_batching_hits():
    from simsched.metrics import Sla, Window, compute_metrics

    req = burst(3000, rate=30)
    gpus = Gpus(count=2, kv_capacity_tokens=20000)
    dyn = run_sim(req, Scheduler(DynamicBatcher()), gpus=gpus)
    big = run_sim(req, Scheduler(FixedBatcher(64)), gpus=gpus)
    m_dyn = compute_metrics(dyn, Sla(), Window())
    m_big = compute_metrics(big, Sla(), Window())
    assert m_big["kv_overflow_batches"] > 10
    assert m_dyn["kv_overflow_batches"] <= 0.05 * m_dyn["num_batches"]


class _PredictsTen:
    """A predictor that says 10 output tokens, whatever the truth."""

    name = "ten"
    p_e = 0.0

    def predict(self, output, rng):
        return np.full(len(output), 10, dtype=np.int64)

    def perturb_bins(self, bins, k, rng):
        return bins


def test_memory_estimate_uses_predictions_never_true_lengths_of_queued_requests():
    # 200 requests at t = 0 with prompt 100 and true output 900, predicted 10; η = 20,000, σ = 0.
    # Before any completion Algorithm 1 only knows predictions: μ = 110 → b = 181 (and the batch
    # overflows, which is the cost of a bad predictor). Once those complete, their true outputs
    # give μ = 1000 → b = 20, so the remaining 19 go together.
    from statistics import NormalDist

    from simsched.batchers import memory_batch_limit

    req = table(np.zeros(200), [100] * 200, [900] * 200)
    theta = NormalDist().inv_cdf(0.99)
    by_prediction = memory_batch_limit(110.0, 0.0, 20_000, theta)
    assert (by_prediction, memory_batch_limit(1000.0, 0.0, 20_000, theta)) == (181, 20)
    res = run_sim(req, Scheduler(DynamicBatcher(b_max=512, sla_aware=False)),
                  gpus=Gpus(count=1, kv_capacity_tokens=20_000), predictor=_PredictsTen())
    assert res.batches["size"].tolist() == [181, 19]


def test_every_run_checks_conservation(monkeypatch):
    from simsched.engines import run_to_completion as engine

    seen = []
    real = engine.check_conservation
    monkeypatch.setattr(engine, "check_conservation", lambda res: seen.append(res) or real(res))
    res = run_sim(burst(300), Scheduler(FixedBatcher(8)), horizon_s=10.0)
    assert len(seen) == 1 and seen[0] is res


@pytest.mark.parametrize("breakage", ["unknown status", "started before arrival", "finished before start",
                                      "rejected without reason"])
def test_conservation_check_catches_broken_results(breakage):
    from simsched.engines.run_to_completion import check_conservation

    req = table([0.0, 0.5, 1.0, 1.5], [1, 1, 1, 10**6], [10, 10, 10, 10])
    res = run_sim(req, Scheduler(FixedBatcher(1)), gpus=Gpus(count=1, kv_capacity_tokens=1000))
    check_conservation(res)                       # intact: passes
    done = np.flatnonzero(res.status == COMPLETED)
    if breakage == "unknown status":
        res.status[0] = len(REASONS) + 1
    # res.start and res.finish are gathered from the batches table on each read (a new array),
    # so a breakage goes into that table: one request per batch here (B = 1).
    elif breakage == "started before arrival":
        res.batches["start"][res.batch[done[1]]] = req.arrival[done[1]] - 0.1
    elif breakage == "finished before start":
        res.batches["end"][res.batch[done[2]]] = res.start[done[2]] - 0.1
    else:
        res.reason[res.status == REJECTED] = 0
    with pytest.raises(AssertionError):
        check_conservation(res)
