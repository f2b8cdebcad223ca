"""engine=continuous through the config, the run folder and the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from simsched.config import register_configs
from simsched.errors import ConfigError
from simsched.run import build_components, run, simulate_config
from test_config import CONF


def cfg_with(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["engine=continuous", "tracking=none",
                                                        "workload.num_requests=300", *overrides])


def test_continuous_selects_vllm_and_a_step_latency_model():
    comps = build_components(cfg_with())
    assert type(comps.engine).__name__ == "ContinuousEngine"
    assert type(comps.scheduler).__name__ == "VllmScheduler"
    assert type(comps.latency_model).__name__ == "Roofline"


def test_continuous_run_metrics_follow_vllm_benchmark_definitions():
    res, m, _ = simulate_config(cfg_with())
    assert m["arrived"] == m["completed"] + m["rejected"] + m["unfinished"] == 300
    for key in ("ttft", "tpot", "itl", "latency"):
        for stat in ("mean", "p50", "p90", "p99"):
            assert m[f"{key}_{stat}_s"] == m[f"{key}_{stat}_s"], (key, stat)   # not NaN
    assert m["engine_max_num_seqs"] == 1024 and m["engine_max_num_batched_tokens"] == 8192   # H100 serve defaults
    assert 0 < m["goodput_rps"] <= m["throughput_rps"]


def test_a100_gets_the_small_gpu_defaults():
    m = simulate_config(cfg_with("gpus=a100_40gb", "engine.max_model_len=8192"))[1]
    assert (m["engine_max_num_batched_tokens"], m["engine_max_num_seqs"]) == (2048, 256)


def test_static_fifo_is_fcfs_with_its_batch_size_as_max_num_seqs():
    m = simulate_config(cfg_with("scheduler=static_fifo"))[1]
    assert m["engine_max_num_seqs"] == 8


@pytest.mark.parametrize("overrides,key", [
    (["scheduler=static_fifo", "engine.policy=priority"], "engine.policy"),
    (["latency_model=synthetic"], "latency_model"),
    (["engine.max_num_seqs=0"], "engine.max_num_seqs"),
    (["engine.policy=lifo"], "engine.policy"),
    (["engine.max_model_len=200000"], "gpus.kv_capacity_tokens"),
])
def test_bad_combinations_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as exc:
        build_components(cfg_with(*overrides))
    assert str(exc.value).startswith(f"{key}:")


def test_affine_maps_to_a_step_form():
    """β0 → c0, β1 → c_dec: the continuous engine runs Pang et al.'s affine model."""
    m = simulate_config(cfg_with("latency_model=affine"))[1]
    assert m["completed"] == 300
    assert m["tpot_p50_s"] > 0.030                      # a decode step costs at least β0 = 30 ms


def test_vllm_scheduler_needs_the_continuous_engine():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["scheduler=vllm", "tracking=none"])
    with pytest.raises(ConfigError, match="^scheduler: vllm"):
        build_components(cfg)


def test_run_folder_holds_tables_and_metrics(tmp_path):
    cfg = cfg_with("engine.steps_table=true", "output.plots=false", "output.quiet=true")
    metrics = run(cfg, tmp_path)
    import pyarrow.parquet as pq

    req = pq.read_table(tmp_path / "requests.parquet").to_pandas()
    ts = pq.read_table(tmp_path / "timeseries.parquet").to_pandas()
    steps = pq.read_table(tmp_path / "steps.parquet").to_pandas()
    assert len(req) == 300 and {"ttft", "tpot", "e2e", "itl_max", "preemptions", "prefix_hit_tokens",
                                "replica", "status", "reason"} <= set(req.columns)
    assert set(ts.columns) == {"time", "replica", "running", "waiting", "kv_blocks_used"}
    assert len(steps) == metrics["sim_steps"]
    assert json.loads((tmp_path / "metrics.json").read_text())["completed"] == metrics["completed"]


def test_command_line_error_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "simsched", "engine=continuous", "engine.policy=lifo",
                          "tracking=none"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: engine.policy: unknown value (got 'lifo'); allowed: fcfs, priority"]
