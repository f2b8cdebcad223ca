"""User components through entry points (README "Your own components"): the example plug-in
``examples/pow2_batcher`` is built and installed into a temp folder with pip, as a user would,
and found through its entry point; a component that is not registered is refused before import."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from simsched import registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pow2_batcher"
TARGET = "pow2_batcher.PowerOfTwoBatcher"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example distribution, pip-installed into a folder of its own (``--target``)."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(root / "site"), str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")   # build with this environment's setuptools: no index needed
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "site" / "pow2_batcher-0.1.0.dist-info" / "entry_points.txt").is_file()
    return root / "site"


def cli(cwd: Path, pythonpath: list[Path], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=os.pathsep.join(str(p) for p in [*pythonpath, REPO]))
    return subprocess.run([sys.executable, "-m", "simsched", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_entry_point_metadata_adds_the_target_to_its_slot(site, monkeypatch):
    assert TARGET not in registry.allowed_targets("scheduler.batcher")
    monkeypatch.syspath_prepend(str(site))
    assert TARGET in registry.allowed_targets("scheduler.batcher")
    assert TARGET not in registry.allowed_targets("workload.arrivals")   # registered for batchers only
    assert registry.check_target("scheduler.batcher", TARGET) == TARGET


def test_registered_batcher_runs_from_the_command_line(site, tmp_path):
    proc = cli(tmp_path, [site], "hydra.searchpath=[pkg://pow2_batcher.conf]", "scheduler=pow2_fifo",
               "tracking=none", "workload.num_requests=500", "output.plots=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    sizes = pd.read_parquet(tmp_path / "run" / "batches.parquet")["size"]
    assert set(sizes) <= {1, 2, 4, 8, 16, 32, 64} and len(set(sizes)) > 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["completed"] + metrics["rejected"] + metrics["unfinished"] == metrics["arrived"] == 500
    # its own checks name their key
    proc = cli(tmp_path, [site], "hydra.searchpath=[pkg://pow2_batcher.conf]", "scheduler=pow2_fifo",
               "scheduler.batcher.b_max=0", "tracking=none")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: scheduler.batcher.b_max: must be > 0 (got 0)"


def test_the_same_class_without_registration_is_refused(site, tmp_path):
    plain = tmp_path / "plain"   # the module importable, its distribution metadata absent
    shutil.copytree(site / "pow2_batcher", plain / "pow2_batcher")
    proc = cli(tmp_path, [plain], "hydra.searchpath=[pkg://pow2_batcher.conf]", "scheduler=pow2_fifo",
               "tracking=none")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: scheduler.batcher._target_: not a component of this slot")
    assert "'simsched.batchers'" in line and "simsched.batchers.DynamicBatcher" in line


def test_unregistered_target_is_never_imported(tmp_path):
    (tmp_path / "side_effect.py").write_text(
        "from pathlib import Path\nPath('imported.txt').write_text('imported')\nclass B:\n    pass\n")
    proc = cli(tmp_path, [tmp_path], "scheduler.batcher._target_=side_effect.B", "tracking=none")
    assert proc.returncode == 2 and "not a component of this slot" in proc.stderr
    assert not (tmp_path / "imported.txt").exists()
