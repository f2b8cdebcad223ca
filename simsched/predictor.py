"""Output-length predictors. The scheduler sees only predictions; the engine uses true lengths."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simsched.errors import check_positive, check_probability


@dataclass(frozen=True)
class Oracle:
    """Predicts the true output length (the papers' upper bound)."""

    name: str = "oracle"
    p_e: float = 0.0

    def predict(self, output: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        view = output.view()      # the true lengths themselves (read-only): no copy of a large column
        view.flags.writeable = False
        return view

    def perturb_bins(self, bins: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return bins


@dataclass(frozen=True)
class Noisy:
    """Multiplicative log-normal error (median-unbiased) plus the Multi-Bin paper's ±1-bin error.

    ``sigma`` is the log-space standard deviation of predicted/true. With probability ``p_e``
    each, a request's bin is moved one down or one up (Guldogan et al. §6.2); a move past
    the first or last bin leaves the request where it was.
    """

    sigma: float = 0.5
    p_e: float = 0.0
    name: str = "noisy"

    def __post_init__(self) -> None:
        check_positive("sigma", self.sigma, allow_zero=True)
        check_probability("p_e", self.p_e)
        if self.p_e > 0.5:
            from simsched.errors import ConfigError

            raise ConfigError("p_e", "must be <= 0.5 (probability of each of the two neighbour bins)", self.p_e)

    def predict(self, output: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.sigma == 0:
            return output.copy()
        noisy = output * np.exp(self.sigma * rng.standard_normal(len(output)))
        return np.maximum(np.rint(noisy), 1).astype(np.int64)

    def perturb_bins(self, bins: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        if self.p_e == 0 or k == 1:
            return bins
        u = rng.random(len(bins))
        shift = np.where(u < self.p_e, -1, np.where(u < 2 * self.p_e, 1, 0))
        moved = bins + shift
        return np.where((moved >= 0) & (moved < k), moved, bins).astype(bins.dtype)
