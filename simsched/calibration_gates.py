"""Quality gates for calibration data (issues 14 item 6 and 17 item 2): is this a measurement of
the GPU, good enough to fit, or noise that a fit would dress up as a model?

A measurement passes when
- ``trials``: every point has at least ``min_trials`` trials;
- ``spread``: the trials agree: the relative standard deviation across trials (std / mean) is
  at most ``max_spread`` at all but ``max_spread_share`` of the points;
- ``monotone_<dim>``: latency never falls when the work grows along a dimension (batch size,
  output or prompt length, context) by more than the noise: a pair (t1 at the smaller value, t2
  at the larger) fails when t2 < t1 − max(noise_sigmas·√(s1² + s2²), min_tolerance·t1);
- ``grows_with_work``: the largest shape takes longer than the smallest by more than that noise
  (a constant-latency table is not a latency model);
- ``floor`` (only when the GPU and the model are known): measured decode steps are neither
  below the pure roofline floor (weights and KV read once at the datasheet bandwidth: faster
  than physics means mislabelled data) nor, in the median, more than ``max_floor_ratio`` times
  it (a host-bound measurement).

Works on a REFERENCE §4 grid (``grid_gates``) and on per-shape step summaries
(``step_gates``, columns from ``step_fit.shape_table``). Pure numpy/pandas.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simsched.errors import check_positive
from simsched.latency import StepTime


@dataclass(frozen=True)
class GateSpec:
    """The thresholds; defaults follow issue 17 (trial spread above ~10% is flagged)."""

    min_trials: int = 5
    max_spread: float = 0.10
    max_spread_share: float = 0.05
    noise_sigmas: float = 2.0
    min_tolerance: float = 0.02
    max_floor_ratio: float = 10.0

    def __post_init__(self) -> None:
        check_positive("min_trials", self.min_trials, integer=True)
        for key in ("max_spread", "noise_sigmas", "max_floor_ratio"):
            check_positive(key, getattr(self, key))
        for key in ("max_spread_share", "min_tolerance"):
            check_positive(key, getattr(self, key), allow_zero=True)


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class GateReport:
    """Every gate's verdict, plus informational figures that are not gates."""

    gates: tuple[Gate, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failures(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def summary(self) -> str:
        """One line: the failing gates' details, or that all passed."""
        if self.passed:
            return "passes all gates: " + ", ".join(g.name for g in self.gates)
        return "; ".join(f"{g.name}: {g.detail}" for g in self.failures)

    def lines(self) -> list[str]:
        return [f"{'PASS' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in self.gates]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "gates": [asdict(g) for g in self.gates], "info": dict(self.info)}


def _tolerance(t1: Any, t2: Any, s1: Any, s2: Any, spec: GateSpec) -> Any:
    return np.maximum(spec.noise_sigmas * np.sqrt(s1**2 + s2**2), spec.min_tolerance * np.maximum(t1, t2))


def _trials_gate(n: np.ndarray, spec: GateSpec) -> Gate:
    low = int(np.min(n))
    return Gate("trials", low >= spec.min_trials,
                f"fewest trials at a point {low} (need >= {spec.min_trials})", low, spec.min_trials)


def _spread_gate(spread: np.ndarray, spec: GateSpec) -> Gate:
    over = int(np.sum(spread > spec.max_spread))
    share = over / len(spread)
    detail = (f"trial spread (std/mean) median {np.median(spread):.1%}, max {np.max(spread):.1%}; "
              f"{over} of {len(spread)} points over {spec.max_spread:.0%} (allowed {spec.max_spread_share:.0%})")
    return Gate("spread", share <= spec.max_spread_share, detail, float(np.median(spread)), spec.max_spread)


def _pairs(points: Any, along: str, within: list[str]) -> tuple[np.ndarray, ...]:
    """Adjacent pairs along ``along`` inside each group of ``within``: (t1, t2, s1, s2)."""
    out: list[list[float]] = [[], [], [], []]
    groups = points.groupby(within, sort=True) if within else [(None, points)]
    for _, g in groups:
        g = g.sort_values(along)
        if g[along].nunique() != len(g):
            g = g.groupby(along, as_index=False).agg(t=("t", "mean"), s=("s", "max"))
        t, s = g["t"].to_numpy(float), g["s"].to_numpy(float)
        for lst, arr in zip(out, (t[:-1], t[1:], s[:-1], s[1:])):
            lst.extend(arr.tolist())
    return tuple(np.asarray(x, float) for x in out)


def _monotone_gate(points: Any, along: str, within: list[str], label: str, spec: GateSpec) -> Gate | None:
    t1, t2, s1, s2 = _pairs(points, along, within)
    if len(t1) == 0:
        return None
    raw = int(np.sum(t2 < t1))
    beyond = t2 < t1 - _tolerance(t1, t2, s1, s2, spec)
    worst = float(np.max(np.where(beyond, (t1 - t2) / t1, 0.0)))
    detail = (f"{int(beyond.sum())} of {len(t1)} adjacent pairs get faster with larger {label} beyond the noise "
              f"({raw} faster at all"
              + (f"; worst {worst:.0%} faster)" if beyond.any() else ")"))
    return Gate(f"monotone_{along}", not beyond.any(), detail, int(beyond.sum()), 0)


def _grows_gate(small: Any, large: Any, what: str, spec: GateSpec, labels: list[str]) -> Gate:
    t1, t2 = small["t"].to_numpy(float), large["t"].to_numpy(float)
    s1, s2 = small["s"].to_numpy(float), large["s"].to_numpy(float)
    flat = t2 <= t1 + _tolerance(t1, t2, s1, s2, spec)
    flagged = [label for label, f in zip(labels, flat) if f]
    named = ", ".join(flagged[:4]) + (f", ... {len(flagged) - 4} more" if len(flagged) > 4 else "")
    detail = (f"{int(flat.sum())} of {len(t1)} {what} do not take longer with the most work than with the least "
              f"beyond the noise ({named})" if flat.any() else f"all {len(t1)} {what} take longer with more work")
    return Gate("grows_with_work", not flat.any(), detail, int(flat.sum()), 0)


def _floor_gate(ratio: np.ndarray, spec: GateSpec, where: str) -> Gate:
    low, mid = float(np.min(ratio)), float(np.median(ratio))
    ok = low >= 0.95 and mid <= spec.max_floor_ratio
    detail = (f"{where} {mid:.1f}x the pure roofline floor in the median (range {low:.2f}-{np.max(ratio):.1f}x; "
              f"allowed 0.95-{spec.max_floor_ratio:g}x)")
    return Gate("floor", ok, detail, mid, spec.max_floor_ratio)


def grid_gates(grid: Any, spec: GateSpec | None = None, floor: StepTime | None = None) -> GateReport:
    """Gates for a REFERENCE §4 grid (``mean_latency_s``, ``std_latency_s``, ``num_trials`` per
    batch size × prompt length × output length)."""
    import pandas as pd

    spec = spec or GateSpec()
    pts = pd.DataFrame({"batch_size": grid["batch_size"], "prompt_len": grid["prompt_len"],
                        "output_len": grid["output_len"], "t": grid["mean_latency_s"].astype(float),
                        "s": grid["std_latency_s"].astype(float), "n": grid["num_trials"]})
    gates = [_trials_gate(pts["n"].to_numpy(), spec), _spread_gate((pts["s"] / pts["t"]).to_numpy(), spec)]
    for along, within, label in (("batch_size", ["prompt_len", "output_len"], "batch size"),
                                 ("output_len", ["batch_size", "prompt_len"], "output length"),
                                 ("prompt_len", ["batch_size", "output_len"], "prompt length")):
        gate = _monotone_gate(pts, along, within, label, spec)
        if gate is not None:
            gates.append(gate)
    by_shape = pts.groupby(["batch_size", "prompt_len"])
    lo = pts.loc[by_shape["output_len"].idxmin()].reset_index(drop=True)
    hi = pts.loc[by_shape["output_len"].idxmax()].reset_index(drop=True)
    keep = (hi["output_len"] > lo["output_len"]).to_numpy()
    info: dict[str, Any] = {"points": len(pts)}
    if keep.any():
        labels = [f"b={b} p={p}" for b, p in zip(lo["batch_size"][keep], lo["prompt_len"][keep])]
        gates.append(_grows_gate(lo[keep], hi[keep], "(batch, prompt) shapes", spec, labels))
        # Mean decode step between the shortest and longest output, against the floor.
        lo, hi = lo[keep], hi[keep]
        step = (hi["t"].to_numpy() - lo["t"].to_numpy()) / (hi["output_len"].to_numpy() - lo["output_len"].to_numpy())
        info["decode_step_s_median"] = float(np.median(step))
        if floor is not None:
            b = hi["batch_size"].to_numpy(float)
            ctx = hi["prompt_len"].to_numpy(float) + (hi["output_len"].to_numpy() + lo["output_len"].to_numpy()) / 2
            ratio = np.clip(step, 1e-12, None) / floor.step_time(0.0, b, b * ctx)
            gates.append(_floor_gate(ratio, spec, "mean decode steps are"))
            info["floor_step_s_b1"] = float(floor.step_time(0.0, 1.0, float(np.min(ctx))))
    return GateReport(tuple(gates), info)


def step_gates(shapes: Any, spec: GateSpec | None = None, floor: StepTime | None = None) -> GateReport:
    """Gates for per-shape step summaries (``phase``, ``batch_size``, ``new_tokens``,
    ``context_len``, ``median_s``, ``trial_std_s``, ``trial_spread``, ``n_trials``)."""
    spec = spec or GateSpec()
    pts = shapes.assign(t=shapes["median_s"].astype(float), s=shapes["trial_std_s"].astype(float),
                        start=shapes["context_len"] - shapes["new_tokens"])
    gates = [_trials_gate(pts["n_trials"].to_numpy(), spec), _spread_gate(pts["trial_spread"].to_numpy(float), spec)]
    dec, pre = pts[pts["phase"] == "decode"], pts[pts["phase"] == "prefill"]
    checks = []
    if len(dec):
        checks += [(dec, "batch_size", ["context_len"], "decode batch size"),
                   (dec, "context_len", ["batch_size"], "decode context")]
    if len(pre):
        checks += [(pre, "batch_size", ["new_tokens", "start"], "prefill batch size"),
                   (pre, "new_tokens", ["batch_size", "start"], "prefill length")]
    for points, along, within, label in checks:
        gate = _monotone_gate(points, along, within, label, spec)
        if gate is not None:
            gates.append(Gate(f"{gate.name}_{points['phase'].iloc[0]}", gate.passed, gate.detail, gate.value, 0))
    work = pts["batch_size"] * pts["context_len"]
    small = pts.loc[work.groupby(pts["phase"]).idxmin()]
    large = pts.loc[work.groupby(pts["phase"]).idxmax()]
    gates.append(_grows_gate(small.reset_index(drop=True), large.reset_index(drop=True), "phases", spec,
                             small["phase"].tolist()))
    info: dict[str, Any] = {"shapes": len(pts)}
    if floor is not None and len(dec):
        b = dec["batch_size"].to_numpy(float)
        ratio = dec["t"].to_numpy(float) / floor.step_time(0.0, b, b * dec["context_len"].to_numpy(float))
        gates.append(_floor_gate(ratio, spec, "decode steps are"))
    return GateReport(tuple(gates), info)
