"""Arrival processes: each returns sorted arrival times (seconds from 0) for n requests."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simsched.errors import ConfigError, check_positive, check_range

# Gamma shapes numpy samples faithfully: below 1e-4 (CV above 100) almost every gap underflows
# to 0 and no practical sample shows the CV; above 1e12 (CV below 1e-6) the gaps are constant.
SHAPES = (1e-4, 1e12)
_SHAPE_WHY = "a Gamma shape between 1e-4 and 1e12, where numpy's sampler is faithful"
# An ON/OFF sample is drawn period by period: more periods than this would take minutes.
MAX_PERIODS = 1_000_000


@dataclass(frozen=True)
class Poisson:
    """Exponential inter-arrivals at ``rate`` requests per second."""

    rate: float = 10.0

    def __post_init__(self) -> None:
        check_positive("rate", self.rate)

    @property
    def mean_rate(self) -> float:
        return float(self.rate)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.exponential(1.0 / self.rate, size=n))


@dataclass(frozen=True)
class Gamma:
    """Gamma inter-arrivals (BurstGPT's short-term model): give shape+scale, or rate+cv.

    mean inter-arrival = shape*scale, CV = 1/sqrt(shape). rate/cv, when set, override.
    """

    shape: float | None = 0.5
    scale: float | None = 2.0
    rate: float | None = None
    cv: float | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) != (self.cv is None):
            raise ConfigError("rate", "rate and cv must be given together (or neither, with shape and scale)",
                              self.rate)
        if self.rate is not None:
            check_positive("rate", self.rate)
            check_range("cv", self.cv, SHAPES[1] ** -0.5, SHAPES[0] ** -0.5, _SHAPE_WHY)
        else:
            if self.shape is None or self.scale is None:
                raise ConfigError("shape", "give shape and scale, or rate and cv")
            check_range("shape", self.shape, *SHAPES, _SHAPE_WHY)
            check_positive("scale", self.scale)
        shape, scale = self.params
        if not 0 < shape * scale < float("inf") or not 0 < scale < float("inf"):
            raise ConfigError("rate" if self.rate is not None else "scale",
                              "gives a mean inter-arrival time that is not a positive finite number",
                              self.rate if self.rate is not None else self.scale)

    @property
    def params(self) -> tuple[float, float]:
        """(shape, scale) of the inter-arrival distribution."""
        if self.rate is not None:
            shape = 1.0 / float(self.cv) ** 2
            return shape, 1.0 / (float(self.rate) * shape)
        return float(self.shape), float(self.scale)

    @property
    def mean_rate(self) -> float:
        shape, scale = self.params
        return 1.0 / (shape * scale)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape, scale = self.params
        return np.cumsum(rng.gamma(shape, scale, size=n))


@dataclass(frozen=True)
class OnOff:
    """Two-state Markov-modulated Poisson process: exponential ON and OFF periods."""

    rate_on: float = 20.0
    rate_off: float = 1.0
    mean_on_s: float = 10.0
    mean_off_s: float = 30.0

    def __post_init__(self) -> None:
        check_positive("rate_on", self.rate_on)
        check_positive("rate_off", self.rate_off, allow_zero=True)
        check_positive("mean_on_s", self.mean_on_s)
        check_positive("mean_off_s", self.mean_off_s)

    @property
    def mean_rate(self) -> float:
        on, off = self.mean_on_s, self.mean_off_s
        return (self.rate_on * on + self.rate_off * off) / (on + off)

    def check_count(self, n: int) -> None:
        """Refuse a sample that needs more than ``MAX_PERIODS`` ON/OFF periods (e.g.
        ``rate_on=1e-9``: the loop would run for hours, one period at a time)."""
        per_cycle = self.rate_on * self.mean_on_s + self.rate_off * self.mean_off_s
        periods = 2.0 * n / per_cycle if per_cycle > 0 else float("inf")
        if not periods <= MAX_PERIODS:
            raise ConfigError("rate_on", f"{n} requests at {per_cycle:.3g} arrivals per ON/OFF cycle need "
                                         f"~{periods:.3g} periods (at most {MAX_PERIODS:,}); raise rate_on "
                                         f"or mean_on_s", self.rate_on)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: list[np.ndarray] = []
        have, t, on = 0, 0.0, True
        while have < n:
            dur = rng.exponential(self.mean_on_s if on else self.mean_off_s)
            rate = self.rate_on if on else self.rate_off
            if rate > 0:
                k = rng.poisson(rate * dur)
                if k:
                    # Given the count, Poisson arrival times in a period are uniform order statistics.
                    out.append(t + np.sort(rng.random(k)) * dur)
                    have += k
            t += dur
            on = not on
        return np.concatenate(out)[:n]


@dataclass(frozen=True)
class WindowedGamma:
    """Gamma inter-arrivals whose rate and shape change every ``window_s`` seconds, e.g. a
    trace's hour-by-hour pattern fitted by ``python -m simsched.workloads.fit``. Window i has
    rate ``rates[i]`` (0: idle) and shape ``shapes[i]`` (CV 1/sqrt(shape)); the windows repeat
    when more requests are needed.

    Each window is an independent stationary Gamma renewal process: it starts in equilibrium
    (first arrival at the forward recurrence time U * Gamma(shape + 1, scale), U uniform), so
    the expected count of window i is exactly ``rates[i] * window_s`` even for very bursty
    shapes, where restarting from an arrival at the window start would add (CV^2 - 1)/2.
    """

    window_s: float = 3600.0
    rates: list[float] = field(default_factory=lambda: [1.0])
    shapes: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        check_positive("window_s", self.window_s)
        if len(self.rates) == 0:
            raise ConfigError("rates", "must not be empty")
        if len(self.shapes) != len(self.rates):
            raise ConfigError("shapes", f"must have one shape per rate ({len(self.rates)})", len(self.shapes))
        for r in self.rates:
            check_positive("rates", r, allow_zero=True)
        for k in self.shapes:
            check_range("shapes", k, *SHAPES, _SHAPE_WHY)
        if not any(r > 0 for r in self.rates):
            raise ConfigError("rates", "at least one window needs a rate > 0")

    @property
    def mean_rate(self) -> float:
        return float(np.mean(self.rates))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: list[np.ndarray] = []
        have, i, w = 0, 0, float(self.window_s)
        while have < n:
            rate, shape = float(self.rates[i % len(self.rates)]), float(self.shapes[i % len(self.rates)])
            if rate > 0:
                scale = 1.0 / (rate * shape)
                last = rng.random() * rng.gamma(shape + 1.0, scale)   # equilibrium start
                if last < w:
                    parts = [np.array([last])]
                    chunk = int(rate * w * 1.2) + 16
                    while True:
                        t = last + np.cumsum(rng.gamma(shape, scale, size=chunk))
                        inside = t[t < w]
                        parts.append(inside)
                        if len(inside) < chunk:
                            break
                        last = float(t[-1])
                    window = np.concatenate(parts)
                    out.append(i * w + window)
                    have += len(window)
            i += 1
        return np.concatenate(out)[:n]
