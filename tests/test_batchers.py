"""Algorithms 1 and 2 of Pang et al. against hand-worked cases."""
from __future__ import annotations

import math

import pytest

from simsched.batchers import DynamicBatcher, FixedBatcher, SlaController, memory_batch_limit
from simsched.errors import ConfigError


def test_memory_limit_hand_worked():
    # σ = 0: b = η/μ exactly.
    assert memory_batch_limit(100.0, 0.0, 1000.0, 2.0) == 10
    # μ=100, σ=50, θ=2, η=1000: root = (sqrt(100² + 4·100·1000) − 100)/200 = 2.7016 → b = 7.
    assert memory_batch_limit(100.0, 50.0, 1000.0, 2.0) == 7
    # and 7 fits while 8 does not: b·μ + θσ√b <= η
    assert 7 * 100 + 2 * 50 * math.sqrt(7) <= 1000 < 8 * 100 + 2 * 50 * math.sqrt(8)


def test_sla_controller_hand_worked_sequence():
    spec = DynamicBatcher(b_min=1, b_max=64, d_sla_s=0.05, eps_d_s=0.005, alpha=4, delta=2, window=2)
    c = SlaController(spec)
    assert c.limit() == 32                   # floor((1 + 64) / 2)
    c.observe(32, 0.08)                      # too slow: b_high = max(32, 1+4) = 32, b_low = max(1-2, 1) = 1
    assert c.limit() == 16
    assert (c.b_low, c.b_high) == (1, 32)
    c.observe(16, 0.03)                      # τ̄ = 0.055, inside the band; b̄ = 24: [22, 26]
    assert c.limit() == 24
    assert (c.b_low, c.b_high) == (22, 26)
    c.observe(24, 0.02)                      # τ̄ = 0.025 fast: b_low = min(20, 26-4) = 20, b_high = 28
    assert c.limit() == 24
    assert (c.b_low, c.b_high) == (20, 28)
    # No new observation: no new update (the bracket does not drift on stale feedback).
    assert c.limit() == 24 and (c.b_low, c.b_high) == (20, 28)


def test_sla_controller_shrinks_batches_under_sustained_slowness_and_stays_in_bounds():
    spec = DynamicBatcher(b_min=2, b_max=100, alpha=4, delta=3, window=4)
    c = SlaController(spec)
    for _ in range(50):
        b = c.limit()
        c.observe(b, 0.2)
    # The bracket settles at [b_min, b_min + α]: the algorithm's own floor is its midpoint.
    assert c.limit() == 2 + 4 // 2
    assert (c.b_low, c.b_high) == (2, 6)
    for _ in range(200):
        b = c.limit()
        c.observe(b, 0.001)
    assert c.limit() >= 95


def test_dynamic_batch_is_min_of_memory_and_sla():
    ctl = DynamicBatcher(b_max=128, eps_m=0.5).controller(kv_capacity_tokens=1000)
    # eps_m = 0.5 → θ = 0 → b_mem = η/μ = 1000/100 = 10; SLA starts at 64
    assert ctl.size(waiting=500, mu=100.0, sigma=30.0) == 10
    assert ctl.size(waiting=3, mu=100.0, sigma=30.0) == 3
    assert ctl.size(waiting=500, mu=5.0, sigma=0.0) == 64
    # A request larger than the whole cache estimate still gets a batch of one (never stalls).
    assert ctl.size(waiting=5, mu=5000.0, sigma=0.0) == 1


@pytest.mark.parametrize("kwargs,key", [
    ({"b_min": 10, "b_max": 5}, "b_min"),
    ({"b_min": 0}, "b_min"),
    ({"eps_m": 1.0}, "eps_m"),
    ({"d_sla_s": float("nan")}, "d_sla_s"),
    ({"alpha": 1.5}, "alpha"),
])
def test_bad_dynamic_batcher_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DynamicBatcher(**kwargs)


def test_bad_fixed_batch_size():
    with pytest.raises(ConfigError, match="batch_size"):
        FixedBatcher(0)
