"""A measured serving run, read from a benchmark's per-request results, to be replayed.

Two inputs:

- the JSON that ``vllm bench serve --save-result --save-detailed`` writes (also the older
  ``benchmarks/benchmark_serving.py --save-result``): per-request lists ``input_lens``,
  ``output_lens``, ``ttfts``, ``itls`` and, in recent versions, ``latencies`` and
  ``start_times``; run-level ``request_rate``, ``burstiness``, ``max_concurrency``, ``model_id``;
- a plain table (CSV, or JSONL with one object per line), one row per request: ``arrival_s``,
  ``prompt_tokens``, ``output_tokens``, ``ttft_s`` and ``e2e_s`` (or ``itl_s`` as a list of
  gaps); optional ``itl_s`` (mean gap, or the list), ``error`` (non-empty: failed),
  ``prefix_tokens`` and ``prefix_group`` (requests of one group share their first
  ``prefix_tokens`` tokens). Other columns are kept (``columns``) for grouping the comparison.

Times are seconds. Every problem is one ``InputError`` naming the file and the row or key.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsched.errors import InputError, SimschedError

TABLE_REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens", "ttft_s")
TABLE_KNOWN = TABLE_REQUIRED + ("e2e_s", "itl_s", "error", "prefix_tokens", "prefix_group")
BENCH_REQUIRED = ("input_lens", "output_lens", "ttfts")


@dataclass
class MeasuredRun:
    """Per-request measurements of a real run, sorted by arrival (ties keep file order).

    ``ok`` is False for requests that failed in the real run: their timings are unknown and they
    are not replayed. ``arrival_source`` says whether arrivals are the file's own timestamps or
    were regenerated the way the benchmark draws them (then they are only as exact as that)."""

    path: str
    fmt: str
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    ok: np.ndarray
    arrival_source: str
    prefix_tokens: np.ndarray | None = None
    prefix_group: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def tpot(self) -> np.ndarray:
        """(E2E − TTFT) / (output − 1) per request, as vLLM's benchmark defines it; NaN for
        requests of one output token (they have no TPOT) and for failed ones."""
        return tpot(self.ttft, self.e2e, self.output, self.ok)


def tpot(ttft: np.ndarray, e2e: np.ndarray, output: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.full(len(ttft), np.nan)
    m = ok & (output > 1)
    out[m] = (e2e[m] - ttft[m]) / (output[m] - 1)
    return out


def read_measured(path: str | Path, *, seed: int = 0, request_rate: float | None = None,
                  burstiness: float | None = None, result_index: int | None = None) -> MeasuredRun:
    """Read a measured run. ``seed``, ``request_rate`` and ``burstiness`` matter only for a vLLM
    result without ``start_times``: its arrivals are regenerated from them (the rate and
    burstiness default to the file's own; the seed is not saved by vLLM: pass the one used)."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), "no such file")
    if not p.is_file():
        raise InputError(str(path), "not a file")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _table(str(path), _csv_rows(p))
    if suffix not in (".json", ".jsonl"):
        raise InputError(str(path), f"unknown file type {suffix or '(none)'}; expected .json (vllm bench serve "
                                    "--save-result), .csv or .jsonl (one request per row)")
    records = _json_records(p)
    if not records:
        raise InputError(str(path), "empty file")
    first = records[0][1]
    if isinstance(first, dict) and all(k in first for k in BENCH_REQUIRED):
        if len(records) > 1 and result_index is None:
            raise InputError(str(path), f"the file holds {len(records)} benchmark results (--append-result); "
                                        "choose one with --result-index")
        i = result_index or 0
        if not 0 <= i < len(records):
            raise InputError(str(path), f"--result-index {i} out of range (the file holds {len(records)} results)")
        line, obj = records[i]
        if not isinstance(obj, dict) or not all(k in obj for k in BENCH_REQUIRED):
            raise InputError(str(path), "not a vllm bench serve result (needs keys "
                                        f"{', '.join(BENCH_REQUIRED)})", line)
        return _vllm_bench(str(path), obj, seed=seed, request_rate=request_rate, burstiness=burstiness)
    if suffix == ".json" and len(records) == 1 and isinstance(first, dict) and "ttfts" not in first:
        missing = [k for k in BENCH_REQUIRED if k not in first]
        raise InputError(str(path), f"not a vllm bench serve result: missing key(s) {', '.join(missing)} "
                                    "(save it with --save-result --save-detailed)")
    return _table(str(path), records)


# --- vllm bench serve ---------------------------------------------------------------------

def _vllm_bench(path: str, obj: dict[str, Any], *, seed: int, request_rate: float | None,
                burstiness: float | None) -> MeasuredRun:
    n = _list(path, obj, "input_lens")
    for key in ("output_lens", "ttfts", "itls", "latencies", "start_times", "errors"):
        if key in obj and obj[key] is not None:
            k = _list(path, obj, key)
            if k != n:
                raise InputError(path, f"key '{key}' has {k} entries, 'input_lens' has {n}")
    errors = [str(e or "") for e in obj.get("errors") or [""] * n]
    ok = np.array([e == "" for e in errors], dtype=bool)
    prompt = np.array([_int(path, obj, "input_lens", i) for i in range(n)], dtype=np.int64)
    output = np.array([_int(path, obj, "output_lens", i) if ok[i] else 0 for i in range(n)], dtype=np.int64)
    ttft = np.array([_num(path, obj, "ttfts", i) if ok[i] else np.nan for i in range(n)])
    if obj.get("latencies") is not None:
        e2e = np.array([_num(path, obj, "latencies", i) if ok[i] else np.nan for i in range(n)])
    elif obj.get("itls") is not None:
        e2e = np.array([ttft[i] + sum(_gaps(path, obj["itls"][i], f"key 'itls' entry {i}")) if ok[i] else np.nan
                        for i in range(n)])
    else:
        raise InputError(path, "neither 'latencies' nor 'itls' is present: end-to-end latency is unknown "
                               "(save the result with --save-detailed)")
    for i in np.flatnonzero(ok):
        if output[i] < 1:
            raise InputError(path, f"key 'output_lens' entry {i}: a successful request needs >= 1 output "
                                   f"token (got {output[i]})")
        if e2e[i] + 1e-9 < ttft[i]:
            raise InputError(path, f"request {i}: end-to-end latency {e2e[i]:.6g} s < TTFT {ttft[i]:.6g} s")
    meta = {k: obj[k] for k in ("model_id", "backend", "date", "num_prompts", "request_rate", "burstiness",
                                "max_concurrency", "duration", "completed", "request_throughput",
                                "output_throughput") if k in obj}
    if obj.get("start_times") is not None:
        start = np.array([_num(path, obj, "start_times", i, allow_negative=True) for i in range(n)])
        arrival = start - start.min()
        source = "timestamps (the client's send times, 'start_times')"
    else:
        rate = request_rate if request_rate is not None else _rate(path, obj.get("request_rate"))
        burst = burstiness if burstiness is not None else float(obj.get("burstiness") or 1.0)
        if obj.get("max_concurrency") not in (None, 0) and math.isfinite(rate):
            raise SimschedError(
                f"{path}: arrivals are unknowable: the run capped concurrency (max_concurrency="
                f"{obj['max_concurrency']}) and the file has no 'start_times', so send times depended on "
                "the real service times; use a result from a vLLM version that saves start_times")
        if obj.get("max_concurrency") not in (None, 0) and not math.isfinite(rate):
            raise SimschedError(
                f"{path}: arrivals are unknowable: request_rate=inf with max_concurrency="
                f"{obj['max_concurrency']} is a closed loop whose send times depended on the real service "
                "times, and the file has no 'start_times'")
        arrival = vllm_bench_arrivals(n, rate, burst, seed)
        source = (f"regenerated as vllm bench serve draws them (request_rate={rate:g}, burstiness={burst:g}, "
                  f"seed={seed}); exact only if nothing else drew from numpy's global RNG before the "
                  "benchmark's get_request, and up to the client's send lag")
    return _sorted(MeasuredRun(path, "vllm_bench", arrival, prompt, output, ttft, e2e, ok, source, meta=meta))


def vllm_bench_arrivals(n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send times (s from the benchmark's start) as ``vllm bench serve`` computes them
    (``vllm/benchmarks/serve.py``: ``main`` seeds numpy's global RNG with ``--seed``;
    ``get_request`` draws one Gamma(burstiness, 1/(rate·burstiness)) gap per request, the first
    included, takes cumulative sums and rescales them so the last equals n/rate).

    numpy's legacy ``RandomState(seed)`` is the stream that seeding numpy's global RNG starts;
    no global state is touched here. An infinite rate sends everything at once."""
    if n < 1:
        raise SimschedError("a benchmark run needs at least one request")
    if not math.isfinite(request_rate):
        return np.zeros(n)
    if request_rate <= 0 or not (burstiness > 0):
        raise SimschedError(f"request_rate must be > 0 and burstiness > 0 (got {request_rate}, {burstiness})")
    rs = np.random.RandomState(seed)
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / request_rate)
    else:
        gaps = np.array([rs.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness)) for _ in range(n)])
    delay = np.cumsum(gaps)
    if delay[-1] != 0:
        delay = delay * ((n / request_rate) / delay[-1])
    return delay


def _rate(path: str, value: Any) -> float:
    if value is None:
        raise InputError(path, "the file has neither 'start_times' nor 'request_rate': arrivals are unknowable "
                               "(give --request-rate)")
    if value == "inf":
        return math.inf
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"key 'request_rate': not a number: {value!r}") from None
    if not rate > 0:
        raise InputError(path, f"key 'request_rate': must be > 0 (got {value!r})")
    return rate


def _list(path: str, obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, list):
        raise InputError(path, f"key '{key}': must be a list (got {type(value).__name__})")
    return len(value)


def _num(path: str, obj: dict[str, Any], key: str, i: int, allow_negative: bool = False) -> float:
    v = obj[key][i]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v < 0 and not allow_negative):
        raise InputError(path, f"key '{key}' entry {i}: must be a finite number{'' if allow_negative else ' >= 0'} "
                               f"(got {v!r})")
    return float(v)


def _int(path: str, obj: dict[str, Any], key: str, i: int) -> int:
    v = obj[key][i]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 0:
        raise InputError(path, f"key '{key}' entry {i}: must be an integer >= 0 (got {v!r})")
    return int(v)


def _gaps(path: str, value: Any, where: str) -> list[float]:
    if not isinstance(value, list):
        raise InputError(path, f"{where}: must be a list of inter-token gaps (got {type(value).__name__})")
    for g in value:
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise InputError(path, f"{where}: inter-token gaps must be finite numbers >= 0 (got {g!r})")
    return [float(g) for g in value]


# --- plain tables (CSV, JSONL) ------------------------------------------------------------

def _csv_rows(p: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise InputError(str(p), "empty file (no header line)", line=1)
            header = [h.strip() for h in header]
            rows = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise InputError(str(p), f"expected {len(header)} fields, found {len(row)}", reader.line_num)
                rows.append((reader.line_num, dict(zip(header, (c.strip() for c in row)))))
    except UnicodeDecodeError as err:
        raise InputError(str(p), f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise InputError(str(p), f"not a readable CSV ({err})") from None
    if not rows:
        missing = [c for c in TABLE_REQUIRED if c not in header]
        if missing:
            raise InputError(str(p), f"missing column(s) {', '.join(missing)}", line=1)
        raise InputError(str(p), "no data rows after the header", line=2)
    return rows


def _json_records(p: Path) -> list[tuple[int, Any]]:
    """One JSON document (a .json file), or one per non-blank line (JSONL, also what vLLM's
    --append-result writes); each with its line number."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(str(p), f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        return []
    try:
        return [(1, json.loads(text))]
    except json.JSONDecodeError as whole:
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                if lineno == 1 and len(out) == 0 and whole.lineno > 1:
                    # a multi-line document broken further down: report where it broke
                    raise InputError(str(p), f"not valid JSON: {whole.msg}", whole.lineno) from None
                raise InputError(str(p), f"not valid JSON: {err.msg}", lineno) from None
        return out


def _table(path: str, rows: list[tuple[int, Any]]) -> MeasuredRun:
    for line, row in rows:
        if not isinstance(row, dict):
            raise InputError(path, f"a row must be an object with named fields (got {type(row).__name__})", line)
    names = list(rows[0][1].keys())
    missing = [c for c in TABLE_REQUIRED if c not in names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a measured run needs "
                               f"{', '.join(TABLE_REQUIRED)} and e2e_s (or itl_s as a list)", line=1)
    if "e2e_s" not in names and "itl_s" not in names:
        raise InputError(path, "missing column e2e_s (or itl_s as a list of gaps): end-to-end latency is unknown",
                         line=1)
    n = len(rows)
    arrival, ttft, e2e = np.empty(n), np.full(n, np.nan), np.full(n, np.nan)
    prompt, output = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    has_prefix = "prefix_tokens" in names
    prefix_tokens = np.zeros(n, dtype=np.int64) if has_prefix else None
    prefix_group = np.zeros(n, dtype=np.int64) if has_prefix else None
    extra = [c for c in names if c not in TABLE_KNOWN]
    extra_values: dict[str, list[Any]] = {c: [] for c in extra}
    for j, (line, row) in enumerate(rows):
        for c in TABLE_REQUIRED:
            if c not in row:
                raise InputError(path, "missing field", line, c)
        err = row.get("error")
        ok[j] = err is None or str(err).strip() == ""
        arrival[j] = _cell_num(path, line, "arrival_s", row["arrival_s"], allow_negative=True)
        prompt[j] = _cell_int(path, line, "prompt_tokens", row["prompt_tokens"])
        if has_prefix:
            prefix_tokens[j] = _cell_int(path, line, "prefix_tokens", row.get("prefix_tokens", 0) or 0)
            if prefix_tokens[j] > prompt[j]:
                raise InputError(path, f"prefix_tokens {prefix_tokens[j]} > prompt_tokens {prompt[j]}", line,
                                 "prefix_tokens")
            prefix_group[j] = _cell_int(path, line, "prefix_group", row.get("prefix_group", 0) or 0)
        for c in extra:
            extra_values[c].append(row.get(c))
        if not ok[j]:
            continue
        output[j] = _cell_int(path, line, "output_tokens", row["output_tokens"])
        if output[j] < 1:
            raise InputError(path, f"a successful request needs >= 1 output token (got {output[j]})", line,
                             "output_tokens")
        ttft[j] = _cell_num(path, line, "ttft_s", row["ttft_s"])
        gaps = _cell_itl(path, line, row.get("itl_s"))
        if row.get("e2e_s") not in (None, ""):
            e2e[j] = _cell_num(path, line, "e2e_s", row["e2e_s"])
        elif isinstance(gaps, list):
            e2e[j] = ttft[j] + sum(gaps)
        elif isinstance(gaps, float):
            e2e[j] = ttft[j] + gaps * (output[j] - 1)
        else:
            raise InputError(path, "missing value (give e2e_s or itl_s)", line, "e2e_s")
        if e2e[j] + 1e-9 < ttft[j]:
            raise InputError(path, f"end-to-end latency {e2e[j]:.6g} s < TTFT {ttft[j]:.6g} s", line, "e2e_s")
    columns = {c: _column(v) for c, v in extra_values.items()}
    run = MeasuredRun(path, "table", arrival - arrival.min(), prompt, output, ttft, e2e, ok,
                      "timestamps (the file's arrival_s)", prefix_tokens, prefix_group, columns)
    return _sorted(run)


def _cell_num(path: str, line: int, col: str, value: Any, allow_negative: bool = False) -> float:
    if isinstance(value, bool):
        raise InputError(path, f"not a number: {value!r}", line, col)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"not a number: {value!r}", line, col) from None
    if not math.isfinite(v):
        raise InputError(path, f"must be finite (got {value!r})", line, col)
    if v < 0 and not allow_negative:
        raise InputError(path, f"must be >= 0 (got {value!r})", line, col)
    return v


def _cell_int(path: str, line: int, col: str, value: Any) -> int:
    v = _cell_num(path, line, col, value)
    if v != int(v):
        raise InputError(path, f"must be an integer (got {value!r})", line, col)
    return int(v)


def _cell_itl(path: str, line: int, value: Any) -> list[float] | float | None:
    """``itl_s``: empty, a mean gap (number), or the gaps as a list (JSON text in a CSV)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise InputError(path, f"not a JSON list of gaps ({err.msg})", line, "itl_s") from None
    if isinstance(value, list):
        return _gaps(path, value, f"line {line} column 'itl_s'")
    return _cell_num(path, line, "itl_s", value)


def _column(values: list[Any]) -> np.ndarray:
    """A numeric array when every value is a number, else strings."""
    try:
        return np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _sorted(run: MeasuredRun) -> MeasuredRun:
    order = np.argsort(run.arrival, kind="stable")
    if np.all(order == np.arange(len(order))):
        return run
    take = lambda a: None if a is None else a[order]  # noqa: E731
    return MeasuredRun(run.path, run.fmt, run.arrival[order], run.prompt[order], run.output[order],
                       run.ttft[order], run.e2e[order], run.ok[order], run.arrival_source,
                       take(run.prefix_tokens), take(run.prefix_group),
                       {k: v[order] for k, v in run.columns.items()}, run.meta)
