"""Trace replay workloads: the requests of a real trace, filtered, windowed and rate-scaled.

Replay is deterministic (the run's RNG is not used). Arrival times are the file's timestamps
relative to the first selected request, divided by the rate scale; rows with equal timestamps
keep their file order. Failed requests (0 output tokens) cannot be simulated, since every
request needs at least one output token: they are dropped and counted by default, and with
``drop_failures=false`` the first one is reported as an error naming its line.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from simsched.errors import ConfigError, InputError, check_positive
from simsched.workloads.requests import MAX_ARRIVAL_S, RequestTable
from simsched.workloads.trace_files import AZURE, BURSTGPT, CANONICAL, TraceSchema, load_trace, match_schema

DEFAULT_CACHE_DIR = ".cache/simsched/traces"


def check_replay_options(opts: Any) -> None:
    """The options every trace replay shares (path, rate scaling, time window, request cap),
    checked for ``TraceReplay`` and ``MooncakeTrace`` alike; a ConfigError names the field."""
    if not isinstance(opts.path, str) or not opts.path:
        raise ConfigError("path", "a trace file path is required", opts.path)
    check_positive("rps_scale", opts.rps_scale)
    check_positive("order_tolerance_s", opts.order_tolerance_s, allow_zero=True)
    if opts.target_rate is not None:
        check_positive("target_rate", opts.target_rate)
        if opts.rps_scale != 1.0:
            raise ConfigError("target_rate", "give rps_scale or target_rate, not both", opts.target_rate)
    if opts.max_requests is not None:
        check_positive("max_requests", opts.max_requests, integer=True)
    for key in ("start_s", "end_s"):
        if getattr(opts, key) is not None:
            check_positive(key, getattr(opts, key), allow_zero=True)
    if opts.start_s is not None and opts.end_s is not None and opts.end_s <= opts.start_s:
        raise ConfigError("end_s", f"must be > start_s ({opts.start_s})", opts.end_s)



def replay_rate(arrival: np.ndarray, target_rate: float | None) -> float:
    """A replay's mean arrival rate, (n-1)/span after scaling, or ``target_rate`` when given."""
    if target_rate is not None:
        return float(target_rate)
    span = float(arrival[-1] - arrival[0]) if len(arrival) > 1 else 0.0
    return (len(arrival) - 1) / span if span > 0 else float("nan")


@dataclass(frozen=True)
class TraceReplay:
    """Options shared by every trace format.

    ``start_s``/``end_s`` select ``start_s <= t - t_first < end_s`` in trace seconds (before
    scaling), ``t_first`` being the earliest timestamp in the file; ``max_requests`` keeps the
    first N requests left after all filters. ``rps_scale`` divides the timestamps (2 = twice
    the rate); ``target_rate`` instead picks the scale that gives that mean rate, (n-1)/span.
    Timestamps may go back by up to ``order_tolerance_s`` (such rows are re-sorted, stably, and
    counted); a larger step back is an error. ``cache_dir`` holds the Parquet cache (null: none).
    """

    path: str
    name: str = "trace"
    drop_failures: bool = True
    start_s: float | None = None
    end_s: float | None = None
    max_requests: int | None = None
    rps_scale: float = 1.0
    target_rate: float | None = None
    order_tolerance_s: float = 1.0
    cache_dir: str | None = DEFAULT_CACHE_DIR

    schema = BURSTGPT  # class attribute (not a field): the file format a subclass reads

    def __post_init__(self) -> None:
        check_replay_options(self)
        match_schema(self.path, self.schema)  # fail fast (one line) on a missing file or wrong schema

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate of the replay, (n-1)/span, after scaling (requests per second)."""
        return replay_rate(self._replay.arrival, self.target_rate)

    def generate(self, rng: np.random.Generator | None = None) -> RequestTable:
        """The selected requests (``rng`` is unused: a replay is the same every time)."""
        r = self._replay
        return RequestTable(r.arrival.copy(), r.prompt.copy(), r.output.copy(), info=dict(r.info))

    @cached_property
    def _replay(self) -> RequestTable:
        return self.select()

    def _category_filters(self) -> dict[str, list[str] | None]:
        return {}

    def select(self) -> RequestTable:
        """Load the trace and apply the options; ``info`` carries the counts to report."""
        t_start = time.perf_counter()
        trace = load_trace(self.path, self.schema, self.cache_dir)
        df = trace.frame
        path, s = self.path, self.schema
        t = df["time"].to_numpy()
        line = df["line"].to_numpy()
        back = t - np.maximum.accumulate(t)
        too_far = np.flatnonzero(back < -self.order_tolerance_s)
        if too_far.size:
            i = too_far[0]
            raise InputError(path, f"timestamp goes back {-back[i]:.6g} s, more than order_tolerance_s="
                                   f"{self.order_tolerance_s:g}; sort the file or raise the tolerance",
                             int(line[i]), s.time)
        reordered = int(np.count_nonzero(back < 0))
        order = np.argsort(t, kind="stable") if reordered else np.arange(len(t))  # ties keep file order
        t = t[order]
        line = line[order]
        prompt = df["prompt"].to_numpy()[order]
        output = df["output"].to_numpy()[order]

        keep = np.ones(len(t), dtype=bool)
        for canon, wanted in self._category_filters().items():
            if not wanted:
                continue
            found = sorted(str(v) for v in df[canon].unique())
            missing = [w for w in wanted if w not in found]
            if missing:
                raise InputError(path, f"{CANONICAL[canon]} {missing[0]!r} does not occur in the trace; "
                                       f"found: {', '.join(found)}", column=CANONICAL[canon])
            keep &= df[canon].isin(wanted).to_numpy()[order]
        rel = t - t[0]
        if self.start_s is not None:
            keep &= rel >= self.start_s
        if self.end_s is not None:
            keep &= rel < self.end_s
        failed = keep & (output == 0)
        n_failed = int(failed.sum())
        if n_failed and not self.drop_failures:
            i = np.flatnonzero(failed)[0]
            raise InputError(path, "0 output tokens (a failed request) cannot be simulated; "
                                   "set drop_failures=true to drop and count failures", int(line[i]), s.output)
        keep &= ~failed
        idx = np.flatnonzero(keep)
        if self.max_requests is not None:
            idx = idx[: int(self.max_requests)]
        if idx.size == 0:
            raise InputError(path, f"no requests left after filtering {len(t)} rows ({self._describe_filters()}; "
                                   f"{n_failed} failures dropped)", column=s.time)
        sel_t = t[idx] - t[idx[0]]
        scale = float(self.rps_scale)
        if self.target_rate is not None:
            span = float(sel_t[-1])
            if span <= 0:
                raise InputError(path, "target_rate needs at least two distinct timestamps in the selection",
                                 column=s.time)
            scale = float(self.target_rate) * span / (len(idx) - 1)
        if sel_t[-1] / scale > MAX_ARRIVAL_S:
            key = "target_rate" if self.target_rate is not None else "rps_scale"
            raise ConfigError(key, f"stretches the trace's {sel_t[-1]:.6g} s to {sel_t[-1] / scale:.3g} s, more "
                                   f"than {MAX_ARRIVAL_S:g} s (the clock would lose sub-microsecond precision)",
                              getattr(self, key))
        prompt, output = prompt[idx], output[idx]
        info = {
            "trace_rows": len(t),
            "trace_blank_lines": trace.blank_lines,
            "trace_failures_dropped": n_failed,
            "trace_filtered_out": len(t) - n_failed - len(idx),
            "trace_reordered_rows": reordered,
            "trace_zero_prompt_rows": int(np.count_nonzero(prompt == 0)),
            "trace_rps_scale": scale,
            "trace_from_cache": int(trace.from_cache),
            "trace_load_s": time.perf_counter() - t_start,
        }
        if "total" in df:
            total = df["total"].to_numpy()[order][idx]
            info["trace_total_mismatch_rows"] = int(np.count_nonzero(total != prompt + output))
        return RequestTable(arrival=sel_t / scale, prompt=prompt, output=output, info=info)

    def _describe_filters(self) -> str:
        parts = [f"{k}={v}" for k, v in self._category_filters().items() if v]
        for key in ("start_s", "end_s", "max_requests"):
            if getattr(self, key) is not None:
                parts.append(f"{key}={getattr(self, key)}")
        return ", ".join(parts) if parts else "no filters"


@dataclass(frozen=True)
class BurstGPTTrace(TraceReplay):
    """A BurstGPT CSV (6 columns, or 8 with ``Session ID,Elapsed time``); ``models`` and
    ``log_types`` keep only rows whose ``Model`` / ``Log Type`` is listed (null: all)."""

    name: str = "burstgpt_trace"
    models: list[str] | None = None
    log_types: list[str] | None = None

    schema = BURSTGPT

    def _category_filters(self) -> dict[str, list[str] | None]:
        return {"model": self.models, "log_type": self.log_types}


@dataclass(frozen=True)
class AzureTrace(TraceReplay):
    """An Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""

    name: str = "azure_trace"

    schema = AZURE


def replay_for(path: str, schema: TraceSchema | None = None, **options) -> TraceReplay:
    """The replay workload for a file, its format detected from the header unless given."""
    schema, _ = match_schema(path, schema)
    cls = BurstGPTTrace if schema is BURSTGPT else AzureTrace
    return cls(path=path, **options)
