"""The command line as a user runs it: outputs on disk, one-line errors, MLflow logging."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = ["arrived", "completed", "rejected", "unfinished", "throughput_rps", "output_tokens_per_s",
               "goodput_rps", "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
               "queue_delay_mean_s", "ttft_mean_s", "tbt_mean_s", "sla_violation_rate", "gpu_utilization",
               "slot_efficiency", "offered_load", "sim_wall_s"]


def cli(tmp_path: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "simsched", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.json"))


def test_run_writes_the_output_contract(tmp_path):
    proc = cli(tmp_path, "tracking=none", "workload.num_requests=400", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(k in metrics for k in METRIC_KEYS)
    assert metrics["arrived"] == metrics["completed"] + metrics["rejected"] + metrics["unfinished"] == 400
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) == 400
    for col in ["id", "arrival", "start", "completion", "prompt_tokens", "output_tokens", "predicted_output",
                "bin", "gpu", "batch_id", "status"]:
        assert col in req.columns
    batches = pd.read_parquet(out / "batches.parquet")
    assert batches["size"].sum() == (req["status"] == "completed").sum()
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "throughput" in proc.stdout and "SLA violation rate" in proc.stdout


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        assert cli(tmp_path, "tracking=none", "workload.num_requests=300", "output.plots=false",
                   f"hydra.run.dir={name}").returncode == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    for m in (a, b):
        for k in ("sim_wall_s", "workload_wall_s", "sim_requests_per_s"):
            m.pop(k)
    assert a == b


@pytest.mark.parametrize("args,needle", [
    (["scheduler=nope"], "scheduler=nope: unknown option; allowed: dynamic_no_bins"),
    (["scheduler.nope=1"], "scheduler.nope: no such key; allowed:"),
    (["workload.arrivals.rate=-2"], "workload.arrivals.rate: must be > 0"),
    (["scheduler.k_bins=0"], "scheduler.k_bins: must be > 0"),
    (["scheduler=static_fifo", "scheduler.batcher.batch_size=0"], "scheduler.batcher.batch_size: must be > 0"),
    (["scheduler.batcher.b_min=300"], "scheduler.batcher.b_min: must be <= b_max"),
    (["latency_model.beta_s=nan"], "latency_model.beta_s: must be finite"),
    (["gpus.kv_capacity_tokens=5"], "gpus.kv_capacity_tokens: is smaller than every request"),
    (["scheduler.k_bins=two"], "scheduler.k_bins: Value 'two'"),
    (["metrics.saturation_requests=-1"], "metrics.saturation_requests: must be >= 0"),
    (["--multirun", "scheduler=static_fifo,nope"], "scheduler=nope: unknown option"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    proc = cli(tmp_path, "tracking=none", *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_multirun_three_modes(tmp_path):
    proc = cli(tmp_path, "--multirun", "scheduler=static_fifo,dynamic_no_bins,multi_bin_dynamic", "gpus.count=2",
               "tracking=none", "workload.num_requests=300", "output.plots=false", "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 3


def wait_logged(run_dir: Path, timeout: float = 240) -> dict:
    """The run folder's tracking state once its background logging has ended."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "tracking.json"
        state = json.loads(path.read_text()) if path.is_file() else {}
        if state.get("state") in ("logged", "failed"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"tracking of {run_dir} did not finish: {state}")


def test_run_logs_to_a_real_mlflow_store(tmp_path):
    proc = cli(tmp_path, "workload.num_requests=300", "hydra.run.dir=run", "tracking.background=false",
               "tracking.log_tables=true")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("SLA violation rate") < out.index("MLflow: logging run") < out.index("MLflow: logged run")
    assert "multi_bin_dynamic K=4 λ=10 G=2 seed=0" in out     # the same readable name as sweep jobs
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["simsched"])
    assert len(runs) == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert runs.loc[0, "metrics.throughput_rps"] == pytest.approx(metrics["throughput_rps"])
    assert runs.loc[0, "params.scheduler.k_bins"] == "4"
    assert runs.loc[0, "tags.scheduler"] == "multi_bin_dynamic"
    assert runs.loc[0, "tags.mlflow.runName"] == "multi_bin_dynamic K=4 λ=10 G=2 seed=0"
    client = mlflow.tracking.MlflowClient()
    names = {a.path for a in client.list_artifacts(runs.loc[0, "run_id"])}
    assert {"metrics.json", "requests.parquet", "batches.parquet", "latency_cdf.png", ".hydra", "done.json"} <= names
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["state"] == "logged"


def test_a_single_run_logs_in_the_background_and_copies_no_tables(tmp_path):
    proc = cli(tmp_path, "workload.num_requests=300", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    assert "in the background" in proc.stdout
    state = wait_logged(tmp_path / "run")
    assert state["state"] == "logged", state
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(state["run_id"])
    assert run.info.run_name == "multi_bin_dynamic K=4 λ=10 G=2 seed=0" and run.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(state["run_id"])}
    assert "metrics.json" in names and not {"requests.parquet", "batches.parquet"} & names   # log_tables off


def test_unreachable_tracking_server_warns_and_keeps_results(tmp_path):
    proc = cli(tmp_path, "tracking.uri=http://127.0.0.1:9", "workload.num_requests=200", "hydra.run.dir=run")
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if "MLflow" in line]
    assert len(lines) == 1 and "MLflow tracking failed (cannot connect to 127.0.0.1:9" in lines[0], proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["state"] == "failed"


def test_help_is_the_applications_own(tmp_path):
    proc = cli(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "schema/" not in text and "powered by Hydra" not in text
    for group in ("scheduler", "workload", "latency_model", "predictor", "gpus", "tracking", "sweep",
                  "hydra/launcher"):
        assert f"\n  {group} " in text, group
    assert "multi_bin_dynamic (default)" in text and "static_fifo" in text and "compare" in text
    examples = [line for line in text.split("== Examples ==")[1].split("==")[0].splitlines() if "python -m" in line]
    assert len(examples) == 5
    assert "outputs/DATE/TIME/" in text and "multirun/" in text and "mlflow.db" in text
