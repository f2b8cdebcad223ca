"""The columnar request table: one numpy array per attribute, one row per request."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsched.errors import ConfigError, SimschedError

# Bounds that keep every sum the engine forms exact in int64 and float64: a request of at most
# MAX_TOKENS prompt or output tokens (no model has a context near a billion tokens; a token
# count near 2**63 would wrap to a negative KV size), and arrivals within MAX_ARRIVAL_S seconds
# (31.7 years), where a float64 clock still resolves 0.12 microseconds.
MAX_TOKENS = 1_000_000_000
MAX_ARRIVAL_S = 1e9
# Peak memory per simulated request (request table, engine state, results and Parquet
# output), for refusing runs larger than the machine: 224 B was measured between 1M and 10M
# requests on the run-to-completion engine before its memory work (now ~70 B at the margin; README
# "Speed"); the continuous engine's margin is not measured (527 MB at 1M requests, start-up
# included). One figure for both, kept at the old, larger one.
BYTES_PER_REQUEST = 250


@dataclass
class RequestTable:
    """Requests in arrival order. Arrival times are seconds, non-decreasing; ties keep row order.

    Optional columns for the continuous engine: ``priority`` (vLLM's request priority, smaller
    first; zeros when absent) and the prompt's content as block hash ids (the Mooncake trace
    format): request i's ids are ``hash_values[hash_offsets[i]:hash_offsets[i+1]]``, one per
    ``hash_block_tokens`` prompt tokens; equal ids mean equal content (prefix caching).
    """

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # counts a workload reports (e.g. rows dropped)
    priority: np.ndarray | None = None
    hash_offsets: np.ndarray | None = None
    hash_values: np.ndarray | None = None
    hash_block_tokens: int | None = None

    def __post_init__(self) -> None:
        self.arrival = np.ascontiguousarray(self.arrival, dtype=np.float64)
        self.prompt = np.ascontiguousarray(self.prompt, dtype=np.int64)
        self.output = np.ascontiguousarray(self.output, dtype=np.int64)
        n = len(self.arrival)
        if len(self.prompt) != n or len(self.output) != n:
            raise SimschedError("request table columns have different lengths")
        if n and not np.all(np.isfinite(self.arrival)):
            raise SimschedError("request arrival times must be finite")
        if n and self.arrival[-1] - self.arrival[0] > MAX_ARRIVAL_S:
            raise SimschedError(f"requests arrive over {self.arrival[-1] - self.arrival[0]:.3g} s, more than "
                                f"{MAX_ARRIVAL_S:g} s (the clock would lose sub-microsecond precision)")
        if n > 1 and np.any(np.diff(self.arrival) < 0):
            raise SimschedError("request arrival times must be sorted (non-decreasing)")
        if np.any(self.output < 1):
            raise SimschedError("every request needs at least one output token")
        if np.any(self.prompt < 0):
            raise SimschedError("prompt lengths must be >= 0")
        if self.priority is not None:
            self.priority = np.ascontiguousarray(self.priority, dtype=np.int64)
            if len(self.priority) != n:
                raise SimschedError("request table columns have different lengths")
        if (self.hash_offsets is None) != (self.hash_values is None):
            raise SimschedError("hash ids need both offsets and values")
        if self.hash_offsets is not None:
            self.hash_offsets = np.ascontiguousarray(self.hash_offsets, dtype=np.int64)
            self.hash_values = np.ascontiguousarray(self.hash_values, dtype=np.int64)
            if len(self.hash_offsets) != n + 1 or self.hash_offsets[-1] != len(self.hash_values):
                raise SimschedError("hash id offsets do not match the requests")
        if n and max(int(self.prompt.max()), int(self.output.max())) > MAX_TOKENS:
            raise SimschedError(f"a request has more than {MAX_TOKENS:,} prompt or output tokens")

    def __len__(self) -> int:
        return len(self.arrival)



def check_request_counts(counts: dict[str, int], n: int) -> None:
    """Request conservation, shared by both engines: every one of the ``n`` requests has one
    outcome, and every arrived one is completed, rejected or unfinished. A failure is a
    simulator bug, never user error."""
    if sum(counts.values()) != n:
        raise AssertionError(f"conservation violated: {counts} does not sum to {n}")
    arrived = n - counts["not_arrived"]
    if counts["completed"] + counts["rejected"] + counts["unfinished"] != arrived:
        raise AssertionError(f"conservation violated: arrived={arrived}, {counts}")

def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(key: str, n: int, available: int | None = None) -> None:
    """Refuse ``n`` requests that cannot fit in memory before allocating anything: an estimate
    of ``BYTES_PER_REQUEST`` each against the machine's physical memory (or ``available``)."""
    available = physical_memory() if available is None else available
    need = int(n) * BYTES_PER_REQUEST
    if available is not None and need > available:
        raise ConfigError(key, f"needs about {_bytes(need)} of memory ({BYTES_PER_REQUEST} B per request), "
                               f"more than this machine's {_bytes(available)}", n)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"
