"""Replaying a Mooncake trace (JSONL), whose requests carry the content of their prompts as
block hash ids, so prefix caching has something to hit.

One JSON object per line: ``timestamp`` (ms, non-decreasing up to ``order_tolerance_s``),
``input_length`` and ``output_length`` (tokens), ``hash_ids`` (one id per ``hash_block_tokens``
prompt tokens, 512 in the published Mooncake traces; equal ids mean equal content, and the ids
of a prompt's first k blocks determine them). Arrivals are the timestamps relative to the
first selected request, in seconds, divided by the rate scale; equal timestamps keep file
order. Bad input is one error naming the file, line and field, as for the CSV traces.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from simsched.errors import InputError, check_positive
from simsched.workloads.requests import RequestTable
from simsched.workloads.traces import check_replay_options, replay_rate

FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True)
class MooncakeTrace:
    """``workload=mooncake_trace workload.path=FILE``. ``start_s``/``end_s`` select ``start_s <=
    t - t_first < end_s`` in trace seconds; ``max_requests`` keeps the first N left; ``rps_scale``
    divides the timestamps, or ``target_rate`` picks the scale giving that mean rate (n-1)/span.
    Requests with 0 output tokens are failures: dropped and counted (``drop_failures``), else an
    error naming the line."""

    path: str
    name: str = "mooncake_trace"
    hash_block_tokens: int = 512
    drop_failures: bool = True
    start_s: float | None = None
    end_s: float | None = None
    max_requests: int | None = None
    rps_scale: float = 1.0
    target_rate: float | None = None
    order_tolerance_s: float = 1.0

    def __post_init__(self) -> None:
        check_replay_options(self)
        check_positive("hash_block_tokens", self.hash_block_tokens, integer=True)
        if not Path(self.path).is_file():
            raise InputError(self.path, "no such file")

    @property
    def mean_rate(self) -> float:
        return replay_rate(self._replay.arrival, self.target_rate)

    def generate(self, rng: np.random.Generator | None = None) -> RequestTable:
        """The selected requests (``rng`` is unused: a replay is the same every time)."""
        r = self._replay
        return RequestTable(r.arrival.copy(), r.prompt.copy(), r.output.copy(), info=dict(r.info),
                            hash_offsets=r.hash_offsets.copy(), hash_values=r.hash_values.copy(),
                            hash_block_tokens=r.hash_block_tokens)

    @cached_property
    def _replay(self) -> RequestTable:
        return self.select()

    def select(self) -> RequestTable:
        t, prompt, output, ids, lines, blank = read_mooncake(self.path, int(self.hash_block_tokens))
        back = t - np.maximum.accumulate(t) if len(t) else t
        too_far = np.flatnonzero(back < -self.order_tolerance_s)
        if too_far.size:
            i = too_far[0]
            raise InputError(self.path, f"timestamp goes back {-back[i]:.6g} s, more than order_tolerance_s="
                                        f"{self.order_tolerance_s:g}", int(lines[i]), "timestamp")
        order = np.argsort(t, kind="stable")
        t, prompt, output, lines = t[order], prompt[order], output[order], lines[order]
        ids = [ids[i] for i in order]
        keep = np.ones(len(t), dtype=bool)
        rel = t - t[0] if len(t) else t
        if self.start_s is not None:
            keep &= rel >= self.start_s
        if self.end_s is not None:
            keep &= rel < self.end_s
        failed = keep & (output == 0)
        if failed.any() and not self.drop_failures:
            raise InputError(self.path, "0 output tokens (a failed request) cannot be simulated; set "
                                        "drop_failures=true to drop and count failures",
                             int(lines[np.flatnonzero(failed)[0]]), "output_length")
        keep &= ~failed
        idx = np.flatnonzero(keep)
        if self.max_requests is not None:
            idx = idx[: int(self.max_requests)]
        if idx.size == 0:
            raise InputError(self.path, f"no requests left after filtering {len(t)} rows", column="timestamp")
        sel_t = t[idx] - t[idx[0]]
        scale = float(self.rps_scale)
        if self.target_rate is not None:
            if sel_t[-1] <= 0:
                raise InputError(self.path, "target_rate needs at least two distinct timestamps", column="timestamp")
            scale = float(self.target_rate) * float(sel_t[-1]) / (len(idx) - 1)
        sel_ids = [ids[i] for i in idx]
        offsets = np.concatenate(([0], np.cumsum([len(x) for x in sel_ids]))).astype(np.int64)
        values = np.fromiter((h for x in sel_ids for h in x), dtype=np.int64, count=int(offsets[-1]))
        info = {"trace_rows": len(t), "trace_blank_lines": blank, "trace_failures_dropped": int(failed.sum()),
                "trace_filtered_out": len(t) - int(failed.sum()) - len(idx), "trace_rps_scale": scale,
                "trace_hash_ids": int(offsets[-1]), "trace_distinct_hash_ids": int(len(np.unique(values)))}
        return RequestTable(arrival=sel_t / scale, prompt=prompt[idx], output=output[idx], info=info,
                            hash_offsets=offsets, hash_values=values, hash_block_tokens=int(self.hash_block_tokens))


def _int(path: str, line: int, field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InputError(path, f"{field} is not an integer: {value!r}", line, field)
    if value < 0:
        raise InputError(path, f"{field} is negative: {value!r}", line, field)
    return int(value)


def read_mooncake(path: str, hash_block_tokens: int):
    """(timestamps in s, prompt, output, hash ids per row, line numbers, blank lines)."""
    t, prompt, output, ids, lines = [], [], [], [], []
    blank = 0
    with open(path, encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                blank += 1
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not a JSON object: {exc.msg}", n) from None
            if not isinstance(row, dict):
                raise InputError(path, "not a JSON object", n)
            for field in FIELDS:
                if field not in row:
                    raise InputError(path, f"missing field (a row needs {', '.join(FIELDS)})", n, field)
            ts = row["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not np.isfinite(ts) or ts < 0:
                raise InputError(path, f"timestamp is not a non-negative number of ms: {ts!r}", n, "timestamp")
            p = _int(path, n, "input_length", row["input_length"])
            o = _int(path, n, "output_length", row["output_length"])
            h = row["hash_ids"]
            if not isinstance(h, list):
                raise InputError(path, f"hash_ids is not a list: {h!r}", n, "hash_ids")
            h = [_int(path, n, "hash_ids", x) for x in h]
            if len(h) > -(-p // hash_block_tokens):
                raise InputError(path, f"{len(h)} hash ids for {p} prompt tokens (at most one per "
                                       f"{hash_block_tokens} tokens; set hash_block_tokens)", n, "hash_ids")
            t.append(float(ts) / 1000.0)
            prompt.append(p)
            output.append(o)
            ids.append(h)
            lines.append(n)
    if not t:
        raise InputError(path, "no requests in the file")
    return (np.array(t), np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64), ids,
            np.array(lines, dtype=np.int64), blank)
