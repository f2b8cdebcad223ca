"""Property tests: random small workloads keep every invariant under every scheduler."""
from __future__ import annotations

import numpy as np
from conftest import run_sim, table
from hypothesis import given, settings
from hypothesis import strategies as st

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.cluster import Gpus
from simsched.engines.run_to_completion import COMPLETED, REJECTED
from simsched.latency import Affine, SeedForm
from simsched.metrics import Sla, Window, compute_metrics
from simsched.predictor import Noisy
from simsched.scheduler import Scheduler

requests = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 300), st.integers(1, 300)),
    min_size=1, max_size=60,
)
schedulers = st.sampled_from([
    Scheduler(FixedBatcher(3)),
    Scheduler(FixedBatcher(4, full_batches_only=True), k_bins=3),
    Scheduler(DynamicBatcher(b_max=16, window=3)),
    Scheduler(DynamicBatcher(b_max=8), k_bins=3, bin_selection="longest_queue"),
    Scheduler(DynamicBatcher(b_max=8), k_bins=2, bin_selection="oldest_first", warmup_requests=5),
])


@settings(max_examples=150, deadline=None)
@given(requests, schedulers, st.integers(1, 3), st.integers(0, 10), st.sampled_from(["batch_end", "own_length"]),
       st.booleans())
def test_invariants(rows, scheduler, n_gpus, seed, release, horizon):
    rows.sort(key=lambda r: r[0])
    req = table(*zip(*rows))
    gpus = Gpus(count=n_gpus, kv_capacity_tokens=400)
    fits = req.prompt + req.output <= 400
    if not fits.any():
        return
    horizon_s = float(req.arrival[len(req) // 2]) + 0.5 if horizon else None
    lat = Affine(alpha_s=0.01, beta0_s=0.002, beta1_s=0.0005)
    res = run_sim(req, scheduler, latency=lat, gpus=gpus, predictor=Noisy(0.3, 0.1), seed=seed,
                  horizon_s=horizon_s, release=release)
    c = res.counts()
    assert sum(c.values()) == len(req)
    if horizon_s is None:
        assert c["unfinished"] == 0 and c["not_arrived"] == 0
    assert np.array_equal(res.status == REJECTED, ~fits & (res.status != 3))
    done = res.status == COMPLETED
    assert np.all(res.start[done] >= req.arrival[done])
    assert np.all(res.finish[done] > res.start[done])
    b = res.batches
    assert np.all(b["size"] >= 1) and np.all(b["size"] <= 16)
    # Requests of one batch share its bin and GPU and start together.
    for bid in range(len(b["size"])):
        members = res.batch == bid
        assert np.all(res.bin[members] == b["bin"][bid]) and np.all(res.gpu[members] == b["gpu"][bid])
        assert b["max_output"][bid] == req.output[members].max()
    m = compute_metrics(res, Sla(latency_s=1.0), Window(0.0))
    for key in ("gpu_utilization", "slot_efficiency", "sla_violation_rate"):
        v = m[key]
        assert v != v or 0.0 <= v <= 1.0 + 1e-9, key


def test_sla_metric_can_fail_and_can_pass():
    req = table(np.arange(20) * 0.01, [10] * 20, [100] * 20)
    res = run_sim(req, Scheduler(FixedBatcher(1)), latency=SeedForm(), gpus=Gpus(count=1))
    assert compute_metrics(res, Sla(latency_s=0.5), Window(0.0))["sla_violation_rate"] > 0.9
    assert compute_metrics(res, Sla(latency_s=1000), Window(0.0))["sla_violation_rate"] == 0.0
    # TTFT and TBT limits are checked too.
    assert compute_metrics(res, Sla(latency_s=1000, tbt_s=0.001), Window(0.0))["sla_violation_rate"] == 1.0
    assert compute_metrics(res, Sla(latency_s=1000, ttft_s=0.01), Window(0.0))["sla_violation_rate"] == 1.0


def test_slot_efficiency_counts_padding_as_waste():
    req = table([0, 0], [1, 1], [10, 90])
    res = run_sim(req, Scheduler(FixedBatcher(2)), gpus=Gpus(count=1))
    m = compute_metrics(res, Sla(), Window(0.0))
    assert m["slot_efficiency"] == (10 + 90) / (2 * 90)
