"""Replicated estimates and the verdict rule shared by every check.

A simulated value is the mean over R replications (different seeds) with a Student-t 95%
confidence interval. A row PASSes when the expected value lies within the interval widened by
a stated model tolerance (finite-run and discretisation effects the theory ignores), and the
interval is narrow enough to mean something: a wide interval is a FAIL, never a free pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t confidence interval); half-width NaN for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, half


@dataclass
class Row:
    """One compared quantity at one point of a check.

    ``expected`` None makes the row informational (shown, not judged). ``tol_rel`` is the
    model tolerance relative to the expected value; ``max_half_rel`` bounds the CI half-width.
    ``extra`` holds further columns (e.g. a paper's figure) shown beside the comparison.
    """

    point: str
    quantity: str
    expected: float | None
    values: list[float]
    tol_rel: float = 0.01
    max_half_rel: float | None = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return mean_ci(self.values)[0]

    @property
    def half(self) -> float:
        return mean_ci(self.values)[1]

    @property
    def rel_diff(self) -> float:
        if self.expected is None or self.expected == 0:
            return math.nan
        return self.mean / self.expected - 1.0

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or info (nothing to judge against)."""
        if self.expected is None:
            return "info"
        m, h = mean_ci(self.values)
        if not math.isfinite(m):
            return "FAIL"
        h = 0.0 if not math.isfinite(h) else h
        scale = abs(self.expected)
        if self.max_half_rel is not None and h > self.max_half_rel * scale:
            return "FAIL"
        return "PASS" if abs(m - self.expected) <= h + self.tol_rel * scale else "FAIL"


@dataclass
class CheckResult:
    """Everything the report shows for one check."""

    key: str
    title: str
    setup: str
    rows: list[Row]
    conditions: list[tuple[str, bool]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    discussion: str = ""
    tables: list[tuple[str, str]] = field(default_factory=list)   # (heading, markdown table)
    show_rows: bool = True          # False where ``tables`` already show the rows better
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.verdict != "FAIL" for r in self.rows) and all(ok for _, ok in self.conditions)

    @property
    def judged(self) -> int:
        return sum(r.verdict != "info" for r in self.rows) + len(self.conditions)

    @property
    def failures(self) -> int:
        return sum(r.verdict == "FAIL" for r in self.rows) + sum(not ok for _, ok in self.conditions)


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a table: significant digits, '—' where undefined."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"
