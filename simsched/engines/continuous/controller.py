"""Pang et al.'s controllers on the continuous engine (``scheduler=dynamic_no_bins`` and
``multi_bin_dynamic``): a cap on each replica's running batch, b* = min(b_mem, b_SLA).

The algorithms are ``simsched.batchers``' own functions (REFERENCE §3), fed here with what a
continuous-batching replica observes:

- Algorithm 2 (``sla_limit``) sees the *observed* length of each step that decoded, i.e. the
  time between two tokens of every request in it, together with the step's batch size; a
  step is observed at the tick that ends it (never before it has run).
- Algorithm 1 (``memory_batch_limit``) bounds the number of running requests by the KV
  capacity η of the replica, from the moments of the replica's arrivals (prompts and predicted
  outputs) and finished requests' true outputs (``token_moments``). N_decode (running
  requests past their prompt) and N_prefill (running requests still in prefill, plus those
  admitted in this pass) are real here: the admission pass stops when N_decode + N_prefill
  reaches b*, and b* is never below N_decode (Algorithm 1's ``max(b_mem, N_decode)``,
  Algorithm 2's clip), so the cap never preempts.
"""
from __future__ import annotations

from simsched.batchers import memory_batch_limit, sla_limit, sla_observe, token_moments
from simsched.engines.continuous.state import (COMPUTED, LAST_B, LAST_DUR, N_ARR, N_DONE, PRED, PROMPT, RUN_LEN, SO,
                                              SO2, SP, SP2, SQ, SQ2)
from simsched.jit import jitable


@jitable
def note_arrival(Q, S, g, i):
    """Algorithm 1's moments: request ``i`` (prompt, predicted output) reached replica g."""
    p = float(Q.qi[i, PROMPT])
    q = float(Q.qi[i, PRED])
    c = S.ctl
    c[g, SP] += p
    c[g, SP2] += p * p
    c[g, SQ] += q
    c[g, SQ2] += q * q
    c[g, N_ARR] += 1.0


@jitable
def note_done(S, g, n_out):
    """Algorithm 1's moments: a request of replica g finished with ``n_out`` output tokens."""
    o = float(n_out)
    S.ctl[g, SO] += o
    S.ctl[g, SO2] += o * o
    S.ctl[g, N_DONE] += 1.0


@jitable
def observe_step(P, S, g):
    """At a tick of replica g: the step begun at the previous tick has ended; feed its batch
    size and length to Algorithm 2 if it decoded."""
    b = int(S.ctl[g, LAST_B])
    if b > 0 and P.ctl.sla_aware:
        sla_observe(S.sla, g, b, S.ctl[g, LAST_DUR])
    S.ctl[g, LAST_B] = 0.0


@jitable
def remember_step(S, g, n, decoded, dur):
    """The step just scheduled on replica g: ``n`` requests, ``decoded`` of them decoding."""
    S.ctl[g, LAST_B] = float(n) if decoded > 0 else 0.0
    S.ctl[g, LAST_DUR] = dur


@jitable
def running_cap(P, Q, R, S, g):
    """b* for replica g's next admission pass, at most ``max_num_seqs``."""
    p = P.ctl
    n_decode = 0
    for k in range(S.si[g, RUN_LEN]):
        i = S.run[g, k]
        if R.ri[i, COMPUTED] >= Q.qi[i, PROMPT]:
            n_decode += 1
    b = p.b_max
    if p.memory_aware:
        c = S.ctl
        mu, sigma = token_moments(int(c[g, N_ARR]), c[g, SP], c[g, SP2], c[g, SQ], c[g, SQ2],
                                  int(c[g, N_DONE]), c[g, SO], c[g, SO2])
        b_mem = memory_batch_limit(mu, sigma, p.eta, p.theta)
        b = min(b, max(b_mem, n_decode))
    if p.sla_aware:
        b = min(b, sla_limit(S.sla, g, p, n_decode))
    return min(b, P.max_seqs)
