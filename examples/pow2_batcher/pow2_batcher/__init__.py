"""A batcher that rounds each batch down to a power of two (1, 2, 4, ..., b_max), as serving
engines that capture CUDA graphs for a few batch sizes do; an example of a simsched plug-in."""
from __future__ import annotations

from dataclasses import dataclass

from simsched.errors import check_positive


@dataclass(frozen=True)
class PowerOfTwoBatcher:
    """The spec a config builds (frozen: no state shared between runs)."""

    b_max: int = 64

    def __post_init__(self) -> None:
        check_positive("b_max", self.b_max, integer=True)   # an error names scheduler.batcher.b_max

    @property
    def max_batch(self) -> int:
        return int(self.b_max)

    def controller(self, kv_capacity_tokens: int) -> "PowerOfTwoController":
        """The per-queue state of one simulation."""
        return PowerOfTwoController(int(self.b_max))


class PowerOfTwoController:
    needs_memory = False   # size() is called without the queue's token statistics
    min_batch = 1          # dispatch as soon as one request waits

    def __init__(self, b_max: int):
        self.b_max = b_max

    def size(self, waiting: int, mu: float = 0.0, sigma: float = 0.0) -> int:
        b = min(waiting, self.b_max)
        return 1 << (b.bit_length() - 1)

    def observe(self, b: int, tbt: float) -> None:
        """No feedback: the size depends on the queue length only."""
