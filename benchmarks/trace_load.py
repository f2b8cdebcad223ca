"""Time loading a BurstGPT-size trace: ``python -m benchmarks.trace_load [ROWS]`` (from the project root).

Writes a synthetic BurstGPT-schema CSV (default 1,429,737 rows, like file 1: integer timestamps
over 61 days, both models and log types, ~1.8% failures) into a temporary folder, then times
pandas.read_csv (baseline), the cold load (CSV parse + Parquet cache write), the warm load
(Parquet cache) and a full replay selection from the cache. Nothing is kept.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from simsched.workloads.trace_files import BURSTGPT, load_trace
from simsched.workloads.traces import BurstGPTTrace


def write_trace(path: Path, n: int, rng: np.random.Generator) -> None:
    t = np.sort(rng.integers(0, 61 * 86400, size=n))
    prompt = np.maximum(rng.zipf(1.6, size=n) * 20, 1).clip(max=32000)
    response = np.rint(rng.lognormal(5.3, 0.9, size=n)).astype(np.int64)
    response[rng.random(n) < 0.018] = 0
    pd.DataFrame({
        "Timestamp": t,
        "Model": np.where(rng.random(n) < 0.8, "ChatGPT", "GPT-4"),
        "Request tokens": prompt,
        "Response tokens": response,
        "Total tokens": prompt + response,
        "Log Type": np.where(rng.random(n) < 0.6, "Conversation log", "API log"),
    }).to_csv(path, index=False)


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<42} {time.perf_counter() - t0:7.2f} s")
    return out


def main(n: int = 1_429_737) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, cache = Path(tmp) / "burstgpt_synthetic.csv", Path(tmp) / "cache"
        timed(f"write {n:,}-row CSV", lambda: write_trace(path, n, np.random.default_rng(0)))
        print(f"file size {path.stat().st_size / 1e6:.1f} MB")
        timed("baseline: pandas.read_csv (all columns)", lambda: pd.read_csv(path))
        timed("cold: CSV parse + checks + Parquet write", lambda: load_trace(path, BURSTGPT, cache))
        trace = timed("warm: Parquet cache", lambda: load_trace(path, BURSTGPT, cache))
        assert trace.from_cache and len(trace.frame) == n
        req = timed("warm replay selection (ChatGPT, API log)",
                    lambda: BurstGPTTrace(path=str(path), models=["ChatGPT"], log_types=["API log"],
                                          cache_dir=str(cache)).select())
        print(f"selected {len(req):,} requests; {req.info['trace_failures_dropped']:,} failures dropped")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_429_737)
