"""Reading LLM request traces (BurstGPT, Azure LLM inference) into typed columns, fast.

The CSV is parsed by pyarrow in streamed blocks, only the needed columns, typed while parsing,
so a multi-GB file never sits in memory as text. The typed table is cached as Parquet, keyed by
a hash of the file's content (an edit that keeps size and modification time still misses), so
a sweep parses each trace once. Only when the fast parser rejects the file is it re-read row by
row, to name the offending line and column.

Line numbers are physical lines of the file (the header is line 1); this holds as long as no
quoted field spans several lines, which neither published schema has.
"""
from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # pandas is imported where a trace is parsed: it costs 0.6 s of start-up
    import pandas as pd

from simsched.errors import InputError
from simsched.workloads.requests import MAX_TOKENS

CACHE_VERSION = 2
# Datetimes a nanosecond int64 clock holds (pyarrow and pandas): 1677-09-21 to 2262-04-11.
_YEARS = (1678, 2261)


@dataclass(frozen=True)
class TraceSchema:
    """A trace format: accepted headers and which columns hold time, prompt and output."""

    name: str
    headers: tuple[tuple[str, ...], ...]
    time: str
    prompt: str
    output: str
    total: str | None = None
    categories: tuple[str, ...] = ()    # string columns kept for filtering
    datetime_time: bool = False         # timestamps are datetimes (else seconds)

    def describe(self) -> str:
        return " or ".join("[" + ",".join(h) + "]" for h in self.headers)


BURSTGPT = TraceSchema(
    name="burstgpt",
    headers=(
        ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"),
        ("Timestamp", "Session ID", "Elapsed time", "Model", "Request tokens", "Response tokens",
         "Total tokens", "Log Type"),
    ),
    time="Timestamp", prompt="Request tokens", output="Response tokens", total="Total tokens",
    categories=("Model", "Log Type"),
)
AZURE = TraceSchema(
    name="azure",
    headers=(("TIMESTAMP", "ContextTokens", "GeneratedTokens"),),
    time="TIMESTAMP", prompt="ContextTokens", output="GeneratedTokens", datetime_time=True,
)
SCHEMAS = (BURSTGPT, AZURE)

# Canonical names of the loaded columns (the file's names differ per schema).
CANONICAL = {"model": "Model", "log_type": "Log Type"}


@dataclass
class Trace:
    """A parsed trace: ``frame`` has columns time (s), prompt, output, [total, model, log_type]
    and line (the row's line in the file). Azure times are seconds after the first row."""

    path: str
    schema: TraceSchema
    frame: pd.DataFrame
    blank_lines: int
    from_cache: bool


def read_header(path: str | os.PathLike) -> list[str]:
    """The column names on line 1; InputError if the file is missing, unreadable or empty."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), "no such file")
    if not p.is_file():
        raise InputError(str(path), "not a file")
    try:
        with open(p, "rb") as f:
            raw = f.readline()
    except OSError as exc:
        raise InputError(str(path), f"cannot read: {exc}") from None
    text = _decode(str(path), raw, 1, None, "utf-8-sig")
    first = next(csv.reader([text]), None)
    if not first:
        raise InputError(str(path), "empty file (no header line)", line=1)
    return [c.strip() for c in first]


def match_schema(path: str | os.PathLike, schema: TraceSchema | None = None) -> tuple[TraceSchema, list[str]]:
    """The schema whose header the file has (``schema`` to require one); else an InputError
    listing the columns found and those expected."""
    header = read_header(path)
    candidates = (schema,) if schema is not None else SCHEMAS
    for s in candidates:
        if tuple(header) in s.headers:
            return s, header
    expected = " or ".join(s.describe() for s in candidates)
    raise InputError(str(path), f"unknown trace schema: found columns [{','.join(header)}]; expected {expected}",
                     line=1)


def load_trace(path: str | os.PathLike, schema: TraceSchema | None = None,
               cache_dir: str | os.PathLike | None = None) -> Trace:
    """Parse (or fetch from the Parquet cache) a trace; malformed rows raise InputError."""
    schema, header = match_schema(path, schema)
    cache = _cache_path(Path(path), schema, cache_dir) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(cache)
            frame = table.to_pandas()
            blank = int((table.schema.metadata or {}).get(b"blank_lines", b"0"))
            return Trace(str(path), schema, frame, blank, from_cache=True)
        except Exception:  # noqa: BLE001 - a damaged cache is re-made from the CSV
            pass
    frame, blank = _parse(Path(path), schema, header)
    if cache is not None:
        _write_cache(cache, frame, blank)
    return Trace(str(path), schema, frame, blank, from_cache=False)


def _cache_path(path: Path, schema: TraceSchema, cache_dir: str | os.PathLike) -> Path:
    """The cache file of a trace: named by the SHA-256 of its bytes (about the cost of reading
    the file once), so any edit misses, whatever it does to size and mtime."""
    try:
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise InputError(str(path), f"cannot read: {exc}") from None
    digest = hashlib.sha256(f"{content}|{schema.name}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{path.stem}-{schema.name}-{digest}.parquet"


def _write_cache(cache: Path, frame: pd.DataFrame, blank: int) -> None:
    """Atomic write (temp file + rename) so concurrent sweep jobs never read half a file.
    A cache that cannot be written costs speed only, never the run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"blank_lines": str(blank).encode()})
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        os.close(fd)
        pq.write_table(table, tmp)
        os.replace(tmp, cache)
    except OSError:
        pass


def _parse(path: Path, schema: TraceSchema, header: list[str]) -> tuple[pd.DataFrame, int]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pcsv

    numeric = [schema.prompt, schema.output] + ([schema.total] if schema.total else [])
    types = {c: pa.int64() for c in numeric}
    types[schema.time] = pa.timestamp("ns") if schema.datetime_time else pa.float64()
    for c in schema.categories:
        types[c] = pa.dictionary(pa.int32(), pa.string())
    columns = [schema.time] + numeric + list(schema.categories)
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=16 << 20, column_names=header, skip_rows=1),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(include_columns=columns, column_types=types),
        )
        table = pa.Table.from_batches(list(reader), schema=reader.schema)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _locate_bad_cell(path, schema, header, exc) from None
    if table.num_rows == 0:
        raise InputError(str(path), "no data rows after the header", line=2)

    def col(name: str) -> pa.ChunkedArray:
        return table.column(name)

    line = np.arange(2, table.num_rows + 2, dtype=np.int64)
    null = {c: col(c).is_null().to_numpy(zero_copy_only=False) for c in [schema.time] + numeric}
    blank = null[schema.time] & null[schema.prompt] & null[schema.output]
    for c in [schema.time] + numeric:
        bad = np.flatnonzero(null[c] & ~blank)
        if bad.size:
            raise InputError(str(path), "missing value", int(line[bad[0]]), c)
    keep = ~blank
    out: dict[str, np.ndarray] = {}
    if schema.datetime_time:
        ns = col(schema.time).cast(pa.int64()).to_numpy(zero_copy_only=False)[keep]
        out["time"] = (ns - ns[0]) / 1e9 if ns.size else ns.astype(np.float64)
    else:
        t = col(schema.time).to_numpy(zero_copy_only=False)[keep]
        bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
        if bad.size:
            i = bad[0]
            raise InputError(str(path), f"timestamp must be a finite number >= 0 (got {t[i]!r})",
                             int(line[keep][i]), schema.time)
        out["time"] = t
    for canon, c in (("prompt", schema.prompt), ("output", schema.output), ("total", schema.total)):
        if c is None:
            continue
        v = col(c).to_numpy(zero_copy_only=False)[keep].astype(np.int64)
        bad = np.flatnonzero((v < 0) | (v > MAX_TOKENS))
        if bad.size:
            raise InputError(str(path), _count_problem(int(v[bad[0]])), int(line[keep][bad[0]]), c)
        out[canon] = v
    frame = pd.DataFrame(out)
    for canon, c in CANONICAL.items():
        if c in schema.categories:
            frame[canon] = col(c).to_pandas()[keep].reset_index(drop=True)
    frame["line"] = line[keep]
    return frame, int(blank.sum())


def _locate_bad_cell(path: Path, schema: TraceSchema, header: list[str], exc: BaseException) -> InputError:
    """Slow path, only for a file the fast parser rejected: find the first bad line/column.
    Lines are read as bytes and decoded one by one, so a byte that is not UTF-8 is named by
    its line and column too."""
    index = {name: i for i, name in enumerate(header)}
    ints = [c for c in (schema.prompt, schema.output, schema.total) if c]
    with open(path, "rb") as f:
        f.readline()
        for line, raw in enumerate(f, start=2):
            text = raw.decode("utf-8", errors="surrogateescape")
            row = next(csv.reader([text]), [])
            if not row:
                continue
            if len(row) != len(header):
                return InputError(str(path), f"expected {len(header)} fields, found {len(row)}", line)
            for name, value in zip(header, row):
                _decode(str(path), value.encode("utf-8", errors="surrogateescape"), line, name)
            value = row[index[schema.time]].strip()
            problem = _time_problem(value, schema) if value else None
            if problem:
                return InputError(str(path), problem, line, schema.time)
            for c in ints:
                value = row[index[c]].strip()
                if value and not _is_int(value):
                    return InputError(str(path), f"token count is not an integer: {value!r}", line, c)
                if value and _count_problem(int(value)):
                    return InputError(str(path), _count_problem(int(value)), line, c)
    return InputError(str(path), "cannot parse: " + " ".join(str(exc).split()))


def _decode(path: str, raw: bytes, line: int, column: str | None, encoding: str = "utf-8") -> str:
    """Bytes as text, or an InputError naming the line (and column) of a byte that is not UTF-8."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        bad = raw[err.start:err.start + 1].hex()
        raise InputError(path, f"not UTF-8 text (byte 0x{bad} at byte {err.start + 1} of the "
                               f"{'field' if column else 'line'}); save the file as UTF-8", line, column) from None


def _count_problem(value: int) -> str:
    """Why a token count is unusable ("" if it is fine): negative, or so large that sums of
    counts could wrap around in int64."""
    if value < 0:
        return f"token count must be >= 0 (got {value})"
    if value > MAX_TOKENS:
        return f"token count must be <= {MAX_TOKENS:,} (got {value})"
    return ""


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _time_problem(value: str, schema: TraceSchema) -> str | None:
    """Why a timestamp cell is unusable (None: it is fine)."""
    if not schema.datetime_time:
        try:
            float(value)
        except ValueError:
            return f"timestamp is not a number: {value!r}"
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return f"timestamp is not a datetime (YYYY-MM-DD HH:MM:SS[.fffffff]): {value!r}"
    if when.tzinfo is not None:
        return f"timestamp has a time zone: {value!r}; write local times without a zone, as the Azure traces do"
    if not _YEARS[0] <= when.year <= _YEARS[1]:
        return f"timestamp is outside the years {_YEARS[0]}-{_YEARS[1]} a nanosecond clock holds: {value!r}"
    return None
