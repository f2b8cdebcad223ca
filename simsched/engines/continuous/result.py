"""What a continuous-engine run returns: per-request columns, a time series, optional steps,
the loop's counters, and the checks every run passes (docs/continuous_invariants.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsched.workloads.requests import RequestTable, check_request_counts

COMPLETED, REJECTED, UNFINISHED, NOT_ARRIVED = 0, 1, 2, 3
STATUS_NAMES = ("completed", "rejected", "unfinished", "not_arrived")
REASONS = ("", "exceeds_kv_capacity", "exceeds_max_model_len", "empty_prompt",
           "waiting_at_horizon", "running_at_horizon", "after_horizon")


@dataclass
class ContinuousResult:
    """Columnar results, in the workload's row order (times in seconds; NaN where undefined).

    ``first_scheduled``: the tick of first admission; ``first_token`` / ``finish``: when the
    first / last output token was emitted; ``itl_max``: the longest gap between consecutive
    tokens; ``output_emitted``: tokens emitted (the whole output when completed);
    ``prefix_hit_tokens``: cached tokens found at first admission (-1 if never admitted).
    """

    requests: RequestTable
    status: np.ndarray            # int8, index into STATUS_NAMES
    reason: np.ndarray            # int8, index into REASONS
    replica: np.ndarray           # int32
    first_scheduled: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    itl_max: np.ndarray
    output_emitted: np.ndarray    # int64
    preemptions: np.ndarray       # int64
    prefix_hit_tokens: np.ndarray  # int64
    timeseries: dict[str, np.ndarray]
    steps: dict[str, np.ndarray] | None
    itl_hist: np.ndarray          # pooled inter-token gaps (see state.ITL_*)
    itl_sum: float
    itl_count: float
    counters: dict[str, int]
    num_replicas: int
    num_gpu_blocks: int
    end_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    pool_names: tuple[str, ...] = ()           # gpus.pools (empty: one homogeneous pool)
    pool_of_replica: np.ndarray | None = None  # int32, pool index of each replica

    @property
    def pool(self) -> np.ndarray:
        """Pool index of each request's replica (-1: never routed)."""
        if self.pool_of_replica is None:
            return np.where(self.replica >= 0, 0, -1).astype(np.int32)
        return np.where(self.replica >= 0, self.pool_of_replica[np.maximum(self.replica, 0)], -1).astype(np.int32)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return {name: int(c[i]) for i, name in enumerate(STATUS_NAMES)}

    @property
    def ttft(self) -> np.ndarray:
        return self.first_token - self.requests.arrival

    @property
    def e2e(self) -> np.ndarray:
        return self.finish - self.requests.arrival

    @property
    def tpot(self) -> np.ndarray:
        """(E2E − TTFT) / (output − 1), vLLM's benchmark definition (NaN for one-token outputs)."""
        n = self.output_emitted.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 1, (self.finish - self.first_token) / (n - 1), np.nan)


def check_invariants(res: ContinuousResult, produced: np.ndarray) -> None:
    """Request conservation, causality and completeness of every completed request (I1, I4,
    I5 of docs/continuous_invariants.md): a completed request emitted ``produced`` tokens (its
    output, or fewer where ``max_model_len`` stops it). A failure is a simulator bug, never
    user error."""
    check_request_counts(res.counts(), len(res.requests))
    if np.any(res.reason[res.status == REJECTED] == 0) or np.any(res.reason[res.status == UNFINISHED] == 0):
        raise AssertionError("a rejected or unfinished request has no reason")
    done = res.status == COMPLETED
    a = res.requests.arrival[done]
    if np.any(res.output_emitted[done] != produced[done]):
        raise AssertionError("a completed request did not emit its whole output")
    if np.any(res.first_scheduled[done] < a) or np.any(res.first_token[done] < res.first_scheduled[done]) \
            or np.any(res.finish[done] < res.first_token[done]):
        raise AssertionError("causality violated: arrival <= first scheduled <= first token <= finish")
