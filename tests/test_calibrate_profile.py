"""Profiler v2 on the CPU with the ``tiny`` preset (needs the ``calibrate`` extra): the whole chain
samples → gates → step fit → YAML → simulation, the GPU script's code path, the static cache
pinned per shape, the CSV fallback of a bare machine, local model folders, one-line errors."""
from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from calibrate import gpu_grid  # noqa: E402
from calibrate.fit import FitSpec, fit_and_report  # noqa: E402
from calibrate.presets import PRESETS, build_model, model_config  # noqa: E402
from calibrate.profiler import ProfileSpec, build_shape, profile, resolve_device, write_samples  # noqa: E402
from simsched.errors import ConfigError  # noqa: E402
from simsched.step_fit import SAMPLE_COLUMNS, read_samples  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = dict(model="tiny", device="cpu", prefill_batch_sizes=[1, 2, 4], prefill_lens=[8, 16, 32],
            decode_batch_sizes=[1, 2, 4], decode_contexts=[16, 32, 64], trials=5, prefill_steps=2, decode_steps=3,
            warmup_s=0.0, threads=1)
TINY_ARGS = ["model=tiny", "device=cpu", "threads=1", "prefill_batch_sizes=[1,2,4]", "prefill_lens=[8,16,32]",
             "decode_batch_sizes=[1,2,4]", "decode_contexts=[16,32,64]", "decode_steps=3", "warmup_s=0"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A module's CLI in a fresh interpreter, run from ``cwd`` (MLflow puts artefacts there)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_tiny_chain_samples_gates_fit_yaml_simulation(tmp_path):
    """Profiler v2 → raw samples → gates → StepTime fit → YAML → a simulation with it. CPU timings
    on a shared machine are noisy, so the fit runs with accept_noisy and must say whether the
    gates failed, in fit.json and in the option itself."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from simsched.config import build, register_configs
    from simsched.latency import StepTime
    from simsched.run import run

    result = profile(ProfileSpec(**TINY), tmp_path / "m", progress=False)
    samples = read_samples(result.samples_path)
    assert result.samples_path.suffix == ".parquet" and len(samples) == 9 * 5 * 2 + 9 * 5 * 3
    assert set(samples["trial"]) == set(range(5)) and (samples["seconds"] > 0).all()
    meta = json.loads(result.json_path.read_text())
    assert meta["status"] == "complete" and meta["timer"] == "perf_counter" and meta["graphs_used"] is False
    assert meta["torch_version"] == torch.__version__ and meta["transformers_version"] and meta["dtype"] == "float32"
    assert meta["spec"]["decode_contexts"] == [16, 32, 64] and meta["model_config"]["num_hidden_layers"] == 2

    out = fit_and_report(FitSpec(steps=str(result.samples_path), name="tiny_cpu", accept_noisy=True, plots=True),
                         tmp_path / "fit")
    report = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert report["accept_noisy"] is True and {g["name"] for g in report["gates"]["gates"]} >= {
        "trials", "spread", "monotone_batch_size_decode", "monotone_context_len_decode", "grows_with_work"}
    assert report["step"]["best_form"] in ("step", "step_attn") and report["rtc"]["best_form"]
    step_yaml = tmp_path / "fit" / "latency_model" / "tiny_cpu.yaml"
    text = step_yaml.read_text()
    assert ("WARNING NOISY" in text) == (not report["gates"]["passed"] or report["step"]["forms"][
        report["step"]["best_form"]]["heldout_mape"] > 0.2)
    assert {p.name for p in (tmp_path / "fit").iterdir()} >= {result.samples_path.name, "shapes.csv", "fit.json",
                                                              "step_fit.png", "grid_derived.csv"}
    node = OmegaConf.load(step_yaml)
    values = {k: v for k, v in OmegaConf.to_container(node).items() if k not in ("defaults", "_target_")}
    assert StepTime(**values) == out.result.step.best.component("tiny_cpu", values["source"])

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"hydra.searchpath=[file://{tmp_path / 'fit'}]", "latency_model=tiny_cpu",
                                 "tracking=none", "workload.num_requests=200", "output.quiet=true", "output.plots=false"])
    assert isinstance(build(cfg.latency_model, "latency_model"), StepTime)
    m = run(cfg, tmp_path / "sim")
    assert m["completed"] + m["rejected"] + m["unfinished"] == 200 and m["completed"] > 0


@pytest.mark.slow
def test_profile_cli_chain_with_mlflow(tmp_path):
    """python -m calibrate.profile (tiny, CPU) → samples + JSON + fit + YAML + one MLflow run; the
    YAML then drives `python -m simsched`."""
    db, run_dir = tmp_path / "mlflow.db", tmp_path / "run"
    res = run_cli(["calibrate.profile", *TINY_ARGS, "accept_noisy=true", f"tracking.uri=sqlite:///{db}",
                   "tracking.experiment=calibration", "name=tiny_cpu", f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    samples = next(run_dir.glob("steps_cpu_*_tiny.parquet"))
    fit = json.loads((run_dir / "fit.json").read_text())
    assert fit["latency_model"] == "tiny_cpu" and fit["accept_noisy"] is True

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("calibration").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["measured.model"] == "tiny" and run.data.params["step_best_form"] == fit["step"]["best_form"]
    assert run.data.params["accept_noisy"] == "True"
    assert run.data.metrics["gates_passed"] == float(fit["gates"]["passed"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {samples.name, samples.with_suffix(".json").name, "fit.json", "step_fit.png", "shapes.csv",
            "latency_model"} <= names
    sim = tmp_path / "sim"
    res = run_cli(["simsched", "--config-dir", str(run_dir), "latency_model=tiny_cpu", "tracking=none",
                   "workload.num_requests=200", f"hydra.run.dir={sim}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((sim / "metrics.json").read_text())["completed"] == 200


def test_noisy_samples_are_refused_by_the_cli_without_accept_noisy(tmp_path):
    """A refused fit is one line naming the file, exit 2, and no run folder."""
    import pandas as pd

    rows = [("decode", b, 1, c, t, s, 0.001 * (1 + b / 8) * (1 + (0.5 if t == 2 else 0.0)))
            for b in (1, 2, 4) for c in (16, 32) for t in range(5) for s in range(3)]
    rows += [("prefill", b, p, p, t, s, 0.002 * b * p / 8) for b in (1, 2, 4) for p in (8, 16) for t in range(5)
             for s in range(2)]
    path = tmp_path / "steps_x.csv"
    pd.DataFrame(rows, columns=SAMPLE_COLUMNS).to_csv(path, index=False)
    res = run_cli(["calibrate.fit", f"steps={path}", "tracking=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: fails the calibration quality gates (spread: ")
    assert not (tmp_path / "run").exists()


def test_gpu_script_code_path_on_cpu(tmp_path, capsys):
    """calibrate.gpu_grid (issue 17's GPU run) with only its model and sizes changed."""
    rc = gpu_grid.main(["--out", str(tmp_path), "--models", "tiny", "--device", "cpu", "--dtype", "float32",
                        "--prefill-batch-sizes", "1,3", "--prefill-lens", "4,8", "--decode-batch-sizes", "1,3",
                        "--decode-contexts", "8,12", "--trials", "5", "--decode-steps", "2", "--prefill-steps", "1",
                        "--warmup-s", "0", "--threads", "1", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "trial spread" in out and "steps_cpu_" in out
    samples = read_samples(next(tmp_path.glob("steps_cpu_*_tiny.parquet")))
    shapes = sorted({tuple(r) for r in samples[["phase", "batch_size", "new_tokens", "context_len"]].itertuples(index=False)})
    assert shapes == [("decode", b, 1, c) for b in (1, 3) for c in (8, 12)] + [("prefill", b, p, p) for b in (1, 3)
                                                                             for p in (4, 8)]
    meta = json.loads(next(tmp_path.glob("steps_cpu_*_tiny.json")).read_text())
    assert meta["spec"]["trials"] == 5 and meta["status"] == "complete" and meta["cpu_threads"] == 1
    run = json.loads((tmp_path / "gpu_run.json").read_text())
    assert run["models"]["tiny"]["status"] == "complete" and run["wall_s"] > 0
    assert (tmp_path / "summary_tiny.txt").read_text().startswith("phase")


def test_gpu_script_defaults_are_the_issue_17_measurement():
    args = gpu_grid.parse_args(["--out", "x"])
    assert args.models.split(",") == ["qwen2_5_1_5b", "llama3_1_8b"] and args.device == "cuda"
    assert args.dtype == "bfloat16" and args.graphs == "auto" and args.trials >= 5
    assert args.decode_batch_sizes == [1, 8, 32, 64, 128, 256] and args.decode_contexts == [128, 512, 1024, 2048]
    assert set(args.prefill_batch_sizes) <= set(args.decode_batch_sizes) and len(args.prefill_batch_sizes) >= 3
    # Two models, each stopped from starting new shapes after its budget: well inside 8 minutes.
    assert 2 * args.budget_s + 60 < 8 * 60


def test_static_cache_spans_the_context_and_replays_in_place():
    """Each shape's cache is exactly its context long, and a replayed step writes the same slot."""
    from calibrate.profiler import resolve_dtype

    device = torch.device("cpu")
    model = build_model("tiny", device, torch.float32)
    gen = torch.Generator().manual_seed(0)
    for phase, b, n, ctx in (("decode", 3, 1, 24), ("prefill", 2, 10, 10)):
        shape = build_shape(model, phase, b, n, ctx, device, resolve_dtype("auto", device), gen, use_graphs=False)
        cache = shape.keep[0]
        with torch.inference_mode():
            for _ in range(4):
                shape.prepare()
                shape.step()
        layer = cache.layers[0]
        assert tuple(layer.keys.shape[:1]) == (b,) and layer.keys.shape[-2] == ctx
        assert int(layer.cumulative_length) == ctx  # pinned at ctx − n before each step, + n after it


def test_samples_fall_back_to_csv_without_pyarrow(tmp_path, monkeypatch):
    """A bare GPU machine may lack pyarrow: the samples go to CSV and read back the same."""
    rows = [{"phase": "decode", "batch_size": 2, "new_tokens": 1, "context_len": 8, "trial": t, "step": 0,
             "seconds": 0.001 + t * 1e-6, "graphs": 0, "timer": "perf_counter"} for t in range(3)]
    (tmp_path / "a").mkdir()
    parquet = write_samples(tmp_path / "a" / "steps", rows)
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    csv_path = write_samples(tmp_path / "steps", rows)
    monkeypatch.undo()
    assert parquet.suffix == ".parquet" and csv_path.suffix == ".csv"
    a, b = read_samples(parquet), read_samples(csv_path)
    assert a.equals(b)


def test_time_budget_skips_shapes_and_says_so(tmp_path):
    spec = ProfileSpec(**{**TINY, "budget_s": 1e-6})
    result = profile(spec, tmp_path, progress=False)
    assert result.rows == [] and {s["reason"] for s in result.skipped} == {"time budget"}
    meta = json.loads(result.json_path.read_text())
    assert meta["status"] == "partial" and len(meta["skipped"]) == 18


def test_local_model_folder_with_and_without_weights(tmp_path):
    model = build_model("tiny", torch.device("cpu"), torch.float32)
    model.save_pretrained(tmp_path / "weights")
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((tmp_path / "weights" / "config.json").read_text())
    for folder, source in (("weights", "local folder (its weights)"),
                           ("config_only", "local folder config (random weights)")):
        spec = ProfileSpec(**{**TINY, "model": str(tmp_path / folder), "prefill_batch_sizes": [2],
                              "prefill_lens": [4], "decode_batch_sizes": [2], "decode_contexts": [6], "trials": 1})
        result = profile(spec, tmp_path / f"out_{folder}", progress=False)
        meta = json.loads(result.json_path.read_text())
        assert meta["model_source"] == source and meta["model"] == folder
        assert len(result.rows) == 2 * 1 + 3 * 1 and result.samples_path.name.endswith(f"_{folder}.parquet")


def test_presets_have_the_published_shapes():
    q = model_config("qwen2_5_1_5b")
    assert (type(q).__name__, q.num_hidden_layers, q.hidden_size, q.num_attention_heads, q.num_key_value_heads,
            q.intermediate_size, q.vocab_size) == ("Qwen2Config", 28, 1536, 12, 2, 8960, 151936)
    for name in ("llama3_8b", "llama3_1_8b"):
        ll = model_config(name)
        assert (type(ll).__name__, ll.num_hidden_layers, ll.hidden_size, ll.num_attention_heads,
                ll.num_key_value_heads, ll.intermediate_size, ll.vocab_size) == (
            "LlamaConfig", 32, 4096, 32, 8, 14336, 128256)
    assert model_config("llama3_1_8b").max_position_embeddings == 131072
    assert set(PRESETS) == {"qwen2_5_1_5b", "llama3_8b", "llama3_1_8b", "tiny"}


@pytest.mark.parametrize("kwargs, key", [
    ({"model": "no_such_model"}, "model"),
    ({"decode_batch_sizes": []}, "decode_batch_sizes"),
    ({"decode_contexts": [0, 4]}, "decode_contexts"),
    ({"trials": 0}, "trials"),
    ({"dtype": "int8"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"graphs": "maybe"}, "graphs"),
    ({"warmup_s": -1.0}, "warmup_s"),
])
def test_bad_profile_specs_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ProfileSpec(**kwargs)
    assert str(err.value).startswith(f"{key}: ")


def test_a_plan_that_cannot_be_fitted_is_refused_before_measuring():
    from calibrate.profile import check_plan

    check_plan(ProfileSpec(**TINY))
    with pytest.raises(ConfigError, match="^fit: planned shapes: the shapes cannot separate"):
        check_plan(ProfileSpec(**{**TINY, "decode_contexts": [16]}))
    with pytest.raises(ConfigError, match="^fit: planned shapes: too few shapes for form step"):
        check_plan(ProfileSpec(**{**TINY, "prefill_lens": [8], "prefill_batch_sizes": [1], "decode_batch_sizes": [1]}))


def test_graphs_on_without_cuda_and_cuda_without_a_gpu_are_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="^graphs: CUDA graphs need a CUDA device"):
        profile(ProfileSpec(**{**TINY, "graphs": "on"}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="device: CUDA is not available"):
        resolve_device("cuda")
    res = run_cli(["calibrate.profile", "model=tiny", "device=cuda", "tracking=none",
                   f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: device: CUDA is not available on this machine (got 'cuda'); allowed: auto, cpu"]
    assert not (tmp_path / "r").exists()


def test_gpu_script_runs_on_a_bare_machine_and_the_fit_reads_its_csv(tmp_path):
    """The lent GPU has torch and transformers only: with pandas, pyarrow, Hydra, OmegaConf,
    MLflow, scipy and matplotlib unimportable the script still runs (CSV samples), a failing
    model does not stop the others, and the fit (elsewhere) reads the CSV."""
    script = f"""
import sys
for name in ("pandas", "pyarrow", "hydra", "omegaconf", "mlflow", "scipy", "matplotlib"):
    sys.modules[name] = None
from calibrate import gpu_grid
rc = gpu_grid.main(["--out", {str(tmp_path)!r}, "--models", "no_such_model,tiny", "--device", "cpu", "--dtype",
                    "float32", "--prefill-batch-sizes", "1,2,4", "--prefill-lens", "4,8", "--decode-batch-sizes",
                    "1,2,4", "--decode-contexts", "8,16", "--decode-steps", "2", "--prefill-steps", "1",
                    "--warmup-s", "0", "--threads", "1", "--quiet"])
print("rc", rc)
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert "rc 2" in res.stdout, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: no_such_model: model: neither a preset")
    run = json.loads((tmp_path / "gpu_run.json").read_text())
    assert run["models"]["no_such_model"]["status"] == "error" and run["models"]["tiny"]["status"] == "complete"
    csv_path = next(tmp_path.glob("steps_cpu_*_tiny.csv"))
    assert not list(tmp_path.glob("*.parquet"))
    out = fit_and_report(FitSpec(steps=str(csv_path), accept_noisy=True, max_heldout_mape=10.0, plots=False),
                         tmp_path / "fit")
    assert (tmp_path / "fit" / csv_path.with_suffix(".parquet").name).is_file()
    assert read_samples(tmp_path / "fit" / csv_path.with_suffix(".parquet").name).equals(read_samples(csv_path))
    assert out.result.step is not None
