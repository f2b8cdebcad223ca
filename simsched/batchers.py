"""Batchers decide how many waiting requests of one queue form the next batch.

A batcher is a frozen spec (what the config builds); ``controller()`` makes the mutable
per-queue state that lives for one simulation only, so configs are never shared mutable state.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

from simsched.errors import ConfigError, check_positive, check_probability


@dataclass(frozen=True)
class FixedBatcher:
    """A fixed batch size B; with ``full_batches_only`` a queue waits until it holds B requests
    (the Multi-Bin paper's model), except when no more requests will arrive (drain)."""

    batch_size: int = 8
    full_batches_only: bool = False

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size, integer=True)

    @property
    def max_batch(self) -> int:
        return int(self.batch_size)

    def controller(self, kv_capacity_tokens: int) -> "FixedController":
        return FixedController(int(self.batch_size), bool(self.full_batches_only))


class FixedController:
    needs_memory = False

    def __init__(self, batch_size: int, full_only: bool):
        self.batch_size = batch_size
        self.min_batch = batch_size if full_only else 1

    def size(self, waiting: int, mu: float = 0.0, sigma: float = 0.0) -> int:
        return min(self.batch_size, waiting)

    def observe(self, b: int, tbt: float) -> None:
        """Fixed batching ignores feedback."""


@dataclass(frozen=True)
class DynamicBatcher:
    """Pang et al.'s memory-aware (Algorithm 1) and SLA-constrained (Algorithm 2) batch size,
    b* = min(b_mem, b_SLA).

    Defaults: b_min 1, b_max 128, d_sla_s 0.05 (the paper's 50 ms TBT budget), eps_d_s 5 ms,
    alpha 4 and delta 2 (the paper leaves them open), eps_m 1% overflow probability, and a
    window of the 16 most recent batches for the observed averages τ̄ and b̄.
    """

    b_min: int = 1
    b_max: int = 128
    d_sla_s: float = 0.05
    eps_d_s: float = 0.005
    alpha: int = 4
    delta: int = 2
    eps_m: float = 0.01
    window: int = 16
    memory_aware: bool = True
    sla_aware: bool = True

    def __post_init__(self) -> None:
        for key in ("b_min", "b_max", "alpha", "delta", "window"):
            check_positive(key, getattr(self, key), integer=True)
        if self.b_min > self.b_max:
            raise ConfigError("b_min", f"must be <= b_max ({self.b_max})", self.b_min)
        check_positive("d_sla_s", self.d_sla_s)
        check_positive("eps_d_s", self.eps_d_s, allow_zero=True)
        check_probability("eps_m", self.eps_m, open_upper=True)
        if self.eps_m == 0:
            raise ConfigError("eps_m", "must be > 0", self.eps_m)

    @property
    def max_batch(self) -> int:
        return int(self.b_max)

    def controller(self, kv_capacity_tokens: int) -> "DynamicController":
        return DynamicController(self, kv_capacity_tokens)


def memory_batch_limit(mu: float, sigma: float, eta: float, theta: float) -> int:
    """Algorithm 1's rigorous bound: the largest b with b·μ + θ·σ·√b <= η (CLT on the sum of b
    requests' tokens), i.e. b <= ((sqrt((σθ)² + 4μη) − σθ) / (2μ))²."""
    if mu <= 0:
        return 1 << 30
    st = sigma * theta
    root = (math.sqrt(st * st + 4.0 * mu * eta) - st) / (2.0 * mu)
    return int(math.floor(root * root))


class SlaController:
    """Algorithm 2: a bracket [b_low, b_high] moved by observed decode latency τ̄.

    It updates once per decision that has new observations since the previous update, so a
    burst of decisions with no new feedback does not push the bracket repeatedly.
    """

    def __init__(self, spec: DynamicBatcher):
        self.b_min, self.b_max = int(spec.b_min), int(spec.b_max)
        self.d_sla, self.eps = float(spec.d_sla_s), float(spec.eps_d_s)
        self.alpha, self.delta = int(spec.alpha), int(spec.delta)
        self.b_low, self.b_high = float(self.b_min), float(self.b_max)
        self.sizes: deque[int] = deque(maxlen=int(spec.window))
        self.taus: deque[float] = deque(maxlen=int(spec.window))
        self.fresh = False

    def observe(self, b: int, tau: float) -> None:
        self.sizes.append(b)
        self.taus.append(tau)
        self.fresh = True

    def update(self) -> None:
        n = len(self.taus)
        tau = sum(self.taus) / n
        b_bar = sum(self.sizes) / n
        low, high, a = self.b_low, self.b_high, self.alpha
        if tau > self.d_sla + self.eps:
            self.b_high = max(b_bar, low + a)
            self.b_low = max(low - self.delta, self.b_min)
        elif tau < self.d_sla - self.eps:
            self.b_low = min(b_bar, high - a)
            self.b_high = min(high + self.delta, self.b_max)
        else:
            self.b_high = min(b_bar + a // 2, self.b_max)
            self.b_low = max(b_bar - a // 2, self.b_min)
        self.b_low = min(max(self.b_low, self.b_min), self.b_max)
        self.b_high = min(max(self.b_high, self.b_min), self.b_max)
        self.fresh = False

    def limit(self, n_decode: int = 0) -> int:
        if self.fresh:
            self.update()
        b = int(math.floor((self.b_low + self.b_high) / 2.0))
        return min(max(b, self.b_min, n_decode), self.b_max)


class DynamicController:
    """Per-queue state of the dynamic batcher. Under run-to-completion batching a free GPU has
    no decoding requests, so N_decode = 0 in both algorithms."""

    needs_memory = True
    min_batch = 1

    def __init__(self, spec: DynamicBatcher, kv_capacity_tokens: int):
        self.eta = float(kv_capacity_tokens)
        self.theta = NormalDist().inv_cdf(1.0 - float(spec.eps_m))
        self.b_max = int(spec.b_max)
        self.memory_aware = bool(spec.memory_aware)
        self.sla = SlaController(spec) if spec.sla_aware else None
        self.needs_memory = self.memory_aware

    def size(self, waiting: int, mu: float = 0.0, sigma: float = 0.0) -> int:
        b = self.b_max
        if self.memory_aware:
            b = min(b, memory_batch_limit(mu, sigma, self.eta, self.theta))
        if self.sla is not None:
            b = min(b, self.sla.limit())
        return max(1, min(b, waiting))

    def observe(self, b: int, tbt: float) -> None:
        if self.sla is not None:
            self.sla.observe(b, tbt)
