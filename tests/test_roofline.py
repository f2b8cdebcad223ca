"""The roofline presets (simsched/roofline.py): hand-checked numbers, parameter counts against
the published ones, monotonicity, every preset composed and simulated, one-line errors, and
the YAML that ``python -m calibrate.roofline`` writes."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simsched.app.paths import config_dir
from simsched.config import build, register_configs
from simsched.errors import ConfigError
from simsched.latency import StepTime
from simsched.roofline import GIB, GPUS, MODELS, GpuSpec, Roofline, kv_capacity_tokens_for, step_time_for

ROOT = Path(__file__).resolve().parents[1]


def test_llama3_1_8b_on_h100_by_hand():
    """Every coefficient worked out on paper from the config.json and the datasheet."""
    m = step_time_for(GPUS["h100"], MODELS["llama3_1_8b"], bandwidth_efficiency=1.0, flops_efficiency=1.0, cpu_s=0.0)
    # Parameters: embeddings 128256·4096 = 525,336,576 (twice: untied LM head); per layer
    # q 4096·4096 + k, v 2·4096·1024 + o 4096·4096 + MLP 3·4096·14336 = 218,103,808, plus two
    # norms of 4096; 32 layers; final norm 4096.
    assert MODELS["llama3_1_8b"].num_params == 2 * 525_336_576 + 32 * (218_103_808 + 8192) + 4096 == 8_030_261_248
    # c0: every weight but the input embedding (a lookup), 2 bytes each, at 3.35 TB/s.
    assert m.c0_s == pytest.approx((8_030_261_248 - 525_336_576) * 2 / 3.35e12, rel=1e-12)
    assert m.c0_s == pytest.approx(4.4806e-3, rel=1e-4)
    # c_pf: 2 FLOPs per linear parameter at 989.5 TFLOP/s; c_dec adds the LM head's row.
    assert m.c_pf_s == pytest.approx(2 * 32 * 218_103_808 / 989.5e12, rel=1e-12)
    assert m.c_pf_s == pytest.approx(1.41068e-5, rel=1e-5)
    assert m.c_dec_s == pytest.approx(2 * (32 * 218_103_808 + 525_336_576) / 989.5e12, rel=1e-12)
    # c_ctx: K and V, 32 layers x 8 KV heads x 128 dims x 2 bytes = 131,072 bytes a token.
    assert MODELS["llama3_1_8b"].kv_bytes_per_token == 131_072
    assert m.c_ctx_s == pytest.approx(131_072 / 3.35e12, rel=1e-12)
    # c_attn: 4 FLOPs per dim per head per layer and (query, key) pair.
    assert m.c_attn_s == pytest.approx(4 * 32 * 32 * 128 / 989.5e12, rel=1e-12)
    # KV capacity: (80 GiB x 0.9 − 2 GiB) − 16,060,522,496 bytes of weights, over 131,072.
    assert kv_capacity_tokens_for(GPUS["h100"], MODELS["llama3_1_8b"]) == (70 * 2**30 - 16_060_522_496) // 131_072 == 450_907
    # A decode step of 64 sequences over 1,024 tokens each, by the same hand.
    t = m.step_time(0, 64, 64 * 1024)
    assert t == pytest.approx(4.48055e-3 + 64 * 1.516859e-5 + 65_536 * 3.912597e-8, rel=1e-5)


def test_efficiencies_and_cpu_scale_the_terms_they_name():
    pure = step_time_for(GPUS["h200"], MODELS["qwen2_5_1_5b"], bandwidth_efficiency=1.0, flops_efficiency=1.0, cpu_s=0.0)
    real = step_time_for(GPUS["h200"], MODELS["qwen2_5_1_5b"], bandwidth_efficiency=0.5, flops_efficiency=0.25, cpu_s=0.002)
    assert real.c0_s == pytest.approx(2 * pure.c0_s) and real.c_ctx_s == pytest.approx(2 * pure.c_ctx_s)
    assert real.c_pf_s == pytest.approx(4 * pure.c_pf_s) and real.c_attn_s == pytest.approx(4 * pure.c_attn_s)
    assert real.cpu_s == 0.002 and pure.cpu_s == 0.0
    # The H200 weight-read floor of this shape: ~3.1 GB at 4.8 TB/s ≈ 0.64 ms (issue 17's 0.65 ms).
    assert pure.c0_s == pytest.approx(1_543_714_304 * 2 / 4.8e12, rel=1e-12)
    assert 0.6e-3 < pure.c0_s < 0.7e-3


PUBLISHED_PARAMS = {"llama3_1_8b": 8_030_261_248, "qwen2_5_1_5b": 1_543_714_304,
                    "qwen3_32b": 32_762_123_264, "llama3_70b": 70_553_706_496}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_parameter_counts_match_the_published_ones(model):
    """8.03B, 1.54B (the shipped H200 grid's sidecar counted 1,543,714,304), 32.8B, 70.6B."""
    assert MODELS[model].num_params == PUBLISHED_PARAMS[model]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_parameter_counts_match_transformers(model):
    """The same shape built by transformers on the meta device (no memory, no download)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    s = MODELS[model]
    cls = {"llama3_1_8b": "LlamaConfig", "llama3_70b": "LlamaConfig", "qwen2_5_1_5b": "Qwen2Config",
           "qwen3_32b": "Qwen3Config"}[model]
    cfg = getattr(transformers, cls)(num_hidden_layers=s.num_layers, hidden_size=s.hidden_size,
                                     num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
                                     head_dim=s.head_dim, intermediate_size=s.intermediate_size,
                                     vocab_size=s.vocab_size, tie_word_embeddings=s.tie_embeddings)
    with torch.device("meta"):
        net = transformers.AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in net.parameters()) == s.num_params


@pytest.mark.parametrize("gpu,model", list(itertools.product(sorted(GPUS), sorted(MODELS))))
def test_step_time_grows_with_every_kind_of_work(gpu, model):
    m = step_time_for(GPUS[gpu], MODELS[model])
    base = m.step_time(512, 8, 8 * 1024, 512**2 / 2)
    assert m.step_time(1024, 8, 8 * 1024, 512**2 / 2) > base
    assert m.step_time(512, 16, 8 * 1024, 512**2 / 2) > base
    assert m.step_time(512, 8, 16 * 1024, 512**2 / 2) > base
    assert m.step_time(512, 8, 8 * 1024, 1024**2 / 2) > base
    b = np.arange(1, 257)
    assert np.all(np.diff(m.batch_time(b, 128, b * 512)) > 0)
    assert np.all(np.diff(m.batch_time(8, np.arange(1, 300), 8 * 512)) > 0)


def test_faster_hardware_and_smaller_models_give_shorter_steps():
    steps = {g: step_time_for(GPUS[g], MODELS["llama3_1_8b"]).step_time(0, 32, 32 * 2048) for g in GPUS}
    # Decode is bandwidth-bound: the order follows the datasheet bandwidths.
    by_bw = sorted(GPUS, key=lambda g: -GPUS[g].bandwidth_bytes_s)
    assert sorted(steps, key=steps.get) == by_bw
    sizes = {m: step_time_for(GPUS["h100"], MODELS[m], tensor_parallel=8).step_time(0, 32, 32 * 2048) for m in MODELS}
    assert sorted(sizes, key=sizes.get) == sorted(MODELS, key=lambda m: MODELS[m].num_params)
    one = step_time_for(GPUS["h100"], MODELS["llama3_70b"], tensor_parallel=2)
    two = step_time_for(GPUS["h100"], MODELS["llama3_70b"], tensor_parallel=4)
    assert two.c0_s == pytest.approx(one.c0_s / 2) and two.c_dec_s == pytest.approx(one.c_dec_s / 2)


def test_kv_capacity_follows_memory_and_model_size():
    big = GpuSpec("x", 1e12, 1e14, 160, "test")
    assert (kv_capacity_tokens_for(big, MODELS["llama3_1_8b"])
            > kv_capacity_tokens_for(GPUS["h100"], MODELS["llama3_1_8b"])
            > kv_capacity_tokens_for(GPUS["h100"], MODELS["qwen3_32b"]) > 0)
    assert kv_capacity_tokens_for(GPUS["h100"], MODELS["llama3_70b"]) <= 0
    lo = kv_capacity_tokens_for(GPUS["h100"], MODELS["llama3_1_8b"], gpu_memory_utilization=0.5)
    assert lo == (int((80 * 0.5 - 2) * GIB) - MODELS["llama3_1_8b"].weight_bytes) // 131_072


def test_every_preset_records_its_source():
    for g in GPUS.values():
        assert "datasheet" in g.source or "whitepaper" in g.source
    for m in MODELS.values():
        assert "config.json" in m.source


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides)


def _tp(gpu: str, model: str) -> int:
    for tp in (1, 2, 4, 8):
        if kv_capacity_tokens_for(GPUS[gpu], MODELS[model], tensor_parallel=tp) > 0:
            return tp
    raise AssertionError("no preset needs more than 8 GPUs")


@pytest.mark.parametrize("gpu,model", list(itertools.product(sorted(GPUS), sorted(MODELS))))
def test_every_preset_composes_with_its_kv_capacity(gpu, model):
    tp = _tp(gpu, model)
    cfg = _compose(["latency_model=roofline", f"latency_model.gpu={gpu}", f"latency_model.model={model}",
                    f"latency_model.tensor_parallel={tp}", "gpus=roofline", "tracking=none"])
    lm, gpus = build(cfg.latency_model, "latency_model"), build(cfg.gpus, "gpus")
    assert isinstance(lm, Roofline) and isinstance(lm.step_model, StepTime)
    assert lm.step_model == step_time_for(GPUS[gpu], MODELS[model], tensor_parallel=tp, name="roofline")
    assert gpus.kv_capacity_tokens == lm.kv_capacity_tokens == kv_capacity_tokens_for(
        GPUS[gpu], MODELS[model], tensor_parallel=tp)
    assert gpus.name == gpu


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_every_gpu_preset_runs_a_simulation(gpu, tmp_path):
    from simsched.run import run

    cfg = _compose(["latency_model=roofline", f"latency_model.gpu={gpu}", "latency_model.model=qwen2_5_1_5b",
                    "gpus=roofline", "tracking=none", "workload.num_requests=300", "output.quiet=true",
                    "output.plots=false", "output.requests_table=false", "output.batches_table=false"])
    m = run(cfg, tmp_path)
    assert m["completed"] + m["rejected"] + m["unfinished"] == 300 and m["completed"] > 0


def test_a_model_that_does_not_fit_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        Roofline(gpu="h100", model="llama3_70b")
    text = str(err.value)
    assert text.startswith("model: Llama-3-70B needs 131.4 GiB") and "raise tensor_parallel" in text
    assert Roofline(gpu="h100", model="llama3_70b", tensor_parallel=2).kv_capacity_tokens > 0
    for kwargs, key in [({"gpu": "b200"}, "gpu"), ({"model": "gpt5"}, "model"), ({"tensor_parallel": 0}, "tensor_parallel"),
                        ({"bandwidth_efficiency": 1.5}, "bandwidth_efficiency"), ({"flops_efficiency": 0.0}, "flops_efficiency"),
                        ({"cpu_s": -1.0}, "cpu_s")]:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            Roofline(**kwargs)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides, expected", [
    (["gpus=roofline"], "error: gpus.kv_capacity_tokens: gpus=roofline takes its KV capacity from latency_model=roofline"),
    (["latency_model=roofline", "latency_model.model=llama3_70b", "gpus=roofline"],
     "error: latency_model.model: Llama-3-70B needs 131.4 GiB of weights"),
    (["latency_model=roofline", "latency_model.gpu=b200"], "error: latency_model.gpu: unknown value (got 'b200')"),
])
def test_bad_roofline_configs_are_one_line_and_exit_2(overrides, expected, tmp_path):
    res = _cli(["simsched", *overrides, "tracking=none", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), res.stderr


def test_roofline_command_writes_options_equal_to_the_component(tmp_path):
    from calibrate import roofline as cmd

    assert cmd.main(["--gpu", "l40s", "--model", "qwen3_32b", "--yaml", str(tmp_path)]) == 0
    node = OmegaConf.load(tmp_path / "latency_model" / "roofline_l40s_qwen3_32b.yaml")
    values = {k: v for k, v in OmegaConf.to_container(node).items() if k not in ("defaults", "_target_")}
    expect = Roofline(gpu="l40s", model="qwen3_32b", tensor_parallel=2, name="roofline_l40s_qwen3_32b")
    assert StepTime(**values) == expect.step_model
    gpus = OmegaConf.load(tmp_path / "gpus" / "roofline_l40s_qwen3_32b.yaml")
    assert gpus.kv_capacity_tokens == expect.kv_capacity_tokens
    cfg = _compose([f"hydra.searchpath=[file://{tmp_path}]", "latency_model=roofline_l40s_qwen3_32b",
                    "gpus=roofline_l40s_qwen3_32b", "tracking=none"])
    assert build(cfg.latency_model, "latency_model") == expect.step_model
