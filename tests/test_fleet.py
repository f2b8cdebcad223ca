"""Heterogeneous fleets (``gpus.pools``, engine=continuous): each pool runs at its own speed with
its own KV cache, one pool equals the plain ``gpus.count`` form exactly, the per-pool metrics
add up to the whole run's, and bad pool specs are one-line errors naming the field."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from continuous_cases import STEP, differences
from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.engines.continuous.fleet import PoolSpec
from simsched.errors import ConfigError
from simsched.roofline import Roofline
from simsched.run import build_components, run, simulate_config
from simsched.workloads import RequestTable
from test_continuous_run import cfg_with

MIXED = ["gpus=mixed", "router=least_tokens", "predictor=noisy", "workload.arrivals.rate=30"]


def test_one_pool_is_the_plain_form_exactly():
    r = np.random.default_rng(4)
    n = 300
    req = RequestTable(np.sort(r.uniform(0, 10, n)), r.integers(10, 500, n), r.integers(1, 300, n))
    eng = ContinuousEngine(max_num_seqs=16, num_gpu_blocks=600, max_model_len=2048)
    plain = Hardware(3, 600 * 16, "t", None)
    pooled = Hardware(3, 600 * 16, "t", None, (PoolSpec("only", Hardware(3, 600 * 16, "t", None), STEP),))
    a, _ = simulate_continuous(req, eng, STEP, plain)
    b, _ = simulate_continuous(req, eng, STEP, pooled)
    assert differences(a, b) == [] and np.array_equal(a.replica, b.replica)
    assert b.pool_names == ("only",) and (b.pool == 0).all()


def test_each_pool_runs_at_its_own_speed():
    """The same request alone on an H100 and on an A100 replica (roofline presets)."""
    h100, a100 = (Roofline(gpu=g) for g in ("h100", "a100_80gb"))
    pools = (PoolSpec("h100", Hardware(1, 40000, "h100", 80), h100.step_model),
             PoolSpec("a100", Hardware(1, 40000, "a100_80gb", 80), a100.step_model))
    req = RequestTable(np.array([0.0, 0.0]), np.array([500, 500]), np.array([200, 200]))
    res, _ = simulate_continuous(req, ContinuousEngine(), h100.step_model, Hardware(2, 40000, "h100", 80, pools))
    assert list(res.pool) == [0, 1]
    ratio = res.e2e[1] / res.e2e[0]
    expect = a100.step_model.c0_s / h100.step_model.c0_s      # decode of one sequence: weight streaming
    assert ratio == pytest.approx(expect, rel=0.15)
    assert res.settings["pools"]["a100"]["max_num_seqs"] == 256       # vLLM's default per GPU class
    assert res.settings["pools"]["h100"]["max_num_seqs"] == 1024
    assert res.settings["pools"]["a100"]["max_num_batched_tokens"] == 2048
    assert res.settings["pools"]["h100"]["max_num_batched_tokens"] == 8192


def test_pool_metrics_add_up_to_the_whole(tmp_path):
    cfg = cfg_with(*MIXED)
    metrics = run(cfg, tmp_path)
    pools = ("h100", "a100")
    assert [metrics[f"pool.{p}.replicas"] for p in pools] == [2, 4]
    for key in ("completed", "rejected", "unfinished", "measured"):
        assert sum(metrics[f"pool.{p}.{key}"] for p in pools) == metrics[key]
    assert sum(metrics[f"pool.{p}.routed"] for p in pools) == metrics["arrived"]
    for key in ("throughput_rps", "goodput_rps"):
        assert sum(metrics[f"pool.{p}.{key}"] for p in pools) == pytest.approx(metrics[key], rel=1e-12)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "requests.parquet").to_pandas()
    counts = table["pool"].astype(str).value_counts()
    assert {p: int(counts[p]) for p in pools} == {p: metrics[f"pool.{p}.routed"] for p in pools}
    # The faster H100 replicas serve more requests each (see also the speed-weighting test below).
    assert metrics["pool.h100.routed"] / 2 > metrics["pool.a100.routed"] / 4


@pytest.mark.parametrize("override, key", [
    ("gpus.pools.0.count=0", "gpus.pools[0].count"),
    ("gpus.pools.1.gpu=tpu", "gpus.pools[1].gpu"),
    ("gpus.pools.1.name=h100", "gpus.pools[1].name"),
    ("+gpus.pools.0.speed=2", "gpus.pools[0].speed"),
    ("+gpus.pools.0.kv_capacity_tokens=-5", "gpus.pools[0].kv_capacity_tokens"),
    ("gpus.pools=[]", "gpus.pools"),
])
def test_bad_pool_specs_name_their_field(override, key):
    with pytest.raises(ConfigError) as err:
        build_components(cfg_with("gpus=mixed", override))
    assert err.value.key == key


def test_pools_need_the_continuous_engine_and_a_roofline_for_gpu_presets():
    with pytest.raises(ConfigError, match="gpus.pools"):
        build_components(cfg_with("gpus=mixed", "engine=run_to_completion", "scheduler=static_fifo"))
    with pytest.raises(ConfigError, match=r"gpus.pools\[0\].gpu"):
        build_components(cfg_with("gpus=mixed", "latency_model=affine"))


def test_bad_pool_on_the_command_line_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simsched", "engine=continuous", "gpus=mixed", "tracking=none",
                           "gpus.pools.0.count=-1", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "gpus.pools[0].count" in lines[0], proc.stderr


def test_least_tokens_weighs_replicas_by_speed():
    """Three equal requests at once on [A100, H100]: the first goes to replica 0 (tie), the
    second to the empty H100; the third sees equal tokens on both, and only speed weighting
    sends it to the faster H100 (T/1 < T/speed_A100)."""
    from simsched.engines.continuous.routing import Router

    h100, a100 = (Roofline(gpu=g) for g in ("h100", "a100_80gb"))
    pools = (PoolSpec("a100", Hardware(1, 40000, "a100_80gb", 80), a100.step_model),
             PoolSpec("h100", Hardware(1, 40000, "h100", 80), h100.step_model))
    req = RequestTable(np.zeros(3), np.full(3, 100), np.full(3, 50))
    res, _ = simulate_continuous(req, ContinuousEngine(), h100.step_model, Hardware(2, 40000, "h100", 80, pools),
                                 router=Router("least_tokens"), predicted=np.full(3, 50))
    assert list(res.pool) == [0, 1, 1]
