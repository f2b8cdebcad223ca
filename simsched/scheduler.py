"""A scheduler = a queue policy (one FIFO, or K bins on predicted output length) + a batcher.

The presets in conf/scheduler only compose these two; ``k_bins: 1`` is the single FIFO, so
``multi_bin_dynamic`` with one bin is ``dynamic_no_bins`` by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.errors import ConfigError, check_choice, check_positive, check_range
from simsched.jit import jitable

BIN_SELECTIONS = ("round_robin", "longest_queue", "oldest_first")
ROUND_ROBIN, LONGEST_QUEUE, OLDEST_FIRST = 0, 1, 2   # index in BIN_SELECTIONS
# The engine does O(K) work per batch and keeps eight arrays per bin.
MAX_BINS = 4096


@dataclass(frozen=True)
class Scheduler:
    """``boundaries`` are the K−1 interior cut points on predicted output length (from a config
    or a separate trace). When null, the cut points are learnt causally from the warm-up: a
    request is binned by the equal-mass quantiles F^-1(i/K) of the predictions of the requests
    that arrived before it (itself included), refitted when that count reaches 1, 2, 4, …, and
    frozen at the quantiles of the first ``warmup_requests`` predictions. No request is ever
    binned by predictions of requests that have not arrived yet.
    Bin i holds predictions in [cut_{i−1}, cut_i); the first and last bins are open-ended."""

    batcher: Any
    name: str = "scheduler"
    k_bins: int = 1
    bin_selection: str = "round_robin"
    boundaries: list[float] | None = None
    warmup_requests: int = 1000

    def __post_init__(self) -> None:
        check_positive("k_bins", self.k_bins, integer=True)
        check_range("k_bins", self.k_bins, 1, MAX_BINS, "the engine does O(K) work per batch")
        check_choice("bin_selection", self.bin_selection, BIN_SELECTIONS)
        check_positive("warmup_requests", self.warmup_requests, integer=True)
        if self.boundaries is not None:
            cuts = list(self.boundaries)
            if len(cuts) != self.k_bins - 1:
                raise ConfigError("boundaries", f"needs k_bins - 1 = {self.k_bins - 1} cut points", cuts)
            if any(b >= a for b, a in zip(cuts, cuts[1:])) or any(not np.isfinite(c) for c in cuts):
                raise ConfigError("boundaries", "cut points must be finite and strictly increasing", cuts)

    def cut_points(self, predicted: np.ndarray) -> np.ndarray:
        """Interior bin boundaries (length K−1) in force once the warm-up is over."""
        k = int(self.k_bins)
        if self.boundaries is not None:
            return np.asarray(self.boundaries, dtype=float)
        if k == 1:
            return np.empty(0)
        return _equal_mass(predicted[: int(self.warmup_requests)], k)

    def assign_bins(self, predicted: np.ndarray, cuts: np.ndarray) -> np.ndarray:
        """Bin index per request (rows in arrival order): bin i holds cuts[i−1] <= predicted <
        cuts[i]. With learnt boundaries, the warm-up rows use the cut points known at their
        arrival (``warmup_schedule``) and the rest use ``cuts``."""
        bins = np.searchsorted(cuts, predicted, side="right").astype(np.int32)
        if self.boundaries is None and int(self.k_bins) > 1:
            for lo, hi, early in warmup_schedule(predicted, int(self.k_bins), int(self.warmup_requests)):
                bins[lo:hi] = np.searchsorted(early, predicted[lo:hi], side="right")
        return bins

    @property
    def selection_rule(self) -> int:
        """``bin_selection`` as the number ``choose_bin`` reads."""
        return BIN_SELECTIONS.index(self.bin_selection)



def _equal_mass(sample: np.ndarray, k: int) -> np.ndarray:
    if len(sample) == 0:
        return np.zeros(k - 1)
    return np.quantile(sample.astype(float), np.arange(1, k) / k)


def warmup_schedule(predicted: np.ndarray, k: int, warmup: int) -> list[tuple[int, int, np.ndarray]]:
    """The causal warm-up: (first row, end row, cut points) blocks. Rows [m−1, 2m−1) are binned
    by the quantiles of the first m predictions (m = 1, 2, 4, …), which arrived no later than
    row m−1 itself; from row ``warmup``−1 on the final cut points apply (not listed here).
    Refitting at doubling counts costs log2(warmup) quantile calls per run."""
    blocks = []
    n = min(len(predicted), warmup - 1)
    m = 1
    while m - 1 < n:
        hi = min(2 * m - 1, n)
        blocks.append((m - 1, hi, _equal_mass(predicted[:m], k)))
        m *= 2
    return blocks


@jitable
def choose_bin(rule: int, waiting: np.ndarray, head_arrival: np.ndarray, need: int, rr: int) -> int:
    """The bin to serve next, or -1 when no bin holds ``need`` waiting requests.

    ``round_robin``: the first such bin from ``rr`` on (the engine sets rr to the bin after the
    last one served); ``longest_queue``: the most waiting requests; ``oldest_first``: the
    earliest-arrived head of queue (``head_arrival``). Ties go to the lowest bin index."""
    k_bins = len(waiting)
    if rule == ROUND_ROBIN:
        for j in range(k_bins):
            k = (rr + j) % k_bins
            if waiting[k] >= need:
                return k
        return -1
    best, best_key = -1, 0.0
    for k in range(k_bins):
        if waiting[k] >= need:
            key = -float(waiting[k]) if rule == LONGEST_QUEUE else float(head_arrival[k])
            if best < 0 or key < best_key:
                best, best_key = k, key
    return best


@dataclass(frozen=True)
class VllmScheduler:
    """``scheduler=vllm``: vLLM's own scheduler, which only ``engine=continuous`` runs. Its
    waiting-queue policy (fcfs | priority) and limits are the ``engine.*`` settings."""

    name: str = "vllm"
