"""Fit a step-time model to the requests of a measured run that were served alone.

A request whose life [arrival, arrival + E2E] overlaps no other request's ran in steps of its
own, so its timings follow the step form directly (``simsched.latency.StepTime``, REFERENCE §9):

- TTFT = the prefill chunks of its uncached prompt tokens: for chunks of n_k tokens starting at
  position s_k (chunked by ``max_num_batched_tokens`` as vLLM does, after a prefix-cache hit
  of whole blocks that leaves the last prompt token to compute),
  Σ_k (c0 + c_pf·n_k + c_attn·(n_k·s_k + n_k²/2));
- E2E − TTFT = its L − 1 decode steps of one sequence whose context grows from prompt + 1:
  (L − 1)·(c0 + c_dec) + c_ctx·Σ_{j=1}^{L−1} (prompt + j).

Non-negative least squares on relative residuals (each equation divided by its measured value)
gives c0, c_pf, c_attn and c_ctx. Two things one request at a time cannot tell apart are fixed,
not fitted: the per-sequence decode cost ``c_dec`` (a decode step of one sequence costs
c0 + c_dec whatever the split; under batching the split decides how the step grows with the
batch, so it is given, default 0: on a GPU a decode step is mostly the fixed weight read, the
per-sequence compute being ~2·params FLOPs, e.g. 0.07 ms for 34B parameters on an H100), and
the host share (``cpu_s`` = 0: c0 takes all per-step time, host included). This calibrates the
step time only; queueing, batching and memory behaviour under load are left to the engine,
which is what a replay of the loaded part of the run then tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simsched.errors import SimschedError
from simsched.latency import StepTime
from simsched.workloads.measured import MeasuredRun

COEFFS = ("c0_s", "c_pf_s", "c_attn_s", "c_dec_s", "c_ctx_s")


@dataclass(frozen=True)
class IsolatedFit:
    """The fitted step time, which requests it used, and its in-sample relative errors."""

    step_time: StepTime
    used: np.ndarray                 # row indices (in the run) of the isolated requests
    ttft_mape: float                 # mean |relative error| of TTFT over them
    decode_mape: float               # mean |relative error| of E2E − TTFT (requests with L > 1)

    def coefficients(self) -> dict[str, float]:
        return {k: float(getattr(self.step_time, k)) for k in COEFFS}


def isolated(run: MeasuredRun) -> np.ndarray:
    """Indices of completed requests whose [arrival, arrival + E2E] overlaps no other request's.
    A failed request's end is unknown: one arriving inside a request's life spoils it."""
    start = run.arrival
    end = np.where(run.ok, run.arrival + np.nan_to_num(run.e2e, nan=0.0), run.arrival)
    out = []
    for i in np.flatnonzero(run.ok):
        others = np.arange(len(run)) != i
        overlap = others & (start <= end[i]) & (end >= start[i])
        if not overlap.any():
            out.append(i)
    return np.array(out, dtype=np.int64)


def cached_tokens(run: MeasuredRun, block_size: int) -> np.ndarray:
    """Prompt tokens served from the prefix cache, assuming a shared prefix stays cached once an
    earlier request of its group computed it: whole blocks of the shared part, at most prompt − 1
    tokens (vLLM always computes the last prompt token)."""
    hit = np.zeros(len(run), dtype=np.int64)
    if run.prefix_tokens is None:
        return hit
    seen: dict[int, int] = {}
    for i in range(len(run)):
        g, p = int(run.prefix_group[i]), int(run.prefix_tokens[i])
        if p > 0 and g in seen:
            shared = min(p, seen[g], int(run.prompt[i]) - 1)
            hit[i] = (shared // block_size) * block_size
        if p > 0 and run.ok[i]:
            seen[g] = max(seen.get(g, 0), p)
    return hit


def fit_isolated(run: MeasuredRun, *, block_size: int = 16, max_num_batched_tokens: int = 8192,
                 c_dec_s: float = 0.0, min_requests: int = 5) -> IsolatedFit:
    """Fit ``StepTime`` coefficients to the isolated requests of ``run`` (see the module text)."""
    from scipy.optimize import nnls

    used = isolated(run)
    if len(used) < min_requests:
        raise SimschedError(f"{run.path}: only {len(used)} request(s) were served alone; fitting a step time "
                            f"needs at least {min_requests}")
    hit = cached_tokens(run, block_size)
    rows, target, fixed = [], [], []
    for i in used:
        prompt, out = int(run.prompt[i]), int(run.output[i])
        todo, start, chunks, attn = prompt - int(hit[i]), int(hit[i]), 0, 0.0
        while todo > 0:
            n = min(todo, max_num_batched_tokens)
            attn += n * start + n * n / 2.0
            start, todo, chunks = start + n, todo - n, chunks + 1
        rows.append([chunks, prompt - hit[i], attn, 0.0])
        target.append(run.ttft[i])
        fixed.append(0.0)
        if out > 1:
            steps = out - 1
            rows.append([steps, 0.0, 0.0, steps * prompt + steps * out / 2.0])
            target.append(run.e2e[i] - run.ttft[i])
            fixed.append(steps * c_dec_s)
    a, b, c = (np.array(v, dtype=float) for v in (rows, target, fixed))
    if np.any(b <= 0):
        raise SimschedError(f"{run.path}: an isolated request has a zero TTFT or decode time; cannot fit")
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(a / b[:, None] / scale, 1.0 - c / b)
    x = x / scale
    pred = a @ x + c
    is_ttft = a[:, 1] > 0
    rel = np.abs(pred / b - 1.0)
    step = StepTime(c0_s=x[0], c_pf_s=x[1], c_attn_s=x[2], c_dec_s=c_dec_s, c_ctx_s=x[3], cpu_s=0.0,
                    name="isolated_fit", source=f"fitted to {len(used)} isolated requests of {run.path}")
    return IsolatedFit(step, used, float(rel[is_ttft].mean()),
                       float(rel[~is_ttft].mean()) if (~is_ttft).any() else float("nan"))
