"""Latency models T(b, L, P): seconds for a batch of b requests whose longest output is L tokens
and whose prompts sum to P tokens. All are plain arithmetic, so they accept numpy arrays too.

Time to first token and time between tokens follow from T itself (see ``first_token_time`` and
``mean_tbt``), so TTFT/TBT are defined for every model, including fitted ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from simsched.errors import ConfigError, check_positive


class LatencyModel(Protocol):
    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any: ...


@dataclass(frozen=True)
class SeedForm:
    """The seed simulator's saturating form: T = α + β·L·(1 + γ(b−1)/b) [+ π·P].

    Per-token cost rises from β (b=1) to β(1+γ) (b→∞), so a TBT SLA binds only when
    β < D_SLA < β(1+γ) (REFERENCE §4).
    """

    alpha_s: float = 0.05965
    beta_s: float = 0.00574
    gamma: float = 0.316
    prefill_s_per_token: float = 0.0
    name: str = "synthetic"

    def __post_init__(self) -> None:
        check_positive("alpha_s", self.alpha_s, allow_zero=True)
        check_positive("beta_s", self.beta_s)
        check_positive("gamma", self.gamma, allow_zero=True)
        check_positive("prefill_s_per_token", self.prefill_s_per_token, allow_zero=True)

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any:
        return (self.alpha_s + self.beta_s * L * (1.0 + self.gamma * (b - 1) / b)
                + self.prefill_s_per_token * prompt_sum)


@dataclass(frozen=True)
class Affine:
    """Pang et al.'s linear step time integrated over L steps:
    T = α + L·(β0 + β1·b) + π·P + κ·(P·L + b·L²/2).

    κ charges decode steps for the context held in the batch (prompt plus tokens generated so
    far), which DistServe and Vidur both measure; π is a prefill cost per prompt token.
    """

    alpha_s: float = 0.0
    beta0_s: float = 0.030
    beta1_s: float = 0.00022
    prefill_s_per_token: float = 0.0
    kv_s_per_token: float = 0.0
    name: str = "affine"

    def __post_init__(self) -> None:
        for key in ("alpha_s", "beta0_s", "beta1_s", "prefill_s_per_token", "kv_s_per_token"):
            check_positive(key, getattr(self, key), allow_zero=True)
        if self.beta0_s + self.beta1_s <= 0:
            raise ConfigError("beta0_s", "beta0_s + beta1_s must be > 0 (decode steps take time)", self.beta0_s)

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any:
        return (self.alpha_s + L * (self.beta0_s + self.beta1_s * b)
                + self.prefill_s_per_token * prompt_sum
                + self.kv_s_per_token * (prompt_sum * L + b * L * L / 2.0))


def first_token_time(model: LatencyModel, b: Any, prompt_sum: Any) -> Any:
    """Time from batch start to the first generated token: T(b, 1, P)."""
    return model.batch_time(b, 1, prompt_sum)


def mean_tbt(model: LatencyModel, b: Any, L: Any, prompt_sum: Any) -> Any:
    """Mean time between tokens of a batch: (T(b,L,P) − T(b,1,P)) / (L − 1); for L = 1 the
    marginal step T(b,2,P) − T(b,1,P)."""
    L = np.asarray(L, dtype=float)
    t1 = model.batch_time(b, 1, prompt_sum)
    steps = np.maximum(L - 1.0, 1.0)
    tl = np.where(L > 1, model.batch_time(b, L, prompt_sum), model.batch_time(b, 2, prompt_sum))
    out = (tl - t1) / steps
    return float(out) if out.ndim == 0 else out
