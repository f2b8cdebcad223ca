"""The run-folder contract: metrics.json, requests.parquet, batches.parquet (and a plot)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simsched.engines.run_to_completion import REASONS, STATUS_NAMES, SimResult


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    return v


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Flat JSON; undefined values (NaN) are written as null."""
    path.write_text(json.dumps({k: _jsonable(v) for k, v in metrics.items()}, indent=1) + "\n")


def _column(x: np.ndarray) -> Any:
    """A zero-copy Arrow array from a numeric numpy array. (pa.array() would import pandas,
    which costs 0.6 s of start-up on every run.)"""
    import pyarrow as pa

    x = np.ascontiguousarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8)
        return _column(x).cast(pa.bool_())
    return pa.Array.from_buffers(pa.from_numpy_dtype(x.dtype), len(x), [None, pa.py_buffer(x)])


def _categories(codes: np.ndarray, names: tuple[str, ...]) -> Any:
    """A dictionary-encoded string column from int8 codes (written as strings in Parquet)."""
    import pyarrow as pa

    data = "".join(names).encode()
    offsets = np.cumsum([0] + [len(n.encode()) for n in names]).astype(np.int32)
    dictionary = pa.Array.from_buffers(pa.string(), len(names), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.DictionaryArray.from_arrays(_column(codes.astype(np.int8)), dictionary)


def _table(columns: dict[str, Any]) -> Any:
    import pyarrow as pa

    arrays = [c if isinstance(c, pa.Array) else _column(c) for c in columns.values()]
    return pa.Table.from_arrays(arrays, names=list(columns))


def requests_table(res: SimResult, rows: slice = slice(None)) -> Any:
    """The requests table (``rows`` of it): the per-request columns are gathered from the
    batches here, a slice at a time, so writing a large run never holds them all at once."""
    req = res.requests
    lo, hi, _ = rows.indices(len(req))
    status = _categories(res.status[rows], STATUS_NAMES)
    reason = _categories(res.reason[rows], REASONS)
    return _table({
        "id": np.arange(lo, hi, dtype=np.int64),
        "arrival": req.arrival[rows],
        "start": res.column("start", rows),
        "first_token": res.column("first_token", rows),
        "completion": res.column("finish", rows),
        "prompt_tokens": req.prompt[rows],
        "output_tokens": req.output[rows],
        "predicted_output": res.predicted[rows],
        "bin": res.bin[rows],
        "gpu": res.column("gpu", rows),
        "batch_id": res.batch[rows].astype(np.int64),
        "tbt": res.column("tbt", rows),
        "status": status,
        "reason": reason,
    })


# Rows per Parquet row group (pyarrow's default), which is also the slice written at a time.
ROW_GROUP = 1 << 20
# Dictionary encoding only where values repeat (token counts, bins, GPUs, categories); ids as
# deltas. Float columns take plain encoding: a dictionary of unique floats is wasted work.
_DICTIONARY = ["prompt_tokens", "output_tokens", "predicted_output", "bin", "gpu", "status", "reason",
               "size", "max_output", "completed"]
_DELTA = ("id", "batch_id")


def _write(path: Path, tables: Any) -> None:
    """Write the tables (one schema) to one Parquet file, a row group each."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for table in tables:
            if writer is None:
                names = set(table.column_names)
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=[c for c in _DICTIONARY if c in names],
                                          column_encoding={c: "DELTA_BINARY_PACKED" for c in _DELTA if c in names})
            writer.write_table(table, row_group_size=ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()


def write_tables(out_dir: Path, res: SimResult, requests: bool = True, batches: bool = True) -> list[Path]:
    written = []
    if requests:
        path = out_dir / "requests.parquet"
        n = len(res.requests)
        _write(path, (requests_table(res, slice(lo, lo + ROW_GROUP)) for lo in range(0, max(n, 1), ROW_GROUP)))
        written.append(path)
    if batches:
        path = out_dir / "batches.parquet"
        _write(path, [_table(res.batches)])
        written.append(path)
    return written


def plot_latency_cdf(path: Path, res: SimResult, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = res.status == 0
    lat = np.sort(res.finish[done] - res.requests.arrival[done])
    # The CDF through at most 2,000 of its points (first and last included): the same curve at
    # this size, without drawing a million-point line.
    rank = np.unique(np.linspace(0, len(lat) - 1, min(len(lat), 2000)).round().astype(np.int64))
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(lat):
        ax.plot(lat[rank], (rank + 1) / len(lat))
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(metrics: dict[str, Any], label: str = "") -> str:
    """A short human summary of one run."""
    def f(key: str, fmt: str = "{:.3f}") -> str:
        v = metrics.get(key)
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    rows = [
        ("completed / rejected / unfinished",
         f"{metrics['completed']} / {metrics['rejected']} / {metrics['unfinished']}"),
        ("throughput (req/s)", f("throughput_rps", "{:.2f}")),
        ("goodput (req/s)", f("goodput_rps", "{:.2f}")),
        ("latency mean / p99 (s)", f"{f('latency_mean_s', '{:.2f}')} / {f('latency_p99_s', '{:.2f}')}"),
        ("SLA violation rate", f("sla_violation_rate", "{:.1%}")),
        ("GPU utilisation", f("gpu_utilization", "{:.1%}")),
        ("slot efficiency", f("slot_efficiency", "{:.1%}")),
        ("offered load (cluster / scheduler)", f"{f('offered_load', '{:.2f}')} / {f('offered_load_scheduler', '{:.2f}')}"),
        ("mean batch size", f("mean_batch_size", "{:.1f}")),
    ]
    width = max(len(r[0]) for r in rows)
    head = f"simsched {label}".rstrip()
    return "\n".join([head] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def serving_requests_table(res: Any) -> Any:
    """requests.parquet of a continuous-engine run: vLLM benchmark fields per request."""
    from simsched.engines.continuous.result import REASONS as C_REASONS
    from simsched.engines.continuous.result import STATUS_NAMES as C_STATUS

    req = res.requests
    return _table({
        "id": np.arange(len(req), dtype=np.int64),
        "arrival": req.arrival,
        "first_scheduled": res.first_scheduled,
        "first_token": res.first_token,
        "completion": res.finish,
        "ttft": res.ttft,
        "tpot": res.tpot,
        "e2e": res.e2e,
        "itl_mean": res.tpot,
        "itl_max": res.itl_max,
        "prompt_tokens": req.prompt,
        "output_tokens": req.output,
        "output_emitted": res.output_emitted,
        "preemptions": res.preemptions,
        "prefix_hit_tokens": res.prefix_hit_tokens,
        "replica": res.replica,
        **({"pool": _categories(np.where(res.pool >= 0, res.pool, len(res.pool_names)),
                                 tuple(res.pool_names) + ("unrouted",))} if getattr(res, "pool_names", ()) else {}),
        "status": _categories(res.status, C_STATUS),
        "reason": _categories(res.reason, C_REASONS),
    })


def write_serving_tables(out_dir: Path, res: Any, requests: bool = True) -> list[Path]:
    """requests.parquet, timeseries.parquet (per second and replica) and, when the run
    recorded them, steps.parquet."""
    import pyarrow.parquet as pq

    written = []
    if requests:
        path = out_dir / "requests.parquet"
        pq.write_table(serving_requests_table(res), path)
        written.append(path)
    path = out_dir / "timeseries.parquet"
    pq.write_table(_table(res.timeseries), path)
    written.append(path)
    if res.steps is not None:
        path = out_dir / "steps.parquet"
        pq.write_table(_table(res.steps), path)
        written.append(path)
    return written
