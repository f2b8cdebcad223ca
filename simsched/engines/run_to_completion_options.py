"""The run-to-completion engine's settings (``engine=run_to_completion``, the default)."""
from __future__ import annotations

from dataclasses import dataclass

from simsched.errors import check_choice, check_positive

RELEASES = ("batch_end", "own_length")


@dataclass(frozen=True)
class RunToCompletionEngine:
    """Request-level batches that hold their GPU until their longest member finishes.
    ``horizon_s`` stops the clock (null: serve every request); ``release: own_length``
    completes each request at its own last token instead of at batch end."""

    name: str = "run_to_completion"
    horizon_s: float | None = None
    release: str = "batch_end"

    def __post_init__(self) -> None:
        if self.horizon_s is not None:
            check_positive("horizon_s", self.horizon_s)
        check_choice("release", self.release, RELEASES)
