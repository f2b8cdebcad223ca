"""Synthetic workloads: an arrival process plus prompt and output length distributions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.errors import check_positive
from simsched.workloads.requests import RequestTable


@dataclass(frozen=True)
class SyntheticWorkload:
    """``num_requests`` requests; arrivals and lengths drawn from independent RNG streams.
    ``seed`` pins the workload independently of the run's seed (null: derived from it)."""

    arrivals: Any
    prompt: Any
    output: Any
    num_requests: int = 5000
    name: str = "synthetic"
    seed: int | None = None

    def __post_init__(self) -> None:
        check_positive("num_requests", self.num_requests, integer=True)

    @property
    def mean_rate(self) -> float:
        """Nominal arrival rate of the process (requests per second)."""
        return float(self.arrivals.mean_rate)

    def generate(self, rng: np.random.Generator) -> RequestTable:
        a_rng, p_rng, o_rng = rng.spawn(3)
        n = int(self.num_requests)
        return RequestTable(
            arrival=self.arrivals.sample(n, a_rng),
            prompt=self.prompt.sample(n, p_rng),
            output=self.output.sample(n, o_rng),
        )
