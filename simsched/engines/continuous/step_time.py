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
  processed, at the start of step k+1 + 1 (the next tick).

In step-conformance mode (``unit_steps``) every step lasts exactly 1: time is the step index.
"""
from __future__ import annotations

from simsched.jit import jitable


@jitable
def gpu_time(P, prefill_tokens, decode_seqs, context, attn):
    if P.unit_steps:
        return 0.0
    return P.c0 + P.c_pf * prefill_tokens + P.c_dec * decode_seqs + P.c_ctx * context + P.c_attn * attn


@jitable
def tick_length(P, g_sched, g_in_flight):
    """Time from this tick to the next: sync ``cpu + g`` of the step just scheduled, async
    ``max(cpu, g)`` of the step now running on the GPU."""
    if P.unit_steps:
        return 1.0
    if P.async_sched:
        return P.cpu if P.cpu > g_in_flight else g_in_flight
    return P.cpu + g_sched


@jitable
def decode_run_tick(P, B, ctx0, j):
    """The j-th tick length (j = 0, 1, ...) of a run of identical decode steps of B requests
    whose context sum is ``ctx0`` at step 0 and grows by B per step."""
    if P.unit_steps:
        return 1.0
    g = P.c0 + P.c_dec * B + P.c_ctx * (ctx0 + B * j)
    if P.async_sched:
        return P.cpu if P.cpu > g else g
    return P.cpu + g
