"""Running the commands from a checkout leaves it clean: everything they write by default lands
in the working directory under a name .gitignore covers, and nothing lands in the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "traces" / "azure_llm_2023_code_sample.csv"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def _status() -> str:
    return _git("status", "--porcelain", "--untracked-files=all", "--ignored").stdout


@pytest.mark.slow   # five commands in fresh processes: about a minute on 2 busy cores
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_default_outputs_are_ignored_and_the_source_tree_is_untouched(tmp_path):
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    small = ["workload.num_requests=200", "output.plots=false"]
    commands = [
        ["simsched", "workload=azure_trace", f"workload.path={SAMPLE}", "workload.max_requests=100"],
        ["simsched", "-m", "seed=0,1", *small],
        ["simsched.report", "--experiment", "simsched"],
        ["simsched.capacity", "workload=poisson", *small, "tracking=none", "--replications", "1",
         "--rel-tol", "0.5", "--targets", "0.05"],
        ["simsched.workloads.fit", str(SAMPLE)],
    ]
    before = _status()
    for cmd in commands:
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
    assert _status() == before   # nothing new in the source tree, ignored files included
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir())
    assert {"outputs/", "multirun/", "report/", "capacity/", "mlflow.db", ".cache/"} <= set(written), written
    for name in written:
        assert _git("check-ignore", "--no-index", "-q", name).returncode == 0, f"{name} is not in .gitignore"
