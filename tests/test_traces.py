"""Trace replay: BurstGPT (both schemas) and Azure files, filters, scaling, cache, bad input."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simsched.errors import ConfigError, InputError
from simsched.workloads.trace_files import BURSTGPT, load_trace
from simsched.workloads.traces import AzureTrace, BurstGPTTrace

REPO = Path(__file__).resolve().parents[1]
# The real trace sample that ships with the project (data/traces/README.md): no file outside the repo.
AZURE_CODE = REPO / "data" / "traces" / "azure_llm_2023_code_sample.csv"

HEADER6 = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
HEADER8 = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type"
C, A = "Conversation log", "API log"
# (timestamp, model, prompt, response, log type): ties at 5 and 9, failures (response 0),
# a zero-prompt row, both models and both log types. Prompts are unique, to identify rows.
ROWS = [
    (5, "ChatGPT", 101, 20, C),
    (5, "GPT-4", 102, 0, A),      # failure
    (5, "GPT-4", 103, 30, A),
    (5, "ChatGPT", 104, 40, C),
    (7, "ChatGPT", 0, 11, C),      # zero prompt: kept, counted
    (9, "GPT-4", 106, 12, C),
    (9, "ChatGPT", 107, 13, A),
    (9, "ChatGPT", 108, 0, C),     # failure
    (12, "GPT-4", 109, 14, A),
    (20, "ChatGPT", 110, 15, C),
]


def write_burstgpt(path: Path, rows=ROWS, schema: int = 6, total=lambda p, r: p + r) -> Path:
    lines = [HEADER6 if schema == 6 else HEADER8]
    for i, (t, m, p, r, lt) in enumerate(rows):
        mid = f"{t},{m}" if schema == 6 else f"{t},sess{i % 3},{i * 0.5},{m}"
        lines.append(f"{mid},{p},{r},{total(p, r)},{lt}")
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(path: Path, **kw) -> "object":
    return BurstGPTTrace(path=str(path), cache_dir=kw.pop("cache_dir", None), **kw).generate()


def ok_rows(rows=ROWS):
    return [r for r in rows if r[3] > 0]


# ---------------------------------------------------------------- BurstGPT fixtures

@pytest.mark.parametrize("schema", [6, 8])
def test_burstgpt_replay_keeps_file_order_on_ties_and_drops_failures(tmp_path, schema):
    req = replay(write_burstgpt(tmp_path / "t.csv", schema=schema))
    good = ok_rows()
    assert list(req.prompt) == [r[2] for r in good]            # file order, ties included
    assert list(req.output) == [r[3] for r in good]
    np.testing.assert_array_equal(req.arrival, [r[0] - 5 for r in good])
    assert req.info["trace_rows"] == len(ROWS)
    assert req.info["trace_failures_dropped"] == 2
    assert req.info["trace_zero_prompt_rows"] == 1
    assert req.info["trace_filtered_out"] == 0
    assert req.info["trace_total_mismatch_rows"] == 0


def test_six_and_eight_column_files_replay_identically(tmp_path):
    a = replay(write_burstgpt(tmp_path / "a.csv", schema=6), models=["GPT-4"])
    b = replay(write_burstgpt(tmp_path / "b.csv", schema=8), models=["GPT-4"])
    np.testing.assert_array_equal(a.arrival, b.arrival)
    np.testing.assert_array_equal(a.prompt, b.prompt)


@pytest.mark.parametrize("kw, expect", [
    ({"models": ["GPT-4"]}, [103, 106, 109]),
    ({"models": ["ChatGPT"]}, [101, 104, 0, 107, 110]),
    ({"log_types": [A]}, [103, 107, 109]),
    ({"models": ["ChatGPT"], "log_types": [C]}, [101, 104, 0, 110]),
    ({"models": ["ChatGPT", "GPT-4"], "log_types": [A, C]}, [101, 103, 104, 0, 106, 107, 109, 110]),
    ({"start_s": 2, "end_s": 7}, [0, 106, 107]),                    # 7 <= t < 12 in file time
    ({"max_requests": 3}, [101, 103, 104]),
    ({"models": ["GPT-4"], "max_requests": 2}, [103, 106]),
])
def test_burstgpt_filters(tmp_path, kw, expect):
    req = replay(write_burstgpt(tmp_path / "t.csv"), **kw)
    assert list(req.prompt) == expect
    assert req.arrival[0] == 0.0                                   # relative to the first selected request
    assert req.info["trace_filtered_out"] + req.info["trace_failures_dropped"] + len(req) == len(ROWS)


def test_rate_scaling(tmp_path):
    path = write_burstgpt(tmp_path / "t.csv")
    base = replay(path)
    fast = replay(path, rps_scale=4.0)
    np.testing.assert_allclose(fast.arrival, base.arrival / 4.0, rtol=0, atol=1e-12)
    target = replay(path, target_rate=3.0)
    assert (len(target) - 1) / target.arrival[-1] == pytest.approx(3.0, rel=1e-12)
    np.testing.assert_allclose(target.arrival / target.arrival[-1], base.arrival / base.arrival[-1])
    assert BurstGPTTrace(path=str(path), target_rate=3.0, cache_dir=None).mean_rate == 3.0
    assert BurstGPTTrace(path=str(path), rps_scale=2.0, cache_dir=None).mean_rate == pytest.approx(
        2 * (len(base) - 1) / base.arrival[-1])


def test_failures_kept_is_an_error_naming_the_row(tmp_path):
    path = write_burstgpt(tmp_path / "t.csv")
    with pytest.raises(InputError, match=r"t\.csv:3 column 'Response tokens': 0 output tokens"):
        replay(path, drop_failures=False)
    # with failures filtered out by another filter, keeping failures is fine
    req = replay(path, drop_failures=False, models=["ChatGPT"], end_s=3)
    assert list(req.prompt) == [101, 104, 0]


def test_odd_rows_are_counted_not_dropped(tmp_path):
    req = replay(write_burstgpt(tmp_path / "t.csv", total=lambda p, r: p + r + (p == 103)))
    assert req.info["trace_total_mismatch_rows"] == 1
    assert req.info["trace_zero_prompt_rows"] == 1 and 0 in req.prompt


def test_small_step_back_is_resorted_stably_and_counted(tmp_path):
    rows = [(10, "ChatGPT", 1, 5, C), (12, "ChatGPT", 2, 5, C), (11, "ChatGPT", 3, 5, C), (12, "ChatGPT", 4, 5, C)]
    req = replay(write_burstgpt(tmp_path / "t.csv", rows), order_tolerance_s=1.0)
    assert list(req.prompt) == [1, 3, 2, 4]
    assert req.info["trace_reordered_rows"] == 1


# ---------------------------------------------------------------- bad input

def bad_file(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, match", [
    ("1,ChatGPT,10,abc,30,API log\n", r"bad\.csv:3 column 'Response tokens': token count is not an integer: 'abc'"),
    ("1,ChatGPT,10.5,3,30,API log\n", r"bad\.csv:3 column 'Request tokens': token count is not an integer"),
    ("x,ChatGPT,10,3,30,API log\n", r"bad\.csv:3 column 'Timestamp': timestamp is not a number: 'x'"),
    ("1,ChatGPT,,3,30,API log\n", r"bad\.csv:3 column 'Request tokens': missing value"),
    ("1,ChatGPT,10,3,30,API log,extra\n", r"bad\.csv:3: expected 6 fields, found 7"),
    ("-1,ChatGPT,10,3,13,API log\n", r"bad\.csv:3 column 'Timestamp': timestamp must be a finite number >= 0"),
    ("1,ChatGPT,10,-3,7,API log\n", r"bad\.csv:3 column 'Response tokens': token count must be >= 0"),
    ("9,ChatGPT,10,3,13,API log\n5,ChatGPT,10,3,13,API log\n",
     r"bad\.csv:4 column 'Timestamp': timestamp goes back 4 s, more than order_tolerance_s=1"),
])
def test_malformed_rows_name_file_line_and_column(tmp_path, body, match):
    path = bad_file(tmp_path, HEADER6 + "\n0,ChatGPT,10,3,13,API log\n" + body)
    with pytest.raises(InputError, match=match):
        replay(path)


def test_missing_file_and_unknown_schema(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        BurstGPTTrace(path=str(tmp_path / "nope.csv"))
    path = bad_file(tmp_path, "time,prompt,output\n1,2,3\n")
    with pytest.raises(InputError, match=r"bad\.csv:1: unknown trace schema: found columns \[time,prompt,output\]; "
                                         r"expected \[Timestamp,Model,.*\] or \[Timestamp,Session ID,"):
        BurstGPTTrace(path=str(path))
    with pytest.raises(InputError, match=r"expected \[TIMESTAMP,ContextTokens,GeneratedTokens\]"):
        AzureTrace(path=str(write_burstgpt(tmp_path / "t.csv")))
    with pytest.raises(InputError, match=r"empty\.csv:1: empty file"):
        BurstGPTTrace(path=str(bad_file(tmp_path, "", "empty.csv")))
    with pytest.raises(InputError, match=r"head\.csv:2: no data rows"):
        replay(bad_file(tmp_path, HEADER6 + "\n", "head.csv"))


def test_empty_selection_and_unknown_filter_values(tmp_path):
    path = write_burstgpt(tmp_path / "t.csv")
    with pytest.raises(InputError, match=r"Model 'GPT-5' does not occur in the trace; found: ChatGPT, GPT-4"):
        replay(path, models=["GPT-5"])
    with pytest.raises(InputError, match=r"no requests left after filtering 10 rows \(start_s=100\.0"):
        replay(path, start_s=100.0)


def test_bad_options_are_config_errors(tmp_path):
    path = str(write_burstgpt(tmp_path / "t.csv"))
    with pytest.raises(ConfigError, match="rps_scale"):
        BurstGPTTrace(path=path, rps_scale=0)
    with pytest.raises(ConfigError, match="give rps_scale or target_rate, not both"):
        BurstGPTTrace(path=path, rps_scale=2.0, target_rate=1.0)
    with pytest.raises(ConfigError, match="end_s: must be > start_s"):
        BurstGPTTrace(path=path, start_s=5, end_s=5)


def test_azure_bad_datetime(tmp_path):
    path = bad_file(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,4,1\r\n"
                              "2023-11-16 18:17:0x,4,1\r\n")
    with pytest.raises(InputError, match=r"bad\.csv:3 column 'TIMESTAMP': timestamp is not a datetime"):
        AzureTrace(path=str(path), cache_dir=None).generate()


# ---------------------------------------------------------------- cache

def test_parquet_cache_is_reused_and_invalidated(tmp_path):
    path = write_burstgpt(tmp_path / "t.csv")
    cache = tmp_path / "cache"
    first = load_trace(path, BURSTGPT, cache)
    assert not first.from_cache and len(list(cache.glob("*.parquet"))) == 1
    second = load_trace(path, BURSTGPT, cache)
    assert second.from_cache
    pd.testing.assert_frame_equal(first.frame, second.frame)
    write_burstgpt(path, ROWS[:4])                                  # edited file: new key
    os.utime(path, ns=(1, 1))
    third = load_trace(path, BURSTGPT, cache)
    assert not third.from_cache and len(third.frame) == 4
    req = BurstGPTTrace(path=str(path), cache_dir=str(cache)).generate()
    assert req.info["trace_from_cache"] == 1
    assert load_trace(path, BURSTGPT, None).from_cache is False


# ---------------------------------------------------------------- real Azure trace, end to end

def _azure_expected_seconds(path: Path) -> list[Decimal]:
    """Independent parse: exact decimal seconds since the first row (no pandas/pyarrow)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            day, clock = row["TIMESTAMP"].split(" ")
            h, m, s = clock.split(":")
            days = date.fromisoformat(day).toordinal()
            out.append(Decimal(days * 86400) + Decimal(h) * 3600 + Decimal(m) * 60 + Decimal(s))
    return [t - out[0] for t in out]


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_azure_code_trace_full_replay(tmp_path, scale):
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir
    from simsched.config import register_configs
    from simsched.run import run

    expected = _azure_expected_seconds(AZURE_CODE)
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[
            "workload=azure_trace", f"workload.path={AZURE_CODE}", f"workload.rps_scale={scale}",
            f"workload.cache_dir={tmp_path / 'cache'}", "tracking=none", "output.plots=false",
            "output.quiet=true", "output.batches_table=false"])
    metrics = run(cfg, tmp_path / "run")
    n = len(expected)
    assert n == 1000  # data rows in the sample (data/traces/README.md)
    assert metrics["generated"] == metrics["arrived"] == n
    assert metrics["completed"] + metrics["rejected"] + metrics["unfinished"] == n
    assert metrics["workload_requests"] == n and metrics["workload_trace_failures_dropped"] == 0
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["workload_requests"] == n
    req = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    want = np.array([float(t / Decimal(str(scale))) for t in expected])
    assert np.max(np.abs(req["arrival"].to_numpy() - want)) < 1e-6
    src = pd.read_csv(AZURE_CODE)
    np.testing.assert_array_equal(req["prompt_tokens"], src["ContextTokens"])
    np.testing.assert_array_equal(req["output_tokens"], src["GeneratedTokens"])


# ---------------------------------------------------------------- the command line

def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "simsched", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_bad_trace_is_one_line_exit_2(tmp_path):
    # found only while the replay loads (after the precheck): the row's line and column
    bad = bad_file(tmp_path, HEADER6 + "\n0,ChatGPT,10,3,13,API log\n1,GPT-4,7,oops,13,API log\n")
    proc = cli(tmp_path, "workload=burstgpt_trace", f"workload.path={bad}", "tracking=none")
    assert_one_line_exit_2(proc, "bad.csv:3 column 'Response tokens'", "'oops'")
    # the path left out
    proc = cli(tmp_path, "workload=azure_trace", "tracking=none")
    assert_one_line_exit_2(proc, "workload.path: is required")
    # a BurstGPT file given as an Azure trace
    proc = cli(tmp_path, "workload=azure_trace", f"workload.path={bad}", "tracking=none")
    assert_one_line_exit_2(proc, "unknown trace schema", "found columns [Timestamp,Model,")


def test_cli_replays_burstgpt_and_prints_summary(tmp_path):
    path = write_burstgpt(tmp_path / "t.csv", schema=8)
    proc = cli(tmp_path, "workload=burstgpt_trace", f"workload.path={path}", "workload.models=[ChatGPT]",
               "tracking=none", "output.plots=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    assert "workload: 5 requests over 15.0 s" in proc.stdout
    assert "1 failures dropped" in proc.stdout and "1 with 0 prompt tokens" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["arrived"] == metrics["completed"] == 5
    assert metrics["workload_trace_failures_dropped"] == 1
    assert list((tmp_path / ".cache" / "simsched" / "traces").glob("t-burstgpt-*.parquet"))


def test_blank_lines_are_counted_and_keep_line_numbers(tmp_path):
    ok = bad_file(tmp_path, HEADER6 + "\n0,ChatGPT,10,3,13,API log\n\n2,ChatGPT,11,3,14,API log\n", "ok.csv")
    req = replay(ok)
    assert list(req.prompt) == [10, 11] and req.info["trace_blank_lines"] == 1
    bad = bad_file(tmp_path, HEADER6 + "\n0,ChatGPT,10,3,13,API log\n\n2,ChatGPT,,3,14,API log\n")
    with pytest.raises(InputError, match=r"bad\.csv:4 column 'Request tokens': missing value"):
        replay(bad)


@pytest.mark.parametrize("schema, body, match", [
    ("azure", b"2023-11-16 18:17:04.1+00:00,4,1\r\n", r"a\.csv:3 column 'TIMESTAMP': timestamp has a time zone"),
    ("azure", b"2023-11-16T18:17:04Z,4,1\r\n", r"a\.csv:3 column 'TIMESTAMP': timestamp has a time zone"),
    ("azure", b"1500-01-01 00:00:00,4,1\r\n", r"a\.csv:3 column 'TIMESTAMP': timestamp is outside the years 1678-2261"),
    ("burstgpt", b"1,ChatGPT,99999999999999999999,3,13,API log\n",
     r"a\.csv:3 column 'Request tokens': token count must be <= 1,000,000,000 \(got 99999999999999999999\)"),
    ("burstgpt", b"1,ChatGPT,10,9223372036854775800,13,API log\n",
     r"a\.csv:3 column 'Response tokens': token count must be <= 1,000,000,000"),
    ("burstgpt", b"1,Chat\xe9GPT,10,3,13,API log\n", r"a\.csv:3 column 'Model': not UTF-8 text \(byte 0xe9"),
])
def test_zones_huge_counts_and_latin1_name_file_line_and_column(tmp_path, schema, body, match):
    head = (b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,4,1\r\n" if schema == "azure"
            else (HEADER6 + "\n0,ChatGPT,10,3,13,API log\n").encode())
    path = tmp_path / "a.csv"
    path.write_bytes(head + body)
    cls = AzureTrace if schema == "azure" else BurstGPTTrace
    with pytest.raises(InputError, match=match):
        cls(path=str(path), cache_dir=None).generate()


def test_latin1_header_names_line_1(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"Timestamp,Mod\xe8l\n1,2\n")
    with pytest.raises(InputError, match=r"h\.csv:1: not UTF-8 text"):
        BurstGPTTrace(path=str(path))
