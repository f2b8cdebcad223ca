"""The router group (engine=continuous): every policy composes and runs with conservation,
round robin is today's engine bit for bit, routing is deterministic under a seed, routers see
the state at the arrival instant and nothing later, and JSQ beats round robin on p99 when
output lengths are heterogeneous."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from continuous_cases import STEP, differences, random_case
from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.engines.continuous.result import COMPLETED
from simsched.engines.continuous.routing import ROUTERS, Router
from simsched.errors import ConfigError
from simsched.run import build_components, simulate_config
from simsched.workloads import RequestTable
from test_continuous_run import cfg_with

FIELDS = ("status", "reason", "replica", "first_scheduled", "first_token", "finish", "itl_max",
          "output_emitted", "preemptions", "prefix_hit_tokens")
# sha256 of FIELDS over random_case(0..11) on 2..4 replicas, recorded with the engine before
# routers existed (commit 37dcc4a, round robin fixed in the loop).
ROUND_ROBIN_FINGERPRINT = "3e36dc8f24061175691974c125c9fb068bcac90f4f72d153bb503f1400968ba0"
ENGINE = ContinuousEngine(max_num_seqs=4, max_num_batched_tokens=2048, num_gpu_blocks=4000, max_model_len=4096)


def run(req, router, predicted=None, engine=ENGINE, replicas=2):
    res, _ = simulate_continuous(req, engine, STEP, Hardware(replicas, engine.num_gpu_blocks * engine.block_size,
                                                              "t", None),
                                 router=Router(router) if isinstance(router, str) else router, predicted=predicted)
    return res


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_composes_and_runs_with_conservation(name):
    extra = ["router.k_bins=2"] if name == "bin_affine" else []
    res, metrics, comps = simulate_config(cfg_with(f"router={name}", "gpus.count=4", "predictor=noisy", *extra))
    assert comps.router.name == name
    counts = res.counts()
    assert sum(counts.values()) == len(res.requests) == 300
    assert counts["completed"] == 300          # no horizon: every request is served
    assert set(np.unique(res.replica)) <= set(range(4))
    assert np.bincount(res.replica, minlength=4).sum() == 300


def test_round_robin_is_the_engine_before_routers_bit_for_bit():
    h = hashlib.sha256()
    for seed in range(12):
        req, eng, hw = random_case(seed)
        res, _ = simulate_continuous(req, eng, STEP, replace(hw, replicas=2 + seed % 3))
        for f in FIELDS:
            h.update(np.ascontiguousarray(getattr(res, f)).tobytes())
    assert h.hexdigest() == ROUND_ROBIN_FINGERPRINT


def test_routing_is_deterministic_under_a_seed():
    def replicas(seed):
        res, _, _ = simulate_config(cfg_with("router=least_tokens", "gpus.count=4", "predictor=noisy",
                                             f"seed={seed}", "workload.seed=7"))
        return res

    a, b, c = replicas(1), replicas(1), replicas(2)
    assert differences(a, b) == [] and np.array_equal(a.replica, b.replica)
    assert not np.array_equal(a.replica, c.replica)   # the seed reaches the predictions the router reads


def two_requests_then(t_c):
    """A (long) and B (short) go to replicas 0 and 1 under JSQ; C arrives at ``t_c``."""
    return RequestTable(np.array([0.0, 0.001, t_c]), np.array([32, 32, 32]), np.array([400, 10, 5]))


def test_a_router_sees_the_state_at_the_arrival_instant_not_later():
    first = run(RequestTable(np.array([0.0, 0.001]), np.array([32, 32]), np.array([400, 10])), "jsq")
    assert list(first.replica) == [0, 1]
    t_f = float(first.finish[1])                 # B's last token: replica 1 empties then
    # Before B finishes, and at the very instant (arrivals come before the tick that emits its
    # last token), both replicas hold one request: the tie goes to replica 0. Only after it
    # finished is replica 1 the shorter queue. A router that saw later state would pick 1.
    assert run(two_requests_then(t_f - 1e-3), "jsq").replica[2] == 0
    assert run(two_requests_then(t_f), "jsq").replica[2] == 0
    assert run(two_requests_then(t_f + 1e-3), "jsq").replica[2] == 1


@pytest.mark.parametrize("name", ROUTERS[1:])
@pytest.mark.parametrize("seed", range(4))
def test_fast_forward_does_not_let_a_router_see_ahead(name, seed):
    """Fast-forward on and off give the same routes and times: a jump that carried a replica
    past an arrival (its KV blocks, its queue) would change what the router reads."""
    req, eng, hw = random_case(seed)
    hw = replace(hw, replicas=3)
    router = Router(name, k_bins=2, refresh=8, load_cap=2)
    pred = np.maximum(1, (req.output * np.exp(np.random.default_rng(seed).normal(0, 0.5, len(req))))).astype(int)
    a, _ = simulate_continuous(req, eng, STEP, hw, router=router, predicted=pred)
    b, _ = simulate_continuous(req, replace(eng, fast_forward=False), STEP, hw, router=router, predicted=pred)
    assert differences(a, b) == []
    assert np.array_equal(a.replica, b.replica)


@pytest.mark.parametrize("name", ["least_tokens", "bin_affine"])
def test_routers_read_predicted_not_true_output_lengths(name):
    """Outputs long enough that nothing finishes before the last arrival: the routes depend on
    the predictions only, whatever the true lengths (and do change with the predictions)."""
    r = np.random.default_rng(3)
    n = 60
    arrival = np.sort(r.uniform(0, 0.5, n))
    prompt = r.integers(16, 200, n)
    pred = r.integers(1, 2000, n)
    router = Router(name, k_bins=2, refresh=8)
    routes = [run(RequestTable(arrival, prompt, out), router, pred, replicas=4).replica
              for out in (np.full(n, 3000), r.integers(2000, 4000, n))]
    assert np.array_equal(routes[0], routes[1])
    other = run(RequestTable(arrival, prompt, np.full(n, 3000)), router, pred[::-1].copy(), replicas=4).replica
    assert not np.array_equal(routes[0], other)


def test_jsq_beats_round_robin_on_p99_under_heterogeneous_lengths():
    """10% of requests emit 1000 tokens, the rest 20: round robin queues short requests
    behind long ones on a busy replica while another is idle; JSQ does not."""
    for seed in range(2):
        r = np.random.default_rng(seed)
        n = 600
        out = np.where(r.random(n) < 0.1, 1000, 20)
        req = RequestTable(np.cumsum(r.exponential(1 / 6.0, n)), r.integers(50, 400, n), out)
        rr, jsq = (run(req, name, replicas=4) for name in ("round_robin", "jsq"))
        assert np.percentile(jsq.ttft, 99) < 0.5 * np.percentile(rr.ttft, 99)
        assert np.percentile(jsq.e2e, 99) < np.percentile(rr.e2e, 99)
        assert (rr.status == COMPLETED).all() and (jsq.status == COMPLETED).all()


def test_bin_affine_sends_each_bin_to_its_own_replicas():
    r = np.random.default_rng(0)
    n = 400
    out = np.where(np.arange(n) % 2 == 0, 10, 500)
    req = RequestTable(np.sort(r.uniform(0, 20, n)), r.integers(16, 64, n), out)
    res = run(req, Router("bin_affine", k_bins=2, refresh=16), out, replicas=4)
    late = np.arange(n) >= 16                   # after the first boundaries
    assert set(res.replica[late & (out == 10)]) <= {0, 1}
    assert set(res.replica[late & (out == 500)]) <= {2, 3}


def test_prefix_affinity_follows_the_cached_prefix_within_its_load_cap():
    # Requests 0 and 1 have different 8-block prompts; requests 2.. repeat request 1's prompt.
    n = 6
    ids = [list(range(100, 108)), list(range(200, 208))] + [list(range(200, 208))] * (n - 2)
    req = RequestTable(np.array([0.0, 0.001] + [1.0 + 0.001 * k for k in range(n - 2)]), np.full(n, 128),
                       np.full(n, 200), hash_offsets=np.arange(n + 1) * 8,
                       hash_values=np.array([h for x in ids for h in x]), hash_block_tokens=16)
    hit = run(req, Router("prefix_affinity", load_cap=2)).replica
    assert list(hit[:2]) == [0, 1] and list(hit[2:4]) == [1, 1]
    capped = run(req, Router("prefix_affinity", load_cap=0)).replica
    assert list(capped[2:4]) == [1, 0]         # replica 1 holds one more request: over the cap


def test_bad_router_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="router.k_bins"):
        build_components(cfg_with("router=bin_affine", "router.k_bins=8", "gpus.count=4"))
    with pytest.raises(ConfigError, match="router.name"):
        build_components(cfg_with("router=jsq", "router.name=fastest"))
    with pytest.raises(ConfigError, match="router"):
        build_components(cfg_with("router=jsq", "engine=run_to_completion", "scheduler=static_fifo"))
