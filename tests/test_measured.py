"""Reading measured runs: vllm bench serve results and plain CSV/JSONL tables, good and malformed."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simsched.errors import InputError, SimschedError
from simsched.workloads.measured import read_measured, vllm_bench_arrivals

from conftest import REPO

EXAMPLE = REPO / "data" / "vllm_runs" / "codellama34b_h100_guidellm_sweep.csv"


def bench(**over):
    """A small result in the shape vllm bench serve --save-result --save-detailed writes."""
    obj = {
        "date": "20260101-000000", "backend": "vllm", "model_id": "m", "num_prompts": 3,
        "request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None,
        "duration": 3.0, "completed": 2,
        "input_lens": [100, 200, 300], "output_lens": [3, 0, 1],
        "ttfts": [0.10, 0.0, 0.30], "itls": [[0.02, 0.03], [], []],
        "latencies": [0.15, 0.0, 0.30], "start_times": [10.5, 10.0, 11.0],
        "generated_texts": ["a", "", "b"], "errors": ["", "HTTP 500", ""],
    }
    obj.update(over)
    return obj


def write(tmp_path, obj, name="r.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_vllm_bench_result_is_read_with_failures_and_send_times(tmp_path):
    run = read_measured(write(tmp_path, bench()))
    assert run.fmt == "vllm_bench" and len(run) == 3
    # sorted by send time: request 1 (failed) first, then 0, then 2
    assert run.arrival.tolist() == [0.0, 0.5, 1.0]
    assert run.ok.tolist() == [False, True, True]
    assert run.prompt.tolist() == [200, 100, 300]
    assert run.output[1:].tolist() == [3, 1]
    assert run.ttft[1:].tolist() == [0.10, 0.30] and run.e2e[1:].tolist() == [0.15, 0.30]
    assert run.tpot[1] == pytest.approx(0.025) and math.isnan(run.tpot[2]) and math.isnan(run.tpot[0])
    assert run.arrival_source.startswith("timestamps") and run.meta["model_id"] == "m"


def test_vllm_bench_without_latencies_sums_the_itls(tmp_path):
    obj = bench()
    del obj["latencies"]
    run = read_measured(write(tmp_path, obj))
    assert run.e2e[1] == pytest.approx(0.10 + 0.02 + 0.03)


def test_older_result_without_start_times_regenerates_vllm_arrivals(tmp_path):
    obj = bench(request_rate=4.0, burstiness=0.5)
    del obj["start_times"]
    run = read_measured(write(tmp_path, obj), seed=7)
    assert run.arrival_source.startswith("regenerated")
    assert run.arrival.tolist() == pytest.approx(vllm_bench_arrivals(3, 4.0, 0.5, 7).tolist())


def test_vllm_arrivals_match_the_benchmarks_own_algorithm():
    """vllm/benchmarks/serve.py: np.random.seed(seed), one np.random.gamma per request (the
    first too), cumulative sum, rescaled so the last send is at n / rate."""
    n, rate, burst, seed = 50, 3.0, 0.7, 11
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        delay = np.cumsum([np.random.gamma(shape=burst, scale=1.0 / (rate * burst)) for _ in range(n)])
    finally:
        np.random.set_state(state)
    delay = delay * ((n / rate) / delay[-1])
    assert vllm_bench_arrivals(n, rate, burst, seed).tolist() == delay.tolist()
    assert vllm_bench_arrivals(n, rate, burst, seed + 1)[0] != delay[0]
    assert vllm_bench_arrivals(4, math.inf).tolist() == [0, 0, 0, 0]


def test_capped_concurrency_without_send_times_is_refused(tmp_path):
    obj = bench(max_concurrency=8)
    del obj["start_times"]
    with pytest.raises(SimschedError, match="unknowable.*max_concurrency=8"):
        read_measured(write(tmp_path, obj))


@pytest.mark.parametrize("change, message", [
    ({"ttfts": [0.1, 0.0]}, "key 'ttfts' has 2 entries, 'input_lens' has 3"),
    ({"ttfts": "x"}, "key 'ttfts': must be a list"),
    ({"input_lens": [100, -1, 300]}, "key 'input_lens' entry 1: must be an integer >= 0"),
    ({"ttfts": [0.1, 0.0, "slow"]}, "key 'ttfts' entry 2: must be a finite number"),
    ({"latencies": [0.05, 0.0, 0.30]}, "request 0: end-to-end latency 0.05 s < TTFT 0.1 s"),
    ({"output_lens": [0, 0, 1]}, "key 'output_lens' entry 0: a successful request needs >= 1 output token"),
    ({"itls": [[0.02, -1], [], []], "latencies": None}, "inter-token gaps must be finite numbers >= 0"),
    ({"request_rate": "fast", "start_times": None}, "key 'request_rate': not a number"),
])
def test_malformed_vllm_results_name_the_key(tmp_path, change, message):
    obj = bench(**change)
    with pytest.raises(InputError) as err:
        read_measured(write(tmp_path, obj), seed=0)
    assert str(err.value).startswith(str(tmp_path / "r.json"))
    assert message in str(err.value)


def test_json_problems_name_the_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n "input_lens": [1, 2],\n "ttfts": [0.1,, 0.2]\n}\n')
    with pytest.raises(InputError, match=r"bad.json:3: not valid JSON"):
        read_measured(bad)
    other = write(tmp_path, {"foo": 1}, "other.json")
    with pytest.raises(InputError, match="not a vllm bench serve result: missing key"):
        read_measured(other)
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps(bench()) + "\n" + json.dumps(bench(ttfts=[0.12, 0.0, 0.3])) + "\n")
    with pytest.raises(InputError, match="holds 2 benchmark results"):
        read_measured(two)
    assert read_measured(two, result_index=1).ttft[1] == 0.12
    with pytest.raises(InputError, match="no such file"):
        read_measured(tmp_path / "missing.json")
    with pytest.raises(InputError, match="unknown file type .txt"):
        (tmp_path / "x.txt").write_text("a")
        read_measured(tmp_path / "x.txt")


CSV = """arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s,itl_s,error,phase
0.0,100,5,0.1,0.5,,,a
0.2,200,3,0.2,,"[0.05, 0.1]",,b
0.1,300,4,0.3,,0.1,,a
0.3,400,0,,,,timeout,b
"""


def test_plain_csv_with_mean_or_listed_itl_and_extra_columns(tmp_path):
    p = tmp_path / "run.csv"
    p.write_text(CSV)
    run = read_measured(p)
    assert run.fmt == "table" and run.arrival.tolist() == [0.0, 0.1, 0.2, 0.3]
    assert run.prompt.tolist() == [100, 300, 200, 400]
    assert run.e2e[:3].tolist() == pytest.approx([0.5, 0.3 + 0.1 * 3, 0.2 + 0.15])
    assert run.ok.tolist() == [True, True, True, False]
    assert run.columns["phase"].tolist() == ["a", "a", "b", "b"]
    assert run.prefix_tokens is None


def test_plain_jsonl_is_the_same_as_csv(tmp_path):
    p = tmp_path / "run.jsonl"
    rows = [{"arrival_s": 1.0, "prompt_tokens": 10, "output_tokens": 2, "ttft_s": 0.1, "itl_s": [0.05],
             "prefix_tokens": 0},
            {"arrival_s": 1.5, "prompt_tokens": 20, "output_tokens": 1, "ttft_s": 0.2, "e2e_s": 0.2,
             "prefix_tokens": 16, "prefix_group": 3}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = read_measured(p)
    assert run.arrival.tolist() == [0.0, 0.5] and run.e2e.tolist() == pytest.approx([0.15, 0.2])
    assert run.prefix_tokens.tolist() == [0, 16] and run.prefix_group.tolist() == [0, 3]


@pytest.mark.parametrize("text, message", [
    ("arrival_s,prompt_tokens,output_tokens\n0,1,1\n", "missing column(s) ttft_s"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s\n0,1,1,0.1\n", "missing column e2e_s"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n0,1,1,0.1,0.2\n0,x,1,0.1,0.2\n",
     ":3 column 'prompt_tokens': not a number: 'x'"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n0,1,1,0.1,0.2\n1,2,2.5,0.1,0.2\n",
     ":3 column 'output_tokens': must be an integer"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n0,1,1,-0.1,0.2\n", ":2 column 'ttft_s': must be >= 0"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n0,1,1,0.5,0.2\n",
     ":2 column 'e2e_s': end-to-end latency 0.2 s < TTFT 0.5 s"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n0,1,1,0.1\n", ":2: expected 5 fields, found 4"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\nnan,1,1,0.1,0.2\n", ":2 column 'arrival_s': must be finite"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,itl_s\n0,1,2,0.1,[0.1\n", ":2 column 'itl_s': not a JSON list"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s,prefix_tokens\n0,10,1,0.1,0.2,11\n",
     ":2 column 'prefix_tokens': prefix_tokens 11 > prompt_tokens 10"),
    ("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n", "no data rows"),
])
def test_malformed_csv_names_line_and_column(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError) as err:
        read_measured(p)
    assert str(err.value).startswith(str(p)) and message in str(err.value), str(err.value)


def test_shipped_example_reads_and_matches_its_provenance_checks():
    """The shipped real run (data/vllm_runs): 197 requests, all completed, prompt/output totals of
    its synchronous phase equal to the guidellm report's (120,688 and 1,227 tokens)."""
    run = read_measured(EXAMPLE)
    assert len(run) == 197 and run.ok.all()
    sync = run.columns["phase"] == "synchronous"
    assert sync.sum() == 40
    assert run.prompt[sync].sum() == 120688 and run.output[sync].sum() == 1227
    assert (run.prefix_tokens == 1024).all() and (run.prefix_group == 0).all()
    assert np.all(run.e2e >= run.ttft) and run.arrival[0] == 0.0
