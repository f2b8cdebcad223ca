"""The run-folder contract: metrics.json, requests.parquet, batches.parquet (and a plot), each
written atomically, then ``done.json`` last.

A crash or a kill can never leave half a file under its final name: every file is written under
a temporary name in the same folder and renamed into place (``atomic_write``). ``done.json``,
written after everything else, lists each file with its size and SHA-256, so a reader can tell a
complete run (``check_run_dir``: ok) from an interrupted one (no marker: incomplete) and from one
whose files changed afterwards (corrupt). Any new table uses ``write_table`` and is listed in
the marker like the others. Files are not fsynced: this survives killed processes, not a power
cut.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from simsched.engines.run_to_completion import REASONS, STATUS_NAMES, SimResult, batch_table


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    return v


MARKER = "done.json"
ERROR = "error.json"
# Hydra's record of the job, covered by the marker when present (the summary reads them).
HYDRA_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``: a
    reader, or a process killed half-way, never sees a partial file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> Path:
    """Write a JSON file atomically (NaN and infinities become null: the file stays valid JSON)."""
    return write_text(path, json.dumps(_json_safe(data), indent=1) + "\n")


def _json_safe(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    return _jsonable(data)


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    """Flat JSON; undefined values (NaN) are written as null."""
    return write_json(path, metrics)


def write_table(path: Path, table: Any) -> Path:
    """Write a pyarrow table as Parquet, atomically."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_marker(out_dir: Path, files: Iterable[Path]) -> Path:
    """``done.json``: the run is complete. Lists every output file (and Hydra's record of the
    job) with its size and SHA-256; written last, atomically."""
    out_dir = Path(out_dir)
    names = [Path(f).relative_to(out_dir).as_posix() for f in files]
    names += [h for h in HYDRA_FILES if (out_dir / h).is_file() and h not in names]
    entries = {}
    for name in names:
        path = out_dir / name
        if path.is_file():
            entries[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return write_json(out_dir / MARKER, {"format": 1, "files": entries})


@dataclass(frozen=True)
class RunCheck:
    """What a run folder holds: ``ok``, ``failed`` (error.json), ``incomplete`` (no marker:
    interrupted or still running) or ``corrupt`` (a file differs from its marker entry)."""

    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_run_dir(out_dir: Path, *, verify: bool = True) -> RunCheck:
    """Classify a run folder; with ``verify``, every file listed in ``done.json`` must exist
    with its recorded size and SHA-256 (so a truncated or edited table is never read as good)."""
    out_dir = Path(out_dir)
    marker, error = out_dir / MARKER, out_dir / ERROR
    if error.is_file():
        try:
            message = json.loads(error.read_text()).get("error", "")
        except (OSError, ValueError, AttributeError):
            message = "error.json is unreadable"
        return RunCheck("failed", str(message))
    if not marker.is_file():
        return RunCheck("incomplete", f"no {MARKER}: the run was interrupted or is still running")
    try:
        files = json.loads(marker.read_text())["files"]
        items = [(str(name), int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return RunCheck("corrupt", f"{MARKER} is unreadable")
    if not verify:
        return RunCheck("ok")
    for name, size, digest in items:
        path = out_dir / name
        if not path.is_file():
            return RunCheck("corrupt", f"{name} is missing")
        if path.stat().st_size != size:
            return RunCheck("corrupt", f"{name} has {path.stat().st_size} bytes, {MARKER} recorded {size}")
        if file_digest(path) != digest:
            return RunCheck("corrupt", f"{name} differs from the file that was written (SHA-256)")
    return RunCheck("ok")


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
        "bin": res.bin[rows].astype(np.int32),   # held as int8 where K <= 127
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


def _write(path: Path, tables: Any) -> Path:
    """Write the tables (one schema) to one Parquet file, a row group each, atomically."""
    return atomic_write(path, lambda tmp: _write_groups(tmp, tables))


def _write_groups(path: Path, tables: Any) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for table in tables:
            if writer is None:
                names = set(table.column_names)
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=[c for c in _DICTIONARY if c in names],
                                          column_encoding={c: "DELTA_BINARY_PACKED" for c in _DELTA if c in names})
            writer.write_table(table, row_group_size=ROW_GROUP)
            del table    # before the next one is built: one row group's columns held at a time
    finally:
        if writer is not None:
            writer.close()


def write_tables(out_dir: Path, res: SimResult, requests: bool = True, batches: bool = True) -> list[Path]:
    written = []
    if requests:
        n = len(res.requests)
        written.append(_write(out_dir / "requests.parquet",
                              (requests_table(res, slice(lo, lo + ROW_GROUP)) for lo in range(0, max(n, 1), ROW_GROUP))))
    if batches:
        nb = len(res.batches["size"])
        written.append(_write(out_dir / "batches.parquet", (_table(batch_table(res.batches, slice(lo, lo + ROW_GROUP)))
                                                            for lo in range(0, max(nb, 1), ROW_GROUP))))
    return written


def plot_latency_cdf(path: Path, res: SimResult, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = res.status == 0
    served = int(done.sum()) + int(np.sum(res.status == 2))   # unfinished ones never reach the curve
    lat = np.sort(res.finish[done] - res.requests.arrival[done])
    # The CDF through at most 2,000 of its points (first and last included): the same curve at
    # this size, without drawing a million-point line.
    rank = np.unique(np.linspace(0, len(lat) - 1, min(len(lat), 2000)).round().astype(np.int64))
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(lat):
        ax.plot(lat[rank], (rank + 1) / served)
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of admitted requests completed" if served == len(lat)
                  else f"fraction of admitted requests completed ({served - len(lat)} unfinished)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
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
    recorded them, steps.parquet; each written atomically."""
    written = []
    if requests:
        written.append(write_table(out_dir / "requests.parquet", serving_requests_table(res)))
    written.append(write_table(out_dir / "timeseries.parquet", _table(res.timeseries)))
    if res.steps is not None:
        written.append(write_table(out_dir / "steps.parquet", _table(res.steps)))
    return written
