"""Synthetic workloads: an arrival process plus prompt and output length distributions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.errors import ConfigError, check_positive
from simsched.workloads.requests import MAX_ARRIVAL_S, RequestTable, check_memory


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
        check_memory("num_requests", self.num_requests)
        if self.seed is not None:
            check_positive("seed", self.seed, integer=True, allow_zero=True)
        rate = getattr(self.arrivals, "mean_rate", None)
        if rate is not None:
            span = float(self.num_requests) / float(rate) if rate > 0 else float("inf")
            if not span <= MAX_ARRIVAL_S:
                raise ConfigError("arrivals", f"{self.num_requests} requests at a mean rate of {float(rate):.3g} "
                                              f"req/s span ~{span:.3g} s, more than {MAX_ARRIVAL_S:g} s (the clock "
                                              f"would lose sub-microsecond precision); raise the rate or lower "
                                              f"num_requests")
        check_count = getattr(self.arrivals, "check_count", None)
        if check_count is not None:
            try:
                check_count(int(self.num_requests))
            except ConfigError as exc:
                raise exc.under("arrivals") from None

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
