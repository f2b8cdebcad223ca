"""The GPU pool: G identical GPUs, each with a KV cache of ``kv_capacity_tokens`` tokens.
``memory_gib`` (the device memory) picks vLLM's batch defaults on ``engine=continuous``."""
from __future__ import annotations

from dataclasses import dataclass

from simsched.errors import check_positive, check_range

# The engine keeps per-GPU state in Python lists: a million GPUs is already far past any cluster.
MAX_GPUS = 1_000_000


@dataclass(frozen=True)
class Gpus:
    count: int = 2
    kv_capacity_tokens: int = 120_000
    name: str = "H100-80GB"
    memory_gib: float | None = None

    def __post_init__(self) -> None:
        check_positive("count", self.count, integer=True)
        check_range("count", self.count, 1, MAX_GPUS, "the engine's per-GPU state is Python lists")
        check_positive("kv_capacity_tokens", self.kv_capacity_tokens, integer=True)
        if self.memory_gib is not None:
            check_positive("memory_gib", self.memory_gib)
