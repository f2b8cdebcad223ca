"""Shared helpers for the continuous-engine tests: the random workloads and engine settings of
validation check 7 (tiny pools that force preemption, chunking, thresholds, priorities, shared
prefixes) and a per-request comparison of two results."""
from __future__ import annotations

from simsched.validate.continuous import STEP, differences, random_case

__all__ = ["STEP", "differences", "random_case"]
