"""The columnar request table: one numpy array per attribute, one row per request."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsched.errors import SimschedError


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

    def __len__(self) -> int:
        return len(self.arrival)
