"""Helpers of the fault-injection tests: run the command lines as a user would, start them in
their own process group (a terminal's Ctrl-C reaches the whole group), kill them, and look at
what they left: folders, the MLflow store, processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
TINY = ["workload.num_requests=200", "output.plots=false", "output.quiet=true"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), MLFLOW_DISABLE_TELEMETRY="true")


def run(args: list[str], cwd: Path, timeout: float = 600, module: str = "simsched") -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` to the end."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def start(args: list[str], cwd: Path, module: str = "simsched") -> subprocess.Popen:
    """``python -m MODULE ARGS`` in its own session (process group); output in cwd/out.txt, err.txt."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env(),
                            stdout=open(cwd / "out.txt", "w"), stderr=open(cwd / "err.txt", "w"),
                            start_new_session=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finished_jobs(sweep_dir: Path) -> int:
    return len(list(sweep_dir.glob("*/done.json")))


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def interrupt(proc: subprocess.Popen, how: str) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the whole group), SIGTERM or SIGKILL to the
    launching process alone."""
    if how == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, getattr(signal, how))


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def runs(db: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


def metrics_of(sweep_dir: Path) -> dict[str, dict]:
    """Each complete job's metrics (wall-clock figures dropped), by its overrides."""
    out = {}
    for done in sweep_dir.glob("*/done.json"):
        job = done.parent
        m = json.loads((job / "metrics.json").read_text())
        for k in ("sim_wall_s", "workload_wall_s", "sim_requests_per_s"):
            m.pop(k, None)
        out[(job / ".hydra" / "overrides.yaml").read_text()] = m
    return out


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder where no file can be created, for root too (root ignores permission bits:
    then a path under /sys, which the kernel refuses to create files in)."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys/simsched-fault-test")
