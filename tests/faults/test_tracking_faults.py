"""Fault injection on MLflow tracking: a store folder that cannot be written, a server that is
down or never answers, a missing experiment, a file that is not a store, concurrent creation
of one store, one job whose logging fails.

What must hold: one line (no traceback, no minutes of retries), results always on disk, a
reader creates nothing, a sweep's summary and exit status show every job that was not logged.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from faultkit import TINY, no_traceback, run, unwritable_folder


def listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in folder.rglob("*")}


def mlflow_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "MLflow" in line or "mlflow" in line]


@pytest.fixture
def blackhole():
    """A TCP server that accepts connections and never answers (a hung tracking server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def bad_uris(tmp_path: Path) -> dict[str, str]:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database" * 10)
    folder = tmp_path / "adir.db"
    folder.mkdir()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    return {
        "unwritable folder": f"sqlite:///{unwritable_folder(tmp_path)}/mlflow.db",
        "server down": "http://127.0.0.1:9",
        "not an sqlite file": f"sqlite:///{garbage}",
        "a folder, not a file": f"sqlite:///{folder}",
        "a file where the folder should be": f"sqlite:///{blocker}/mlflow.db",
    }


KINDS = ["unwritable folder", "server down", "not an sqlite file", "a folder, not a file",
         "a file where the folder should be"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("background", ["true", "false"])
def test_a_single_run_with_an_unusable_store_is_one_line_and_keeps_its_results(tmp_path, kind, background):
    uri = bad_uris(tmp_path)[kind]
    t0 = time.time()
    proc = run([*TINY, f"tracking.uri={uri}", f"tracking.background={background}", "hydra.run.dir=run"], tmp_path)
    took = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    lines = mlflow_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking failed"), proc.stderr[-3000:]
    assert took < 60, f"{took:.0f} s: retries are not bounded"
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert state["state"] == "failed" and state["error"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["completed"] == 200
    assert (tmp_path / "run" / "done.json").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_a_sweep_with_an_unusable_store_runs_and_exits_1(tmp_path, kind):
    uri = bad_uris(tmp_path)[kind]
    proc = run(["-m", "seed=0,1", *TINY, f"tracking.uri={uri}", "hydra.sweep.dir=sweep"], tmp_path)
    no_traceback(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert sum("MLflow tracking is off for this sweep" in line for line in proc.stderr.splitlines()) == 1
    assert "2 job(s) not logged to MLflow" in proc.stderr
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert set(table["status"]) == {"ok"} and table["tracking"].str.startswith("failed").all()


@pytest.mark.parametrize("kind", KINDS + ["no store yet"])
def test_report_from_an_unusable_store_is_one_line_and_creates_nothing(tmp_path, kind):
    uri = f"sqlite:///{tmp_path}/none/mlflow.db" if kind == "no store yet" else bad_uris(tmp_path)[kind]
    work = tmp_path / "work"
    work.mkdir()
    before = listing(tmp_path)
    t0 = time.time()
    proc = run(["--experiment", "simsched", "--uri", uri], work, module="simsched.report")
    assert time.time() - t0 < 60
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: --uri"), proc.stderr
    assert listing(tmp_path) == before


def test_report_of_a_missing_experiment_names_the_others_and_changes_nothing(tmp_path):
    proc = run([*TINY, "tracking.background=false", "tracking.experiment=present", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = listing(tmp_path)
    out = run(["--experiment", "nope"], tmp_path, module="simsched.report")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "no such MLflow experiment" in out.stderr
    assert "present" in out.stderr
    assert listing(tmp_path) == before


def test_report_with_the_default_store_absent_creates_no_store(tmp_path):
    proc = run(["--experiment", "nope"], tmp_path, module="simsched.report")
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_server_that_never_answers_costs_bounded_time(tmp_path, blackhole):
    t0 = time.time()
    proc = run([*TINY, f"tracking.uri={blackhole}", "tracking.background=false", "hydra.run.dir=run"], tmp_path)
    assert time.time() - t0 < 120 and proc.returncode == 0
    no_traceback(proc.stderr)
    assert len(mlflow_lines(proc.stderr)) == 1
    t0 = time.time()
    rep = run(["--experiment", "x", "--uri", blackhole], tmp_path, module="simsched.report")
    assert time.time() - t0 < 120 and rep.returncode == 2
    assert len(rep.stderr.strip().splitlines()) == 1


def _create(uri: str, name: str, out) -> None:
    try:
        from simsched.tracking import experiment_id, open_client

        client = open_client(uri)
        out.put(experiment_id(client, uri, name))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put(f"error: {type(exc).__name__}: {exc}")


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    """Creating the store's tables is serialised by the lock beside it: without it, two
    processes run MLflow's migrations at once and one fails."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    out = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(uri, "together", out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    assert len(set(got)) == 1 and not got[0].startswith("error"), got


def test_one_job_whose_logging_fails_shows_in_the_summary_and_the_status(tmp_path):
    """The sweep's store works, but one job's logging fails: its row says so and the report
    (like the sweep) exits 1; ``track`` logs it once the store works again."""
    proc = run(["-m", "seed=0,1", *TINY, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=one",
                "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state_file = tmp_path / "sweep" / "1" / "tracking.json"
    state = json.loads(state_file.read_text())
    state.update(state="failed", error="OperationalError: disk I/O error")   # as a failed write leaves it
    state.pop("run_id")
    state_file.write_text(json.dumps(state))
    rep = run([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")], tmp_path, module="simsched.report")
    assert rep.returncode == 1 and "1 job(s) not logged to MLflow" in rep.stdout
    table = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("job")
    assert table.loc[1, "tracking"].startswith("failed: OperationalError") and table.loc[0, "tracking"] == "logged"
    fixed = run([str(tmp_path / "sweep")], tmp_path, module="simsched.track")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(state_file.read_text())["state"] == "logged"


def test_lock_retries_are_bounded(monkeypatch):
    from simsched import tracking

    slept = []
    monkeypatch.setattr(tracking.time, "sleep", slept.append)

    def locked():
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    with pytest.raises(RuntimeError):
        tracking.retry_locked(locked)
    assert len(slept) == 11 and sum(slept) < 20


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_finds_each_fault_without_mlflow(tmp_path, kind):
    import subprocess
    import sys

    uri = bad_uris(tmp_path)[kind]
    code = ("import sys; from simsched.tracking import preflight; "
            f"r = preflight({uri!r}); print(r); assert r; assert 'mlflow' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
