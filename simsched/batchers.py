"""Batchers decide how many waiting requests of one queue form the next batch.

A batcher is a frozen spec (what the config builds). For a run it becomes plain numbers
(``ControllerParams``) and per-queue state arrays (``SlaState``, one row per queue), which the
functions below read and update: Algorithm 1 (``memory_batch_limit``) fed by
``token_moments``, Algorithm 2 (``sla_bracket``) fed by the window of observed batches, and
their combination (``batch_size``). The engine's compiled loop calls these same functions for
all of its queues; ``controller()`` wraps them for one queue (the reference simulator and the
tests use it). State lives for one simulation only, so configs are never shared mutable state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from simsched.errors import ConfigError, check_positive, check_probability
from simsched.jit import jitable


class ControllerParams(NamedTuple):
    """A batcher as plain numbers (the same for every queue of a run)."""

    fixed_size: int       # > 0: a fixed batch of this size; 0: dynamic (Algorithms 1 and 2)
    min_batch: int        # a queue waits until it holds this many (except when draining)
    memory_aware: bool    # Algorithm 1 on
    sla_aware: bool       # Algorithm 2 on
    b_min: int
    b_max: int
    d_sla: float
    eps: float
    alpha: int
    delta: int
    window: int
    eta: float            # KV capacity in tokens
    theta: float          # Φ^-1(1 − ε_M)


class SlaState(NamedTuple):
    """Algorithm 2's state, one row per queue: the bracket, whether feedback arrived since the
    last update, and a ring buffer of the most recent ``window`` (batch size, decode latency)."""

    low: np.ndarray       # float64[K]
    high: np.ndarray      # float64[K]
    fresh: np.ndarray     # bool[K]
    n_obs: np.ndarray     # int64[K]: observations so far
    sizes: np.ndarray     # int64[K, window]
    taus: np.ndarray      # float64[K, window]


def sla_state(k: int, p: ControllerParams) -> SlaState:
    """The initial state of ``k`` queues: the bracket [b_min, b_max], no observations."""
    w = max(int(p.window), 1)
    return SlaState(np.full(k, float(p.b_min)), np.full(k, float(p.b_max)), np.zeros(k, dtype=np.bool_),
                    np.zeros(k, dtype=np.int64), np.zeros((k, w), dtype=np.int64), np.zeros((k, w)))


@jitable
def token_moments(arrived: int, sp: float, sp2: float, sq: float, sq2: float,
                  done: int, so: float, so2: float) -> tuple[float, float]:
    """Algorithm 1's inputs for one queue: the per-request token mean μ and standard deviation
    σ, estimated online (REFERENCE §3) from the sums of prompts (sp, sp2) and predicted outputs
    (sq, sq2) of the ``arrived`` requests, and of the true outputs (so, so2) of the ``done``
    requests that have completed; predictions stand in until one has. Never from the true
    output of a queued request."""
    a = float(max(arrived, 1))
    mp = sp / a
    vp = sp2 / a - mp * mp
    if done > 0:
        mo = so / float(done)
        vo = so2 / float(done) - mo * mo
    else:
        mo = sq / a
        vo = sq2 / a - mo * mo
    return mp + mo, math.sqrt(max(vp, 0.0) + max(vo, 0.0))


@jitable
def memory_batch_limit(mu: float, sigma: float, eta: float, theta: float) -> int:
    """Algorithm 1 (Pang et al., REFERENCE §3), the rigorous bound: the largest b with
    b·μ + θ·σ·√b <= η (CLT on the sum of b requests' tokens), i.e.
    b <= ((sqrt((σθ)² + 4μη) − σθ) / (2μ))²."""
    if mu <= 0:
        return 1 << 30
    st = sigma * theta
    root = (math.sqrt(st * st + 4.0 * mu * eta) - st) / (2.0 * mu)
    return int(math.floor(root * root))


@jitable
def sla_bracket(b_low: float, b_high: float, tau: float, b_bar: float,
                p: ControllerParams) -> tuple[float, float]:
    """Algorithm 2 (Pang et al., REFERENCE §3): move the bracket [b_low, b_high] by the recent
    mean *observed* decode latency τ̄ against D_SLA ± ε_D, around the recent mean batch b̄."""
    a = p.alpha
    if tau > p.d_sla + p.eps:
        high = max(b_bar, b_low + a)
        low = max(b_low - p.delta, p.b_min)
    elif tau < p.d_sla - p.eps:
        low = min(b_bar, b_high - a)
        high = min(b_high + p.delta, p.b_max)
    else:
        high = min(b_bar + a // 2, p.b_max)
        low = max(b_bar - a // 2, p.b_min)
    low = min(max(low, p.b_min), p.b_max)
    high = min(max(high, p.b_min), p.b_max)
    return float(low), float(high)


@jitable
def sla_observe(s: SlaState, k: int, b: int, tau: float) -> None:
    """Record queue k's completed batch (size b, mean decode latency τ) in its window."""
    i = s.n_obs[k] % s.sizes.shape[1]
    s.sizes[k, i] = b
    s.taus[k, i] = tau
    s.n_obs[k] += 1
    s.fresh[k] = True


@jitable
def window_means(s: SlaState, k: int) -> tuple[float, float]:
    """τ̄ and b̄ over queue k's window of most recent observations, oldest first."""
    w = s.sizes.shape[1]
    m = min(s.n_obs[k], w)
    tau_sum = 0.0
    b_sum = 0
    for j in range(s.n_obs[k] - m, s.n_obs[k]):
        tau_sum += s.taus[k, j % w]
        b_sum += s.sizes[k, j % w]
    return tau_sum / m, b_sum / m


@jitable
def sla_limit(s: SlaState, k: int, p: ControllerParams, n_decode: int) -> int:
    """b_SLA of queue k. The bracket moves once per decision that has new observations since
    the previous move, so a burst of decisions with no new feedback does not push it twice."""
    if s.fresh[k]:
        tau, b_bar = window_means(s, k)
        s.low[k], s.high[k] = sla_bracket(s.low[k], s.high[k], tau, b_bar, p)
        s.fresh[k] = False
    b = int(math.floor((s.low[k] + s.high[k]) / 2.0))
    return min(max(b, p.b_min, n_decode), p.b_max)


@jitable
def batch_size(p: ControllerParams, waiting: int, mu: float, sigma: float, s: SlaState, k: int) -> int:
    """The next batch of queue k: min(B, waiting) for a fixed batcher; for a dynamic one
    b* = min(b_mem, b_SLA) (REFERENCE §3), at least 1 and at most ``waiting``. Under
    run-to-completion batching a free GPU has no decoding requests, so N_decode = 0."""
    if p.fixed_size > 0:
        return min(p.fixed_size, waiting)
    b = p.b_max
    if p.memory_aware:
        b = min(b, memory_batch_limit(mu, sigma, p.eta, p.theta))
    if p.sla_aware:
        b = min(b, sla_limit(s, k, p, 0))
    return max(1, min(b, waiting))


class Controller:
    """One queue's batcher state (the engine keeps all of its queues' state in ``SlaState``
    arrays and calls the same functions)."""

    def __init__(self, params: ControllerParams):
        self.params = params
        self.state = sla_state(1, params)
        self.min_batch = int(params.min_batch)
        self.needs_memory = bool(params.memory_aware)

    def size(self, waiting: int, mu: float = 0.0, sigma: float = 0.0) -> int:
        return batch_size(self.params, waiting, mu, sigma, self.state, 0)

    def observe(self, b: int, tbt: float) -> None:
        if self.params.sla_aware:
            sla_observe(self.state, 0, b, tbt)


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

    def params(self, kv_capacity_tokens: int) -> ControllerParams:
        B = int(self.batch_size)
        return ControllerParams(fixed_size=B, min_batch=B if self.full_batches_only else 1,
                                memory_aware=False, sla_aware=False, b_min=1, b_max=B, d_sla=0.0, eps=0.0,
                                alpha=1, delta=1, window=1, eta=float(kv_capacity_tokens), theta=0.0)

    def controller(self, kv_capacity_tokens: int) -> Controller:
        return Controller(self.params(kv_capacity_tokens))


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

    def params(self, kv_capacity_tokens: int) -> ControllerParams:
        return ControllerParams(fixed_size=0, min_batch=1, memory_aware=bool(self.memory_aware),
                                sla_aware=bool(self.sla_aware), b_min=int(self.b_min), b_max=int(self.b_max),
                                d_sla=float(self.d_sla_s), eps=float(self.eps_d_s), alpha=int(self.alpha),
                                delta=int(self.delta), window=int(self.window), eta=float(kv_capacity_tokens),
                                theta=NormalDist().inv_cdf(1.0 - float(self.eps_m)))

    def controller(self, kv_capacity_tokens: int) -> Controller:
        return Controller(self.params(kv_capacity_tokens))


class SlaController:
    """Algorithm 2 alone, for one queue (``b_low``, ``b_high``: the current bracket)."""

    def __init__(self, spec: DynamicBatcher):
        self.params = spec.params(1)
        self.state = sla_state(1, self.params)

    @property
    def b_low(self) -> float:
        return float(self.state.low[0])

    @property
    def b_high(self) -> float:
        return float(self.state.high[0])

    def observe(self, b: int, tau: float) -> None:
        sla_observe(self.state, 0, b, tau)

    def limit(self, n_decode: int = 0) -> int:
        return sla_limit(self.state, 0, self.params, n_decode)
