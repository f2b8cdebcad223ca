"""The profiler on the CPU with the ``tiny`` preset (needs the ``calibrate`` extra): the whole
chain grid → fit → YAML → simulation → MLflow run, the GPU script's code path, local folders."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from calibrate import gpu_grid  # noqa: E402
from calibrate.presets import PRESETS, build_model, model_config  # noqa: E402
from calibrate.profiler import ProfileSpec, profile, resolve_device  # noqa: E402
from simsched.calibration import GRID_COLUMNS, read_grid  # noqa: E402
from simsched.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY_GRID = ["model=tiny", "device=cpu", "threads=1", "batch_sizes=[1,2,4]", "prompt_lens=[8,32]",
             "output_lens=[1,2,4,8,16]", "trials=2", "warmup_tokens=2"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A module's CLI in a fresh interpreter, run from ``cwd`` (MLflow puts artefacts there)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_tiny_chain_profile_fit_yaml_simulation_mlflow(tmp_path):
    """python -m calibrate.profile (tiny, CPU) → grid + JSON + fit + YAML + one MLflow run; the
    YAML and `latency_model=calibrated` then drive the same simulation."""
    db, run_dir = tmp_path / "mlflow.db", tmp_path / "run"
    res = run_cli(["calibrate.profile", *TINY_GRID, f"tracking.uri=sqlite:///{db}",
                   "tracking.experiment=calibration", "name=tiny_cpu", f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    grid_csv = next(run_dir.glob("grid_cpu_*_tiny.csv"))
    meta = json.loads(grid_csv.with_suffix(".json").read_text())
    assert meta["status"] == "complete" and meta["skipped"] == []
    assert meta["model"] == "tiny" and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["torch_version"] == torch.__version__ and meta["transformers_version"]
    assert meta["model_config"]["num_hidden_layers"] == 2 and meta["grid"]["batch_sizes"] == [1, 2, 4]
    rows = read_rows(grid_csv)
    assert tuple(rows[0]) == GRID_COLUMNS and len(rows) == 3 * 2 * 5
    grid = read_grid(grid_csv)
    assert (grid["num_trials"] == 2).all()
    for _, shape in grid.groupby(["batch_size", "prompt_len"]):
        assert shape.sort_values("output_len")["mean_latency_s"].is_monotonic_increasing
    fit = json.loads((run_dir / "fit.json").read_text())
    assert fit["best_form"] in fit["forms"] and fit["latency_model"] == "tiny_cpu"
    yaml_path = run_dir / "latency_model" / "tiny_cpu.yaml"
    assert yaml_path.is_file() and (run_dir / "residuals.png").stat().st_size > 10_000

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("calibration").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["measured.model"] == "tiny" and run.data.params["best_form"] == fit["best_form"]
    assert run.data.metrics["best_heldout_mape"] == pytest.approx(fit["forms"][fit["best_form"]]["heldout_mape"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {grid_csv.name, grid_csv.with_suffix(".json").name, "fit.json", "fitted_vs_measured.png",
            "residuals.png", "latency_model"} <= names

    outs = []
    for overrides in (["--config-dir", str(run_dir), "latency_model=tiny_cpu"],
                      ["latency_model=calibrated", f"latency_model.grid={grid_csv}"]):
        sim = tmp_path / f"sim{len(outs)}"
        res = run_cli(["simsched", *overrides, "tracking=none", "workload.num_requests=200", f"hydra.run.dir={sim}"],
                      tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(json.loads((sim / "metrics.json").read_text()))
    assert outs[0]["completed"] == 200
    assert outs[0] == {**outs[1], **{k: outs[0][k] for k in outs[0] if k.endswith("wall_s") or k == "sim_requests_per_s"}}


def test_gpu_script_code_path_on_cpu(tmp_path, capsys):
    """calibrate.gpu_grid (issue 8's GPU run) with only its model and sizes changed."""
    rc = gpu_grid.main(["--out", str(tmp_path), "--model", "tiny", "--device", "cpu", "--dtype", "float32",
                        "--batch-sizes", "1,3", "--prompt-lens", "5", "--output-lens", "1,2,3,6",
                        "--trials", "3", "--warmup-tokens", "1", "--threads", "1", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "step ms" in out and "grid_cpu_" in out
    csv_path = next(tmp_path.glob("grid_cpu_*_tiny.csv"))
    rows = read_rows(csv_path)
    assert [(r["batch_size"], r["prompt_len"], r["output_len"]) for r in rows] == [
        (b, "5", L) for b in ("1", "3") for L in ("1", "2", "3", "6")]
    assert all(r["num_trials"] == "3" and float(r["std_latency_s"]) >= 0 for r in rows)
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["grid"]["trials"] == 3 and meta["grid"]["output_lens"] == [1, 2, 3, 6]
    assert meta["status"] == "complete" and meta["cpu_threads"] == 1


def test_gpu_script_defaults_are_the_issue_8_measurement():
    args = gpu_grid.parse_args(["--out", "x"])
    assert args.model == "qwen2_5_1_5b" and args.device == "cuda" and args.dtype == "bfloat16"
    assert args.batch_sizes == [1, 2, 4, 8, 16, 32, 64, 128] and len(args.prompt_lens) == 2
    assert max(args.output_lens) >= 256 and args.trials >= 2 and 0 < args.budget_s < 8 * 60


def test_time_budget_skips_shapes_and_says_so(tmp_path):
    spec = ProfileSpec(model="tiny", device="cpu", batch_sizes=[1, 2], prompt_lens=[4], output_lens=[2],
                       trials=1, warmup_tokens=0, budget_s=1e-6, threads=1)
    result = profile(spec, tmp_path, progress=False)
    assert result.rows == [] and [s["reason"] for s in result.skipped] == ["time budget"] * 2
    meta = json.loads(result.json_path.read_text())
    assert meta["status"] == "partial" and len(meta["skipped"]) == 2
    assert read_rows(result.csv_path) == []


def test_local_model_folder_with_and_without_weights(tmp_path):
    model = build_model("tiny", torch.device("cpu"), torch.float32)
    model.save_pretrained(tmp_path / "weights")
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((tmp_path / "weights" / "config.json").read_text())
    for folder, source in (("weights", "local folder (its weights)"),
                           ("config_only", "local folder config (random weights)")):
        spec = ProfileSpec(model=str(tmp_path / folder), device="cpu", batch_sizes=[2], prompt_lens=[4],
                           output_lens=[1, 3], trials=1, warmup_tokens=0, threads=1)
        result = profile(spec, tmp_path / f"out_{folder}", progress=False)
        meta = json.loads(result.json_path.read_text())
        assert meta["model_source"] == source and meta["model"] == folder
        assert len(result.rows) == 2 and result.csv_path.name.endswith(f"_{folder}.csv")


def test_presets_have_the_published_shapes():
    q = model_config("qwen2_5_1_5b")
    assert (type(q).__name__, q.num_hidden_layers, q.hidden_size, q.num_attention_heads, q.num_key_value_heads,
            q.intermediate_size, q.vocab_size) == ("Qwen2Config", 28, 1536, 12, 2, 8960, 151936)
    ll = model_config("llama3_8b")
    assert (type(ll).__name__, ll.num_hidden_layers, ll.hidden_size, ll.num_attention_heads,
            ll.num_key_value_heads, ll.intermediate_size, ll.vocab_size) == ("LlamaConfig", 32, 4096, 32, 8, 14336, 128256)
    assert set(PRESETS) == {"qwen2_5_1_5b", "llama3_8b", "tiny"}


@pytest.mark.parametrize("kwargs, key", [
    ({"model": "no_such_model"}, "model"),
    ({"batch_sizes": []}, "batch_sizes"),
    ({"output_lens": [0, 4]}, "output_lens"),
    ({"trials": 0}, "trials"),
    ({"dtype": "int8"}, "dtype"),
    ({"device": "tpu"}, "device"),
])
def test_bad_profile_specs_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ProfileSpec(**kwargs)
    assert str(err.value).startswith(f"{key}: ")


def test_a_planned_grid_that_cannot_be_fitted_is_refused_before_measuring():
    from calibrate.profile import check_plan

    check_plan(ProfileSpec(batch_sizes=[1, 2, 4], prompt_lens=[8], output_lens=[1, 2, 4]), ("affine",))
    with pytest.raises(ConfigError, match="fit: planned grid: held-out error needs at least 3 batch sizes"):
        check_plan(ProfileSpec(batch_sizes=[1, 2], prompt_lens=[8], output_lens=[1, 2, 4]), ("affine",))
    with pytest.raises(ConfigError, match="too few points for form affine_kv"):
        check_plan(ProfileSpec(batch_sizes=[1, 2, 4], prompt_lens=[8], output_lens=[1]), ("affine_kv",))


def test_cuda_request_without_a_gpu_is_one_line_exit_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="device: CUDA is not available"):
        resolve_device("cuda")
    res = run_cli(["calibrate.profile", "model=tiny", "device=cuda", "tracking=none",
                   f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: device: CUDA is not available on this machine (got 'cuda'); allowed: auto, cpu"]
    assert not (tmp_path / "r").exists()
