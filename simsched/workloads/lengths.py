"""Token-length distributions for prompts and outputs. Each samples integer lengths >= minimum."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simsched.errors import ConfigError, check_positive, check_probability, check_range
from simsched.workloads.requests import MAX_TOKENS


@dataclass(frozen=True)
class Fixed:
    """Every request has the same length (M/D/1 checks)."""

    value: int = 128

    def __post_init__(self) -> None:
        _check_tokens("value", self.value)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, int(self.value), dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Integer lengths uniform on [low, high] inclusive (the Multi-Bin paper's model)."""

    low: int = 1
    high: int = 512

    def __post_init__(self) -> None:
        _check_tokens("low", self.low)
        _check_tokens("high", self.high)
        if self.high < self.low:
            raise ConfigError("high", f"must be >= low ({self.low})", self.high)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(int(self.low), int(self.high) + 1, size=n, dtype=np.int64)


@dataclass(frozen=True)
class Lognormal:
    """Log-normal lengths given by median and log-space sigma, clipped to [minimum, maximum]."""

    median: float = 200.0
    sigma: float = 0.8
    minimum: int = 1
    maximum: int = 32768

    def __post_init__(self) -> None:
        check_positive("median", self.median)
        check_positive("sigma", self.sigma, allow_zero=True)
        _check_bounds(self.minimum, self.maximum)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.median * np.exp(self.sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), self.minimum, self.maximum).astype(np.int64)


@dataclass(frozen=True)
class Zipf:
    """Power-law (Zipf-like) lengths: P(X > x) = (x_min / x)^exponent, truncated at maximum.

    BurstGPT reports Zipf-like request lengths; truncation is by inverse CDF, not clipping,
    so no mass piles up at the maximum.
    """

    x_min: float = 222.0
    exponent: float = 1.5
    maximum: int = 32768

    def __post_init__(self) -> None:
        check_positive("x_min", self.x_min)
        check_positive("exponent", self.exponent)
        _check_tokens("maximum", self.maximum)
        if self.maximum < self.x_min:
            raise ConfigError("maximum", f"must be >= x_min ({self.x_min})", self.maximum)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        top = 1.0 - (self.x_min / self.maximum) ** self.exponent
        u = rng.random(n) * top
        x = self.x_min * (1.0 - u) ** (-1.0 / self.exponent)
        return np.clip(np.floor(x), 1, self.maximum).astype(np.int64)


@dataclass(frozen=True)
class Bimodal:
    """Mixture of two log-normals (BurstGPT's ChatGPT responses are bimodal)."""

    short_weight: float = 0.3
    short_median: float = 30.0
    short_sigma: float = 0.7
    long_median: float = 330.0
    long_sigma: float = 0.6
    minimum: int = 1
    maximum: int = 32768

    def __post_init__(self) -> None:
        check_probability("short_weight", self.short_weight)
        for key in ("short_median", "long_median"):
            check_positive(key, getattr(self, key))
        for key in ("short_sigma", "long_sigma"):
            check_positive(key, getattr(self, key), allow_zero=True)
        _check_bounds(self.minimum, self.maximum)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        short = rng.random(n) < self.short_weight
        median = np.where(short, self.short_median, self.long_median)
        sigma = np.where(short, self.short_sigma, self.long_sigma)
        x = median * np.exp(sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), self.minimum, self.maximum).astype(np.int64)


@dataclass(frozen=True)
class Empirical:
    """Lengths drawn from a table of values with optional weights (e.g. fitted from a trace)."""

    values: list[int] = field(default_factory=lambda: [128])
    weights: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ConfigError("values", "must not be empty")
        for v in self.values:
            _check_tokens("values", v)
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ConfigError("weights", f"must have one weight per value ({len(self.values)})",
                                  len(self.weights))
            for w in self.weights:
                check_positive("weights", w, allow_zero=True)
            if sum(self.weights) <= 0:
                raise ConfigError("weights", "must not all be zero")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        values = np.asarray(self.values, dtype=np.int64)
        p = None
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
            p = w / w.sum()
        return rng.choice(values, size=n, p=p)


def _check_tokens(key: str, value: int) -> None:
    check_positive(key, value, integer=True)
    check_range(key, value, 1, MAX_TOKENS, "tokens per request")


def _check_bounds(minimum: int, maximum: int) -> None:
    _check_tokens("minimum", minimum)
    _check_tokens("maximum", maximum)
    if maximum < minimum:
        raise ConfigError("maximum", f"must be >= minimum ({minimum})", maximum)
