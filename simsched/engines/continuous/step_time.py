"""How long a step takes: the GPU step-time form plus the host (CPU) time of a step.

GPU time of a step (``simsched.latency.StepTime`` without its ``cpu_s``):

    g = c0 + c_pf·prefill_tokens + c_dec·decode_seqs + c_ctx·Σcontext + c_attn·Σ(n·s + n²/2)

A scheduled request is a *decode* when its computed tokens before the step reach its prompt
(it generates from an already computed context; its context is computed + 1 tokens); every
other scheduled chunk is a *prefill* chunk of n tokens starting at position s (a first prompt,
a later chunk of it, or the recomputation of a preempted request).

Host time ``cpu`` (schedule, input preparation, output processing) per step, and how the two
combine (the tick rule the loop applies):

- synchronous scheduling: a step lasts ``cpu + g``; its tokens are emitted at its end;
- asynchronous scheduling (vLLM's batch queue of two): step k+1 is scheduled while step k runs
  on the GPU, so consecutive steps start ``max(cpu, g_k)`` apart and the host time is hidden
  whenever the GPU is the slower side; step k's tokens are emitted when its output is
  processed, at the tick that follows its run (where step k+2 is scheduled).

In step-conformance mode (``unit_steps``) every step lasts exactly 1: time is the step index.
"""
from __future__ import annotations

from typing import Any

from simsched.errors import ConfigError
from simsched.jit import jitable
from simsched.latency import Affine, StepTime


@jitable(inline=True)
def gpu_time(P, prefill_tokens, decode_seqs, context, attn):
    if P.unit_steps:
        return 0.0
    return P.c0 + P.c_pf * prefill_tokens + P.c_dec * decode_seqs + P.c_ctx * context + P.c_attn * attn


@jitable(inline=True)
def tick_length(P, g_sched, g_in_flight):
    """Time from this tick to the next: sync ``cpu + g`` of the step just scheduled, async
    ``max(cpu, g)`` of the step now running on the GPU."""
    if P.unit_steps:
        return 1.0
    if P.async_sched:
        return P.cpu if P.cpu > g_in_flight else g_in_flight
    return P.cpu + g_sched


def as_step_time(model: Any) -> StepTime:
    """The step form of a latency model (``latency_model`` group) for this engine.

    ``StepTime`` as is; a roofline preset's ``step_model``; Pang's ``Affine`` form per step:
    β0 → c0, β1 → c_dec, π → c_pf, κ → c_ctx (its per-batch α has no per-step meaning and is
    dropped; see ``affine_to_step``); a calibrated model through the form it fitted. The seed
    form T = α + β·L·(1 + γ(b−1)/b) describes whole batches and has no step form: an error.
    """
    inner = getattr(model, "step_model", None) or getattr(model, "model", None)
    if isinstance(model, StepTime):
        return model
    if isinstance(inner, StepTime):
        return inner
    if isinstance(model, Affine):
        return affine_to_step(model)
    if isinstance(inner, Affine):
        return affine_to_step(inner)
    name = getattr(model, "name", type(model).__name__)
    raise ConfigError("latency_model", f"'{name}' has no per-step form for engine=continuous (the seed "
                      "form describes whole batches); use latency_model=roofline, affine or a StepTime preset",
                      allowed="roofline, affine, calibrated with form affine, step_time")


def affine_to_step(model: Affine) -> StepTime:
    """T = α + L·(β0 + β1·b) + π·P + κ·(P·L + b·L²/2) read per step: a decode step of b
    sequences costs β0 + β1·b, a prompt token π, a context token κ per step."""
    return StepTime(c0_s=model.beta0_s, c_pf_s=model.prefill_s_per_token, c_dec_s=model.beta1_s,
                    c_ctx_s=model.kv_s_per_token, c_attn_s=0.0, cpu_s=0.0, name=model.name,
                    source=f"affine '{model.name}' per step (alpha {model.alpha_s:g} s per batch dropped)")
