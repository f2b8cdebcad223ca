"""Latency models T(b, L, P): seconds for a batch of b requests whose longest output is L tokens
and whose prompts sum to P tokens. All are plain arithmetic, so they accept numpy arrays too.

Time to first token and time between tokens follow from T itself (see ``first_token_time`` and
``mean_tbt``), so TTFT/TBT are defined for every model, including fitted ones.

Each form is one plain function of its coefficients and (b, L, P) (``seed_form_time``,
``affine_time``, ``step_batch_time``): the model classes call it for ``batch_time``, and the
compiled engine loop calls it through ``form_time`` with the coefficients a model hands over in
``kernel_form()``. One expression per form, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from simsched.errors import ConfigError, check_positive
from simsched.jit import jitable

# Form ids of ``LatencyForm.kind``.
SEED_FORM, AFFINE, STEP_TIME = 0, 1, 2


class LatencyForm(NamedTuple):
    """A latency model as plain numbers, for the compiled loop: the form id and its
    coefficients in the order ``form_time`` reads them."""

    kind: int
    coefs: np.ndarray


class LatencyModel(Protocol):
    """T(b, L, P). Models that also have ``kernel_form() -> LatencyForm`` (every shipped one)
    run in the compiled loop; a model with ``batch_time`` only runs in the Python loop."""

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any: ...


@jitable
def seed_form_time(alpha: Any, beta: Any, gamma: Any, prefill: Any, b: Any, L: Any, P: Any) -> Any:
    """T = α + β·L·(1 + γ(b−1)/b) + π·P (the seed's saturating form)."""
    return alpha + beta * L * (1.0 + gamma * (b - 1) / b) + prefill * P


@jitable
def affine_time(alpha: Any, beta0: Any, beta1: Any, prefill: Any, kv: Any, b: Any, L: Any, P: Any) -> Any:
    """T = α + L·(β0 + β1·b) + π·P + κ·(P·L + b·L²/2) (Pang et al.'s step time over L steps)."""
    return alpha + L * (beta0 + beta1 * b) + prefill * P + kv * (P * L + b * L * L / 2.0)


@jitable
def step_batch_time(c0: Any, cpu: Any, c_pf: Any, c_dec: Any, c_ctx: Any, c_attn: Any,
                    b: Any, L: Any, P: Any) -> Any:
    """StepTime integrated over a run-to-completion batch: one prefill step of P tokens
    (attention term as for b equal prompts), then L − 1 decode steps of b sequences."""
    steps = L - 1.0
    prefill = c0 + cpu + c_pf * P + c_dec * 0.0 + c_ctx * 0.0 + c_attn * (P * P / (2.0 * b))
    decode = steps * (c0 + cpu + c_dec * b) + c_ctx * (steps * P + b * L * steps / 2.0)
    return prefill + decode


@jitable
def form_time(kind: int, c: np.ndarray, b: Any, L: Any, P: Any) -> float:
    """T(b, L, P) of the form ``kind`` with coefficients ``c`` (a ``LatencyForm``)."""
    if kind == SEED_FORM:
        return seed_form_time(c[0], c[1], c[2], c[3], b, L, P)
    if kind == AFFINE:
        return affine_time(c[0], c[1], c[2], c[3], c[4], b, L, P)
    return step_batch_time(c[0], c[1], c[2], c[3], c[4], c[5], b, L, P)


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
        return seed_form_time(self.alpha_s, self.beta_s, self.gamma, self.prefill_s_per_token, b, L, prompt_sum)

    def kernel_form(self) -> LatencyForm:
        return LatencyForm(SEED_FORM, np.array([self.alpha_s, self.beta_s, self.gamma,
                                                self.prefill_s_per_token], dtype=np.float64))


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
        return affine_time(self.alpha_s, self.beta0_s, self.beta1_s, self.prefill_s_per_token,
                           self.kv_s_per_token, b, L, prompt_sum)

    def kernel_form(self) -> LatencyForm:
        return LatencyForm(AFFINE, np.array([self.alpha_s, self.beta0_s, self.beta1_s,
                                             self.prefill_s_per_token, self.kv_s_per_token], dtype=np.float64))


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


@dataclass(frozen=True)
class StepTime:
    """Iteration-level step time (REFERENCE §9), the form both engines share:

        t_step = c0 + c_pf·prefill_tokens + c_dec·decode_seqs + c_ctx·Σcontext
                 + c_attn·Σ(chunk·start + chunk²/2) + cpu

    ``prefill_tokens`` are the prompt tokens computed in the step, ``decode_seqs`` the requests
    that generate a token from an already computed context, ``Σcontext`` the tokens those
    decoding requests attend over (computed tokens plus the new one), and the ``c_attn`` term the quadratic attention of prefill
    chunks (a chunk of n tokens starting at position s attends over s + n/2 tokens on average).
    ``cpu_s`` is the host time per step (scheduling, input preparation) that the GPU does not
    hide. ``source`` says where the coefficients come from (a fit, a roofline, a paper).

    Run-to-completion batches integrate it (``batch_time``): one prefill step of all b prompts
    (P tokens, prompts taken as equal for the attention term), then L − 1 decode steps of b
    sequences whose context grows from P by b tokens a step.
    """

    c0_s: float = 0.0
    c_pf_s: float = 0.0
    c_dec_s: float = 0.0
    c_ctx_s: float = 0.0
    c_attn_s: float = 0.0
    cpu_s: float = 0.0
    name: str = "step_time"
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("c0_s", "c_pf_s", "c_dec_s", "c_ctx_s", "c_attn_s", "cpu_s"):
            check_positive(key, getattr(self, key), allow_zero=True)
        if self.c0_s + self.c_dec_s + self.cpu_s <= 0:
            raise ConfigError("c0_s", "c0_s + c_dec_s + cpu_s must be > 0 (a decode step takes time)",
                              self.c0_s)

    def step_time(self, prefill_tokens: Any, decode_seqs: Any, context_tokens: Any,
                  attn_tokens2: Any = 0.0) -> Any:
        """Seconds for one step; ``attn_tokens2`` is Σ over prefill chunks of n·s + n²/2."""
        return (self.c0_s + self.cpu_s + self.c_pf_s * prefill_tokens + self.c_dec_s * decode_seqs
                + self.c_ctx_s * context_tokens + self.c_attn_s * attn_tokens2)

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any:
        b = np.asarray(b, dtype=float)
        L = np.asarray(L, dtype=float)
        P = np.asarray(prompt_sum, dtype=float)
        out = step_batch_time(self.c0_s, self.cpu_s, self.c_pf_s, self.c_dec_s, self.c_ctx_s, self.c_attn_s,
                              b, L, P)
        return float(out) if np.ndim(out) == 0 else out

    def kernel_form(self) -> LatencyForm:
        return LatencyForm(STEP_TIME, np.array([self.c0_s, self.cpu_s, self.c_pf_s, self.c_dec_s,
                                                self.c_ctx_s, self.c_attn_s], dtype=np.float64))
