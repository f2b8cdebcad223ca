"""The fast engine against the straightforward reference simulator, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from reference_engine import reference_simulate

from simsched.batchers import DynamicBatcher, FixedBatcher
from simsched.cluster import Gpus
from simsched.engines.run_to_completion import simulate
from simsched.latency import Affine, SeedForm
from simsched.predictor import Oracle
from simsched.scheduler import Scheduler
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Gamma, Poisson
from simsched.workloads.lengths import Bimodal, Lognormal, Uniform, Zipf

CASES = [
    ("static", Scheduler(FixedBatcher(8)), SeedForm()),
    ("full-only bins", Scheduler(FixedBatcher(6, full_batches_only=True), k_bins=3), SeedForm(alpha_s=0, gamma=0)),
    ("dynamic", Scheduler(DynamicBatcher(window=5)), Affine()),
    ("multi-bin rr", Scheduler(DynamicBatcher(), k_bins=4), SeedForm()),
    ("multi-bin longest", Scheduler(DynamicBatcher(b_max=32), k_bins=3, bin_selection="longest_queue"), Affine()),
    ("multi-bin oldest", Scheduler(DynamicBatcher(), k_bins=8, bin_selection="oldest_first"), SeedForm()),
]


@pytest.mark.parametrize("name,scheduler,latency", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_matches_reference(name, scheduler, latency, seed):
    rng = np.random.default_rng(seed)
    arrivals = [Poisson(20.0), Gamma(rate=30.0, cv=2.0)][seed % 2]
    # Integer-second arrivals on one case give many exact ties.
    wl = SyntheticWorkload(arrivals, Zipf(50, 1.3, 20000), Bimodal(0.3, 20, 0.7, 150, 0.6), 1500)
    req = wl.generate(rng)
    if seed == 2:
        req.arrival = np.floor(req.arrival)
    gpus = Gpus(count=1 + seed, kv_capacity_tokens=15000)
    res = simulate(req, scheduler, latency, gpus, Oracle(), np.random.default_rng(seed))
    ref = reference_simulate(req, scheduler, latency, gpus, res.bin)
    assert np.array_equal(res.batch, ref["batch"])
    assert np.array_equal(res.gpu, ref["gpu"])
    assert np.array_equal(res.start, ref["start"], equal_nan=True)
    assert np.array_equal(res.finish, ref["finish"], equal_nan=True)
