"""Sweeps end to end: named sweep configs, one MLflow parent run with a child per job (basic,
joblib and Ray launchers), the aggregated table, failed jobs, repeats, and one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["workload.num_requests=200", "output.plots=false", "output.quiet=true"]


def simsched(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.run([sys.executable, "-m", "simsched", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def store(path: Path, experiment: str) -> list:
    """Every run of an experiment in an sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{path}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in {path}"
    return client.search_runs([exp.experiment_id], max_results=5000)


def parent_and_children(runs: list, sweep_dir: Path) -> tuple:
    mine = [r for r in runs if r.data.tags.get("simsched.sweep_dir") == str(sweep_dir)]
    parents = [r for r in mine if r.data.tags.get("simsched.kind") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in mine]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def assert_table_matches_children(sweep_dir: Path, children: list) -> pd.DataFrame:
    """summary.csv has one row per job and each row's figures are its child run's metrics."""
    table = pd.read_csv(sweep_dir / "summary.csv")
    assert len(table) == len(children)
    pq = pd.read_parquet(sweep_dir / "summary.parquet")
    assert list(pq["job"]) == list(table["job"])
    by_job = {int(r.data.tags["simsched.job"]): r for r in children}
    assert set(by_job) == set(table["job"])
    for _, row in table[table["status"] == "ok"].iterrows():
        m = by_job[int(row["job"])].data.metrics
        for key in ("throughput_rps", "latency_p99_s", "sla_violation_rate", "gpu_utilization",
                    "slot_efficiency", "completed"):
            assert m[key] == pytest.approx(row[key], rel=1e-9), (row["job"], key)
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert metrics["throughput_rps"] == pytest.approx(row["throughput_rps"], rel=1e-12)
    return table


# --- named sweeps ------------------------------------------------------------------------------

SWEEP_SIZES = {"compare": 9, "k_sensitivity": 12, "load": 48, "gpus": 24, "seeds": 10, "engines": 128,
               "engines_azure": 56}


@pytest.fixture(scope="module")
def hydra_env():
    from simsched.config import register_configs
    from simsched.app.sweep import register_sweeps

    register_configs()
    register_sweeps()


def test_every_named_sweep_is_documented_runnable_and_sized(hydra_env):
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    from simsched.app.paths import config_dir
    from simsched.app.cli import precheck
    from simsched.app.sweep import count_jobs, sweep_overrides

    names = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert set(SWEEP_SIZES) <= set(names)
    for name in names:
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_") and f"python -m simsched +sweep={name}" in text
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", [f"+sweep={name}"], return_hydra_config=True)
        assert cfg.hydra.mode == RunMode.MULTIRUN, name
        if name in SWEEP_SIZES:
            assert count_jobs(sweep_overrides(cfg)) == SWEEP_SIZES[name], name
        precheck(config_dir(), [f"+sweep={name}"])    # every value composes and builds


def test_count_jobs_follows_the_basic_sweeper():
    from simsched.app.sweep import count_jobs

    assert count_jobs(["a=1,2", "b=range(0,3)", "c=5"]) == 6
    assert count_jobs(["a=1,2", "a=3"]) == 1          # a later value of a key replaces the sweep
    assert count_jobs(["+sweep=x", "seed=range(0,200)"]) == 200


@pytest.mark.parametrize("argv, expected", [
    (["+sweep=compare", "scheduler.k_bins=1,-2"], "scheduler.k_bins: must be > 0 (got -2)"),
    (["-m", "scheduler.k_binz=1,2"], "scheduler.k_binz: no such key; allowed:"),
    (["-m", "scheduler.k_bins=1,abc"], "scheduler.k_bins:"),
    (["+sweep=nope"], "sweep=nope: unknown option; allowed: compare, engines, engines_azure, gpus, k_sensitivity, "
                      "load, routers, seeds"),
    (["sweep=compare"], "sweep=compare: a named sweep is selected with +sweep=compare"),
    (["+sweep=compare", "scheduler=static_fifo,nope"], "scheduler=nope: unknown option; allowed:"),
    (["-m", "seed=1,2", "hydra/launcher=jobli"], "hydra/launcher=jobli: unknown option; allowed: basic, joblib"),
    (["+sweep=load", "workload.arrivals.rate=2,-1"], "workload.arrivals.rate: must be > 0 (got -1"),
])
def test_bad_overrides_in_a_sweep_are_one_line_exit_2(hydra_env, capsys, argv, expected):
    from simsched.app.paths import config_dir
    from simsched.app.cli import precheck

    with pytest.raises(SystemExit) as stop:
        precheck(config_dir(), argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


def test_a_bad_sweep_value_stops_before_any_job(tmp_path):
    proc = simsched(["+sweep=compare", "scheduler.k_bins=1,0", "tracking=none"], tmp_path)
    assert proc.returncode == 2
    # (a slow machine may also show the check's progress line: "checking every configuration ...")
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("checking every configuration")]
    assert lines == ["error: scheduler.k_bins: must be > 0 (got 0)"]
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("preset,plugin,target", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
    ("ray_local", "hydra_plugins.hydra_ray_launcher", "RayLauncher"),
])
def test_launcher_presets_compose(hydra_env, preset, plugin, target):
    pytest.importorskip(plugin, reason=f"the {preset} launcher's extra is not installed")
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        launcher = compose("config", [f"hydra/launcher={preset}"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith(target)
    if preset == "slurm":
        assert launcher.cpus_per_task == 1
    else:
        assert launcher.ray.remote.num_cpus == 1


# --- real sweeps in a real MLflow store --------------------------------------------------------

@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    """A 4-job sweep through the basic launcher (module-wide: the report tests read it too)."""
    cwd = tmp_path_factory.mktemp("basic")
    args = ["-m", "scheduler=static_fifo,multi_bin_dynamic", "seed=0,1", *TINY,
            f"tracking.uri=sqlite:///{cwd}/store.db", "tracking.experiment=sweeps"]
    proc = simsched(args + [f"hydra.sweep.dir={cwd}/first"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, args, proc


def test_basic_sweep_makes_one_parent_and_a_child_per_job(basic_sweep):
    cwd, _, proc = basic_sweep
    parent, children = parent_and_children(store(cwd / "store.db", "sweeps"), cwd / "first")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_ok"] == 4
    for r in children:
        tags = r.data.tags
        for key in ("scheduler", "k_bins", "lambda", "gpus", "seed", "git_commit", "simsched.config_hash"):
            assert key in tags, key
        assert tags["lambda"] == "10" and tags["simsched.repeat"] == "0"
    assert {(r.data.tags["scheduler"], r.data.tags["seed"]) for r in children} == \
        {(s, str(k)) for s in ("static_fifo", "multi_bin_dynamic") for k in (0, 1)}
    table = assert_table_matches_children(cwd / "first", children)
    assert set(table["status"]) == {"ok"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd}/store.db")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.parquet", "plots"} <= names
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/latency_cdf_per_scheduler.png" in plots
    assert "sweep multirun: 4 job(s), 0 not ok" in proc.stderr     # the progress / summary line
    assert "4/4" in proc.stderr


def test_rerunning_a_sweep_makes_new_runs_tagged_as_repeats(basic_sweep):
    cwd, args, _ = basic_sweep
    proc = simsched(args + [f"hydra.sweep.dir={cwd}/second"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: this sweep repeats 1 earlier run(s) with the same settings" in proc.stderr
    runs = store(cwd / "store.db", "sweeps")
    first, _ = parent_and_children(runs, cwd / "first")
    second, children = parent_and_children(runs, cwd / "second")
    assert second.data.tags["simsched.repeat"] == "1"
    assert second.data.tags["simsched.repeat_of"] == first.info.run_id
    assert len(children) == 4 and {r.data.tags["simsched.repeat"] for r in children} == {"1"}
    # The simulation is deterministic: a repeat reproduces the figures exactly.
    a = pd.read_csv(cwd / "first" / "summary.csv")
    b = pd.read_csv(cwd / "second" / "summary.csv")
    assert list(a["throughput_rps"]) == list(b["throughput_rps"])


def joblib_sweep(tmp_path, seeds: str, n_jobs: int, experiment: str):
    """A seed sweep through the joblib launcher into a sqlite store under tmp_path."""
    args = ["-m", f"seed={seeds}", *TINY, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
            f"tracking.uri=sqlite:///{tmp_path}/store.db", f"tracking.experiment={experiment}",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    return simsched(args, tmp_path)


def test_joblib_sweep_makes_one_parent_and_a_child_per_job(tmp_path):
    proc = joblib_sweep(tmp_path, "0,1", 2, "joblib")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    parent, children = parent_and_children(store(tmp_path / "store.db", "joblib"), tmp_path / "sweep")
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert_table_matches_children(tmp_path / "sweep", children)


@pytest.mark.parametrize("settings,jobs,expected", [
    ({"n_jobs": 2, "batch_size": "auto"}, 200, 25),     # about four chunks per worker
    ({"n_jobs": 2, "batch_size": "auto"}, 3, 1),
    ({"n_jobs": 2, "batch_size": 7}, 200, 7),           # the user's choice stays
])
def test_joblib_jobs_go_in_chunks_unless_the_user_chose(settings, jobs, expected):
    joblib_launcher = pytest.importorskip("hydra_plugins.hydra_joblib_launcher.joblib_launcher")
    from hydra_plugins.simsched_plugins.sweeper import chunk_joblib_jobs

    launcher = joblib_launcher.JoblibLauncher(**settings)
    chunk_joblib_jobs(launcher, jobs)
    assert launcher.joblib["batch_size"] == expected


@pytest.mark.slow
def test_eight_parallel_joblib_jobs_share_one_sqlite_store(tmp_path):
    proc = joblib_sweep(tmp_path, "range(0,8)", 8, "par")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stderr + "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*.log"))
    assert "locked" not in logs and "tracking failed" not in logs
    _, children = parent_and_children(store(tmp_path / "store.db", "par"), tmp_path / "sweep")
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert sorted(int(r.data.tags["seed"]) for r in children) == list(range(8))
    assert_table_matches_children(tmp_path / "sweep", children)


def test_a_failed_job_is_recorded_and_the_sweep_completes(tmp_path):
    args = ["-m", "gpus.kv_capacity_tokens=10,120000", *TINY, f"tracking.uri=sqlite:///{tmp_path}/store.db",
            "tracking.experiment=fail", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = simsched(args, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]    # the sweep completes, and says a job failed
    assert "error: job 0" in proc.stderr and "kv_capacity_tokens" in proc.stderr
    assert "1 job(s) failed or did not finish" in proc.stderr
    parent, children = parent_and_children(store(tmp_path / "store.db", "fail"), tmp_path / "sweep")
    status = {r.data.tags["simsched.job"]: r for r in children}
    assert status["0"].info.status == "FAILED" and "kv_capacity_tokens" in status["0"].data.tags["error"]
    assert status["0"].data.tags["scheduler"] == "multi_bin_dynamic" and status["0"].data.tags["seed"] == "0"
    assert status["1"].info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 1
    table = assert_table_matches_children(tmp_path / "sweep", children)
    assert list(table["status"]) == ["failed", "ok"] and "kv_capacity_tokens" in table["error"][0]
    error = json.loads((tmp_path / "sweep" / "0" / "error.json").read_text())
    assert error["job"] == 0 and "ConfigError" in error["error"] and "Traceback" in error["traceback"]


def test_an_exception_in_a_job_becomes_error_json(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import simsched.run
    from simsched.app.sweep import run_job

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(simsched.run, "simulate_config", boom)
    cfg = OmegaConf.create({"scheduler": {"name": "x"}, "workload": {}, "gpus": {"count": 1}, "seed": 3,
                            "tracking": None})
    assert run_job(cfg, tmp_path / "job", None, ["seed=3"], 7) is None
    error = json.loads((tmp_path / "job" / "error.json").read_text())
    assert error["job"] == 7 and error["error"] == "RuntimeError: simulated crash"


@pytest.mark.slow
def test_a_sweep_of_200_small_jobs_yields_200_child_runs(tmp_path):
    args = ["-m", "seed=range(0,200)", *TINY, "output.requests_table=false", "output.batches_table=false",
            f"tracking.uri=sqlite:///{tmp_path}/store.db", "tracking.experiment=big",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = simsched(args, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = parent_and_children(store(tmp_path / "store.db", "big"), tmp_path / "sweep")
    assert len(children) == 200 and len({r.data.tags["seed"] for r in children}) == 200
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.data.metrics["jobs_ok"] == 200
    assert len(pd.read_csv(tmp_path / "sweep" / "summary.csv")) == 200


@pytest.mark.ray
def test_ray_launcher_runs_a_two_job_sweep_on_a_local_instance(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    pytest.importorskip("ray")
    args = ["-m", "seed=0,1", *TINY, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2",
            f"tracking.uri=sqlite:///{tmp_path}/store.db", "tracking.experiment=ray",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = simsched(args, tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stdout + proc.stderr
    parent, children = parent_and_children(store(tmp_path / "store.db", "ray"), tmp_path / "sweep")
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert_table_matches_children(tmp_path / "sweep", children)


# --- pieces ------------------------------------------------------------------------------------

def test_retry_locked_retries_only_the_lock_error():
    from simsched.tracking import retry_locked

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        retry_locked(lambda: (_ for _ in ()).throw(ValueError("other")))


def test_absolute_uri_is_the_same_store_from_any_folder(tmp_path):
    from simsched.app.sweep import absolute_uri

    assert absolute_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert absolute_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert absolute_uri("http://host:5000", tmp_path) == "http://host:5000"
    assert absolute_uri("mlruns", tmp_path) == str(tmp_path.resolve() / "mlruns")


def test_progress_counts_finished_and_failed_job_folders(tmp_path):
    from simsched.progress import SweepProgress, jobs_done

    for i, name in enumerate(["done.json", "done.json", "error.json", "metrics.json"]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / name).write_text("{}")
    (tmp_path / "4").mkdir()
    assert jobs_done(tmp_path) == (3, 1)      # metrics.json alone is an interrupted job
    monitor = SweepProgress(tmp_path, 4, poll_s=0.05)
    monitor.start()
    monitor.stop()
    assert not monitor._thread.is_alive()


def test_report_command_from_the_folder_and_from_mlflow_agree(basic_sweep, tmp_path, capsys):
    from simsched.app import report

    cwd, _, _ = basic_sweep
    report.main([str(cwd / "first"), "--out", str(tmp_path / "dir")])
    text = capsys.readouterr().out
    assert "4 job(s), 0 not ok" in text and "static_fifo" in text and "multi_bin_dynamic" in text
    report.main(["--experiment", "sweeps", "--uri", f"sqlite:///{cwd}/store.db", "--out", str(tmp_path / "ml")])
    assert "4 job(s), 0 not ok" in capsys.readouterr().out
    a = pd.read_csv(tmp_path / "dir" / "summary.csv").set_index("job").sort_index()
    b = pd.read_csv(tmp_path / "ml" / "summary.csv").set_index("job").sort_index()
    for key in ("scheduler", "seed", "k_bins"):
        assert list(a[key]) == list(b[key])
    for key in ("throughput_rps", "latency_p99_s", "sla_violation_rate"):
        assert a[key].to_numpy() == pytest.approx(b[key].to_numpy(), rel=1e-9)
    assert (tmp_path / "ml" / "plots" / "latency_cdf_per_scheduler.png").is_file()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # the dropped interrupt
def test_a_ctrl_c_dropped_inside_a_finalizer_is_still_seen():
    """Python drops an exception raised in a finalizer (MLflow's SQLAlchemy runs weakref
    callbacks while logging); the sweep's handler remembers the signal for the launcher."""
    import signal

    from simsched.app.sweep import SweepInterrupt, interrupt_pending

    handler = SweepInterrupt().install()
    assert handler is not None and not interrupt_pending()
    try:
        class Finalized:
            def __del__(self):
                handler(signal.SIGINT, None)

        Finalized()   # "Exception ignored in ...": the KeyboardInterrupt is gone
        assert interrupt_pending()
    finally:
        handler.restore()
    assert not interrupt_pending() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
