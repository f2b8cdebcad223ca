"""A plain (non-editable) install runs: the wheel carries conf/ and sweeps/ as package data.

The wheel is built from a copy of the source tree, the copy is deleted, and the installed
package runs the main job and a named sweep from an unrelated folder. (.ci/run repeats this in
a fresh virtual environment with the dependencies installed from the wheel's metadata.)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    """pyproject lists packages explicitly (conf/ and sweeps/ are mapped into simsched):
    a new subpackage missing from the list would be left out of the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("simsched", "calibrate", "hydra_plugins") for p in (ROOT / top).rglob("__init__.py")}
    found |= {"simsched.conf", "simsched.sweeps"}
    assert found == listed


def _source_copy(dst: Path) -> Path:
    """The tracked files of the checkout (what a fresh clone holds)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.mark.slow
def test_wheel_runs_without_the_source_tree(tmp_path):
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    shutil.rmtree(src)
    site = tmp_path / "site"
    wheel = next(dist.glob("simsched-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    assert (site / "simsched" / "conf" / "config.yaml").is_file()
    assert (site / "simsched" / "sweeps" / "compare.yaml").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_DISABLE_TELEMETRY": "true"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "simsched", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    probe = subprocess.run([sys.executable, "-c", "import simsched; print(simsched.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(site))   # the installed copy, not the checkout
    proc = run("tracking=none", "workload.num_requests=200")
    assert proc.returncode == 0, proc.stderr
    assert list((work / "outputs").rglob("metrics.json"))
    proc = run("+sweep=compare", "tracking=none", "workload.num_requests=100", "seed=0",
               "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, proc.stderr
    assert (work / "sweep" / "summary.csv").is_file()
