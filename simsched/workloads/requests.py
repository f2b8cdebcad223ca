"""The columnar request table: one numpy array per attribute, one row per request."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsched.errors import SimschedError


@dataclass
class RequestTable:
    """Requests in arrival order. Arrival times are seconds, non-decreasing; ties keep row order."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # counts a workload reports (e.g. rows dropped)

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

    def __len__(self) -> int:
        return len(self.arrival)
