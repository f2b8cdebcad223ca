"""Fault injection on whole sweeps: Ctrl-C, SIGTERM and SIGKILL in the middle of a sweep on each
launcher, two sweeps started together on a fresh store or on one folder, folders that belong to
another sweep, and the way back (``python -m simsched.resume``, ``python -m simsched.track``).

What must hold: no traceback; no job reported ok unless its folder is complete; an interrupted
sweep's parent run is closed (KILLED) and its workers end with it; resuming completes every job
with the figures an uninterrupted sweep gives, under the same parent run, with exactly one
finished child run per job; two sweeps never share a folder and both get their parent run.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from faultkit import (TINY, finished_jobs, group_members, interrupt, no_traceback, run, runs, start,
                      wait_for)

LAUNCHERS = {
    "in-process": [],
    "workers": ["hydra.launcher.n_jobs=2"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
SLOW_JOBS = ["workload.num_requests=30000", "output.plots=false", "output.quiet=true"]
SEEDS = "range(0,8)"


def by_seed(sweep_dir: Path) -> dict[int, dict]:
    """Each complete job's metrics (wall-clock figures dropped), by seed."""
    out = {}
    for done in sweep_dir.glob("*/done.json"):
        m = json.loads((done.parent / "metrics.json").read_text())
        for k in ("sim_wall_s", "workload_wall_s", "sim_requests_per_s"):
            m.pop(k, None)
        seed = next(int(line.split("=")[1]) for line in (done.parent / ".hydra" / "overrides.yaml").read_text()
                    .replace("- ", "").splitlines() if line.startswith("seed="))
        out[seed] = m
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """The figures of the uninterrupted sweep."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = run(["-m", f"seed={SEEDS}", *SLOW_JOBS, "tracking=none", "hydra.sweep.dir=sweep"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return by_seed(cwd / "sweep")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store") / "mlflow.db"


def interrupted_sweep(tmp_path: Path, store: Path, launcher: str, how: str, experiment: str):
    if launcher == "joblib":
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the joblib extra is not installed")
    args = ["-m", f"seed={SEEDS}", *SLOW_JOBS, *LAUNCHERS[launcher], f"tracking.uri=sqlite:///{store}",
            f"tracking.experiment={experiment}", "hydra.sweep.dir=sweep"]
    proc = start(args, tmp_path)
    sweep = tmp_path / "sweep"
    wait_for(lambda: finished_jobs(sweep) >= 1 or proc.poll() is not None, 600, "a first finished job")
    assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
    interrupt(proc, how)
    code = proc.wait(timeout=300)
    return proc, code, sweep


CASES = [(launcher, how) for launcher in LAUNCHERS for how in ("SIGINT", "SIGTERM", "SIGKILL")]


@pytest.mark.parametrize("launcher,how", [
    pytest.param(launcher, how, marks=[] if (launcher, how) == ("in-process", "SIGINT") else pytest.mark.slow)
    for launcher, how in CASES])
def test_an_interrupted_sweep_loses_nothing_and_resumes(tmp_path, store, reference, launcher, how):
    experiment = f"interrupt-{launcher}-{how}"
    proc, code, sweep = interrupted_sweep(tmp_path, store, launcher, how, experiment)
    err = (tmp_path / "err.txt").read_text()
    no_traceback(err)
    # The workers end with the sweep.
    wait_for(lambda: not group_members(proc.pid), 30, f"the sweep's processes to end: {group_members(proc.pid)}")
    if how == "SIGKILL":
        assert code == -9
    else:
        assert code == 130, err[-3000:]
        table = pd.read_csv(sweep / "summary.csv")
        assert len(table) == 8 and (table["status"] != "ok").any(), "the sweep was not interrupted"
        (parent,) = [r for r in runs(store, experiment) if r.data.tags.get("simsched.kind") == "sweep"]
        assert parent.info.status == "KILLED"
    # No job is counted ok unless its folder is complete and its figures are the reference's.
    from simsched.app import report

    table = report.collect(sweep)
    assert len(table) == 8
    for _, row in table[table["status"] == "ok"].iterrows():
        assert json.loads((Path(row["dir"]) / "done.json").read_text())["files"]
    got = by_seed(sweep)
    assert got and all(got[s] == reference[s] for s in got)
    # Resume: every job completes, with the reference's figures, under the same parent run.
    again = run([str(sweep)], tmp_path, module="simsched.resume")
    no_traceback(again.stderr)
    assert again.returncode == 0, again.stderr[-3000:]
    assert by_seed(sweep) == reference
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 8 and set(table["status"]) == {"ok"} and set(table["tracking"]) == {"logged"}
    all_runs = runs(store, experiment)
    parents = [r for r in all_runs if r.data.tags.get("simsched.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["simsched.job"]) for r in finished) == list(range(8))
    assert not [r for r in children if r.info.status == "RUNNING"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["in-process", "workers"])
def test_two_sweeps_started_together_on_a_fresh_store_both_get_their_parent(tmp_path, launcher):
    """The store is created by whichever gets its lock first; both sweeps get their own folder
    (named to the microsecond) and parent run, every job its child run."""
    args = ["-m", "seed=range(0,4)", *TINY, *LAUNCHERS[launcher]]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    procs = [start(args + ["tracking.experiment=race"], tmp_path) for _ in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    err = (tmp_path / "err.txt").read_text()
    assert codes == [0, 0], err[-3000:]
    folders = sorted(p.parent for p in tmp_path.glob("multirun/*/*/sweep.json"))
    assert len(folders) == 2
    all_runs = runs(tmp_path / "mlflow.db", "race")
    parents = [r for r in all_runs if r.data.tags.get("simsched.kind") == "sweep"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert {p.data.tags["simsched.sweep_dir"] for p in parents} == {str(f) for f in folders}
    for parent in parents:
        children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    for folder in folders:
        table = pd.read_csv(folder / "summary.csv")
        assert set(table["status"]) == {"ok"} and set(table["tracking"]) == {"logged"}


@pytest.mark.slow
def test_two_sweeps_on_one_folder_exactly_one_runs(tmp_path):
    procs = [start(["-m", f"seed={seeds}", *TINY, "tracking=none", "hydra.sweep.dir=shared"], tmp_path)
             for seeds in ("0,1", "10,11")]
    codes = sorted(p.wait(timeout=600) for p in procs)
    assert codes == [0, 2], codes
    err = (tmp_path / "err.txt").read_text()
    table = pd.read_csv(tmp_path / "shared" / "summary.csv")
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    seeds = {int(s) for s in table["seed"]}
    assert seeds in ({0, 1}, {10, 11})   # one sweep's jobs only: never a mix
    assert len(list((tmp_path / "shared").glob("*/.hydra"))) == 2
    no_traceback(err)


def _listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("taken_by", ["sweep.json", "jobs.json", "multirun.yaml", "a job folder"])
def test_a_folder_that_holds_another_sweep_is_refused(tmp_path, taken_by):
    folder = tmp_path / "taken"
    folder.mkdir()
    if taken_by == "a job folder":
        (folder / "0" / ".hydra").mkdir(parents=True)
        (folder / "0" / "metrics.json").write_text("{}")
    else:
        (folder / taken_by).write_text("{}")
    before = _listing(folder)
    proc = run(["-m", "seed=0,1", *TINY, "tracking=none", f"hydra.sweep.dir={folder}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "holds another sweep" in lines[0] and "simsched.resume" in lines[0]
    no_traceback(proc.stderr)
    assert _listing(folder) == before                    # nothing written into it


def test_claiming_a_folder_is_exclusive(tmp_path):
    from simsched.app.sweep import claim

    claim(tmp_path / "s")
    with pytest.raises(SystemExit) as stop:
        claim(tmp_path / "s")
    assert stop.value.code == 2


@pytest.mark.parametrize("what", ["no sweep.json", "no multirun.yaml", "no folder"])
def test_resume_refuses_what_is_not_an_interrupted_sweep(tmp_path, what):
    folder = tmp_path / "s"
    if what != "no folder":
        folder.mkdir()
    if what == "no multirun.yaml":
        (folder / "sweep.json").write_text("{}")
    proc = run([str(folder)], tmp_path, module="simsched.resume")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert not (folder / "0").exists()


@pytest.fixture
def complete_sweep(tmp_path) -> Path:
    proc = run(["-m", "seed=0,1,2", *TINY, "tracking=none", "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "sweep"


def test_resuming_a_complete_sweep_reruns_nothing(tmp_path, complete_sweep):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in complete_sweep.glob("*/*.parquet")}
    proc = run([str(complete_sweep)], tmp_path, module="simsched.resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in complete_sweep.glob("*/*.parquet")} == before


@pytest.mark.parametrize("damage", ["job folder deleted", "done.json deleted", "table truncated", "error.json"])
def test_resume_repairs_a_damaged_job(tmp_path, complete_sweep, damage):
    reference = by_seed(complete_sweep)
    job = complete_sweep / "1"
    if damage == "job folder deleted":
        import shutil

        shutil.rmtree(job)
    elif damage == "done.json deleted":
        (job / "done.json").unlink()
    elif damage == "table truncated":
        (job / "requests.parquet").write_bytes((job / "requests.parquet").read_bytes()[:100])
    else:
        (job / "error.json").write_text(json.dumps({"error": "RuntimeError: a crash"}))
    proc = run([str(complete_sweep)], tmp_path, module="simsched.resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert by_seed(complete_sweep) == reference
    table = pd.read_csv(complete_sweep / "summary.csv")
    assert len(table) == 3 and set(table["status"]) == {"ok"}
    assert not (job / "error.json").exists()


def test_a_sweep_whose_tracking_failed_says_so_and_track_repairs_it(tmp_path):
    """The store cannot be created (its folder is a file): the jobs still run, the summary and
    the exit status say they were not logged; once the store can be created, ``track`` logs the
    parent and every child."""
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    db = blocker / "mlflow.db"
    proc = run(["-m", "seed=0,1", *TINY, f"tracking.uri=sqlite:///{db}", "tracking.experiment=later",
                "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    assert "MLflow tracking is off for this sweep" in proc.stderr
    assert "2 job(s) not logged to MLflow" in proc.stderr
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert set(table["status"]) == {"ok"} and table["tracking"].str.startswith("failed").all()
    blocker.unlink()
    fixed = run([str(tmp_path / "sweep")], tmp_path, module="simsched.track")
    assert fixed.returncode == 0, fixed.stderr[-3000:] + fixed.stdout
    all_runs = runs(db, "later")
    (parent,) = [r for r in all_runs if r.data.tags.get("simsched.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["simsched.job"]) for r in children) == [0, 1]
    again = run([str(tmp_path / "sweep")], tmp_path, module="simsched.report")
    assert again.returncode == 0, again.stdout + again.stderr   # every job ok and logged now


def test_a_single_run_killed_while_logging_is_logged_later(tmp_path):
    """The run's folder keeps what was to be logged (tracking.json: pending): ``track`` logs it."""
    proc = run([*TINY, "tracking=none", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0
    from omegaconf import OmegaConf

    from simsched.run import flat_params, run_name
    from simsched.tracking import MlflowTracker
    from simsched.tracking_state import save_pending

    cfg = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    record = MlflowTracker(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="late").record(
        tmp_path / "run", flat_params(cfg), json.loads((tmp_path / "run" / "metrics.json").read_text()),
        [tmp_path / "run" / "metrics.json"], {"mlflow.runName": run_name(cfg)})
    save_pending(tmp_path / "run", record)             # what a process killed before logging leaves
    fixed = run([str(tmp_path / "run")], tmp_path, module="simsched.track")
    assert fixed.returncode == 0, fixed.stderr
    (logged,) = runs(tmp_path / "mlflow.db", "late")
    assert logged.info.status == "FINISHED" and logged.data.metrics["completed"] == 200
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["state"] == "logged"
    again = run([str(tmp_path / "run")], tmp_path, module="simsched.track")   # idempotent
    assert again.returncode == 0 and len(runs(tmp_path / "mlflow.db", "late")) == 1


def test_ctrl_c_in_a_single_run_is_one_line(tmp_path):
    # ~8 s of work (6M requests): the interrupt lands mid-run. One that lands while the finished
    # process shuts down (after done.json) ends it by the signal itself (-2), as for any program.
    proc = start(["workload.num_requests=6000000", "tracking=none", "output.quiet=true", "hydra.run.dir=run"],
                 tmp_path)
    time.sleep(4)
    os.killpg(proc.pid, 2)
    code = proc.wait(timeout=120)
    err = (tmp_path / "err.txt").read_text()
    no_traceback(err)
    finished = (tmp_path / "run" / "done.json").exists()
    assert code == 130 or (finished and code in (0, -2)), err
    if code == 130:
        assert err.strip().splitlines()[-1] == "interrupted"
        assert not (tmp_path / "run" / "done.json").exists()


def test_track_closes_the_child_runs_a_killed_sweep_left_running(tmp_path, complete_sweep):
    """A sweep killed while a job was logging leaves its child run RUNNING: ``track`` (like
    ``resume``) closes it as KILLED and gives the parent its final status."""
    from dataclasses import replace

    from simsched.app.sweep import SweepContext
    from simsched.tracking import experiment_id, open_client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = open_client(uri)
    exp = experiment_id(client, uri, "stale")
    parent = client.create_run(exp, tags={"simsched.kind": "sweep"})
    stale = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id})
    ctx = SweepContext.read(complete_sweep)
    replace(ctx, parent_run_id=parent.info.run_id, tracking_uri=uri, experiment="stale").write()
    proc = run([str(complete_sweep)], tmp_path, module="simsched.track")
    assert proc.returncode == 0, proc.stderr
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
