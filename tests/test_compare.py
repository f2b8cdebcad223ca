"""python -m simsched.compare end to end on the shipped real vLLM run, and a check that a broken
simulated side shows: a step time twice too slow must give large errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

EXAMPLE = REPO / "data" / "vllm_runs" / "codellama34b_h100_guidellm_sweep.csv"
# The measured server's settings (data/vllm_runs/README.md): vLLM 0.11.0 schedules synchronously
# and admits a waiting request on its first chunk.
SERVER = ["engine.max_num_batched_tokens=4096", "engine.max_num_seqs=256", "engine.num_gpu_blocks=2537",
          "engine.max_model_len=4096", "engine.async_scheduling=false", "engine.full_sequence_gate=false",
          "gpus=h100", "gpus.count=1"]


def compare(*args: str):
    from simsched.app.compare import main

    return main([str(EXAMPLE), *args])


def test_the_shipped_run_replays_with_small_errors_where_calibrated(tmp_path, capsys):
    out = tmp_path / "cmp"
    res = compare("--fit-isolated", "--by", "phase", "--out", str(out), "tracking=none", *SERVER)
    text = capsys.readouterr().out
    assert res["counts"] == {"measured_requests": 197, "measured_failed": 0, "replayed": 197,
                             "simulated_completed": 197, "simulated_rejected": 0, "simulated_unfinished": 0}
    table = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert len(table) == 6 * 14 and list(dict.fromkeys(table["group"])) == [
        "all", "synchronous", "throughput", "constant_1.95", "constant_2.90", "constant_3.84"]
    err = {(r.group, r.metric, r.stat): float(r.rel_error) for r in table.itertuples()}
    # The step time is fitted to the synchronous phase's requests: there the replay must agree.
    for metric in ("ttft", "tpot", "e2e"):
        assert abs(err[("synchronous", metric, "mean")]) < 0.05, metric
    # Out of sample (the loaded phases) it is a prediction; the README states the figures.
    assert all(np.isfinite(v) for v in err.values())
    for name in ("errors.csv", "requests.csv", "cdf.png", "summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    per_request = pd.read_csv(out / "requests.csv")
    assert len(per_request) == 197 and (per_request["simulated_status"] == "completed").all()
    # The table is computed from the per-request columns of both sides.
    row = table[(table.group == "all") & (table.metric == "ttft") & (table.stat == "mean")].iloc[0]
    assert row.simulated == pytest.approx(per_request["simulated_ttft_s"].mean(), rel=1e-12)
    assert row.measured == pytest.approx(per_request["measured_ttft_s"].mean(), rel=1e-12)
    row = table[(table.group == "throughput") & (table.metric == "e2e") & (table.stat == "p90")].iloc[0]
    burst = per_request[per_request["phase"] == "throughput"]
    assert row.simulated == pytest.approx(np.percentile(burst["simulated_e2e_s"], 90), rel=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit"]["requests"] == 40 and summary["counts"]["replayed"] == 197
    assert "step time fitted to 40 isolated requests" in text and "synchronous" in text


def test_the_comparison_is_deterministic(tmp_path):
    for name in ("a", "b"):
        compare("--out", str(tmp_path / name), "tracking=none", "latency_model=roofline",
                "latency_model.model=codellama_34b", *SERVER)
    a, b = ((tmp_path / n / "errors.csv").read_text() for n in ("a", "b"))
    assert a == b


def test_a_step_time_twice_too_slow_shows_large_errors():
    """The check that must fail when the simulated side is broken: the fitted step time agrees
    within 5% on the synchronous phase; the same step time doubled misses by far more."""
    from simsched.comparison import error_rows, summarize
    from simsched.engines.continuous import ContinuousEngine, Hardware
    from simsched.isolated_fit import fit_isolated
    from simsched.replay import replay_with
    from simsched.workloads.measured import read_measured

    run = read_measured(EXAMPLE)
    fit = fit_isolated(run, block_size=16, max_num_batched_tokens=4096)
    engine = ContinuousEngine(max_num_batched_tokens=4096, max_num_seqs=256, num_gpu_blocks=2537,
                              max_model_len=4096, async_scheduling=False, full_sequence_gate=False)
    hardware = Hardware(replicas=1, kv_capacity_tokens=2537 * 16, name="h100", memory_gib=80)
    sync = run.columns["phase"] == "synchronous"

    def errors(step):
        sim = replay_with(run, engine, step, hardware)
        m = summarize(run.arrival[sync], run.ttft[sync], run.e2e[sync], run.output[sync], run.ok[sync])
        s = summarize(run.arrival[sync], sim.ttft[sync], sim.e2e[sync], run.output[sync], sim.completed[sync])
        return {(r["metric"], r["stat"]): r["rel_error"] for r in error_rows(m, s)}

    good = errors(fit.step_time)
    f = fit.step_time
    slow = errors(dataclasses.replace(f, c0_s=2 * f.c0_s, c_pf_s=2 * f.c_pf_s, c_attn_s=2 * f.c_attn_s,
                                      c_ctx_s=2 * f.c_ctx_s))
    for key in (("ttft", "mean"), ("tpot", "mean"), ("e2e", "mean"), ("e2e", "p90")):
        assert abs(good[key]) < 0.05, key
        assert slow[key] > 0.8, (key, slow[key])


def test_tracking_logs_one_run_to_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/cmp.db"
    res = compare("--out", str(tmp_path / "out"), f"tracking.uri={uri}", "tracking.experiment=cmp",
                  "latency_model=roofline", "latency_model.model=codellama_34b", *SERVER)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert run.data.tags["simsched.kind"] == "compare" and run.data.tags["latency_model"] == "roofline"
    all_rows = {(r["metric"], r["stat"]): r for r in res["rows"] if r["group"] == "all"}
    assert run.data.metrics["rel_error_ttft_mean"] == pytest.approx(all_rows[("ttft", "mean")]["rel_error"])
    assert run.data.metrics["measured_request_throughput"] == pytest.approx(
        all_rows[("request_throughput", "")]["measured"])
    assert run.data.params["engine.max_num_batched_tokens"] == "4096"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"errors.csv", "requests.csv", "cdf.png", "summary.json", "config.yaml"} <= names


def test_an_unreachable_tracking_server_costs_a_warning_not_the_results(tmp_path, caplog):
    out = tmp_path / "out"
    compare("--out", str(out), "tracking.uri=http://127.0.0.1:9", "latency_model=roofline",
            "latency_model.model=codellama_34b", *SERVER)
    assert "MLflow tracking failed" in caplog.text
    assert (out / "errors.csv").is_file() and (out / "summary.json").is_file()


def test_a_vllm_bench_result_is_compared_too(tmp_path):
    """A vllm bench serve result without start_times: arrivals regenerated as vLLM draws them."""
    rng = np.random.default_rng(3)
    n = 30
    obj = {"backend": "vllm", "model_id": "codellama/CodeLlama-34b-Instruct-hf", "num_prompts": n,
           "request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None,
           "input_lens": rng.integers(200, 2000, n).tolist(), "output_lens": rng.integers(2, 60, n).tolist(),
           "ttfts": rng.uniform(0.05, 0.3, n).tolist(), "itls": [[0.03] * 10 for _ in range(n)],
           "errors": [""] * (n - 1) + ["timeout"]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(obj))
    from simsched.app.compare import main

    res = main([str(path), "--out", str(tmp_path / "out"), "tracking=none", "latency_model=roofline",
                "latency_model.model=codellama_34b", *SERVER])
    assert res["counts"]["measured_failed"] == 1 and res["counts"]["replayed"] == n - 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["arrivals"].startswith("regenerated") and summary["format"] == "vllm_bench"


def run_cli(tmp_path, *args):
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "simsched.compare", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["missing.csv", "tracking=none"], "missing.csv: no such file"),
    (["bad.csv", "tracking=none"], "bad.csv:3 column 'ttft_s': not a number: 'soon'"),
    ([str(EXAMPLE), "--by", "nope", "tracking=none"], "--by: no such column"),
    ([str(EXAMPLE), "engine=run_to_completion", "tracking=none"], "engine: the comparison replays through"),
    ([str(EXAMPLE), "engine.max_num_seqs=0", "tracking=none"], "engine.max_num_seqs: must be > 0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "bad.csv").write_text("arrival_s,prompt_tokens,output_tokens,ttft_s,e2e_s\n"
                                      "0,10,2,0.1,0.2\n1,10,2,soon,0.2\n")
    proc = run_cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
