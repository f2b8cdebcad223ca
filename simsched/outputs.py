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


def requests_table(res: SimResult) -> Any:
    req = res.requests
    status = _categories(res.status, STATUS_NAMES)
    reason = _categories(res.reason, REASONS)
    return _table({
        "id": np.arange(len(req), dtype=np.int64),
        "arrival": req.arrival,
        "start": res.start,
        "first_token": res.first_token,
        "completion": res.finish,
        "prompt_tokens": req.prompt,
        "output_tokens": req.output,
        "predicted_output": res.predicted,
        "bin": res.bin,
        "gpu": res.gpu,
        "batch_id": res.batch,
        "tbt": res.tbt,
        "status": status,
        "reason": reason,
    })


def write_tables(out_dir: Path, res: SimResult, requests: bool = True, batches: bool = True) -> list[Path]:
    import pyarrow.parquet as pq

    written = []
    if requests:
        path = out_dir / "requests.parquet"
        pq.write_table(requests_table(res), path)
        written.append(path)
    if batches:
        path = out_dir / "batches.parquet"
        pq.write_table(_table(res.batches), path)
        written.append(path)
    return written


def plot_latency_cdf(path: Path, res: SimResult, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = res.status == 0
    served = int(done.sum()) + int(np.sum(res.status == 2))   # unfinished ones never reach the curve
    lat = np.sort(res.finish[done] - res.requests.arrival[done])
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(lat):
        ax.plot(lat, np.arange(1, len(lat) + 1) / served)
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of admitted requests completed" if served == len(lat)
                  else f"fraction of admitted requests completed ({served - len(lat)} unfinished)")
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

    lat = f"{f('latency_mean_s', '{:.2f}')} / {f('latency_p99_s', '{:.2f}')}"
    if metrics.get("measured_unfinished"):
        lat += f"  ({metrics['measured_unfinished']} unfinished, censored at the horizon: lower bounds)"
    viol = f("sla_violation_rate", "{:.1%}")
    if metrics.get("sla_undecided"):
        viol += (f"  (known: {f('sla_violation_rate_known', '{:.1%}')}; {metrics['sla_undecided']} unfinished "
                 "not yet late, counted as violations)")
    rows = [
        ("completed / rejected / unfinished",
         f"{metrics['completed']} / {metrics['rejected']} / {metrics['unfinished']}"),
        ("throughput (req/s)", f("throughput_rps", "{:.2f}")),
        ("goodput (req/s)", f("goodput_rps", "{:.2f}")),
        ("latency mean / p99 (s)", lat),
        ("SLA violation rate", viol),
        ("GPU utilisation / slot efficiency", f"{f('gpu_utilization', '{:.1%}')} / {f('slot_efficiency', '{:.1%}')}"),
        ("offered load ρ = λ / μ_sat", f"{f('offered_load', '{:.2f}')}  (λ {f('arrival_rate_rps', '{:.2f}')}, "
                                       f"μ_sat {f('saturation_throughput_rps', '{:.2f}')} req/s)"),
        ("mean batch size", f("mean_batch_size", "{:.1f}")),
    ]
    width = max(len(r[0]) for r in rows)
    head = f"simsched {label}".rstrip()
    return "\n".join([head] + [f"  {k.ljust(width)}  {v}" for k, v in rows])
