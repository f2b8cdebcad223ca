"""The sweeper's caching loader gives every job exactly the config Hydra's own composition gives,
and simsched's launcher runs jobs as Hydra's ``run_job`` would (folders, .hydra files, config)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def hydra_loader():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from simsched.app.paths import config_dir
    from simsched.app.sweep import register_sweeps
    from simsched.config import register_configs

    register_configs()
    register_sweeps()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


MASTERS = {
    "load": ["+sweep=load", "tracking=none"],
    "plain": ["tracking=none", "workload=poisson"],
    "compare": ["+sweep=compare", "gpus=a100_40gb"],
}
JOBS = {
    "load": [["workload.arrivals.rate=1", "scheduler=static_fifo", "seed=0"],
             ["workload.arrivals.rate=2.5", "scheduler=static_fifo", "seed=1"],
             ["workload.arrivals.rate=14", "scheduler=multi_bin_dynamic", "seed=0"],
             ["workload.arrivals.rate=4", "scheduler=multi_bin_dynamic", "seed=1"]],
    "plain": [["seed=3", "scheduler.k_bins=2", "sla.ttft_s=null"],
              ["seed=4", "scheduler.k_bins=8", "sla.ttft_s=1.5"],
              ["seed=5", "scheduler.k_bins=8", "sla.ttft_s=2", "+extra=1"],
              ["seed=6", "scheduler.k_bins=16", "sla.ttft_s=2", "+extra=2"],
              ["seed=7", "scheduler.boundaries=[10,100,1000]", "scheduler.k_bins=4"],
              ["seed=8", "scheduler.boundaries=[20,200,2000]", "scheduler.k_bins=4"],
              ["seed=9", "engine.horizon_s=100", "output.quiet=true"],
              ["seed=10", "engine.horizon_s=200.5", "output.quiet=false"],
              ["seed=11", "hydra.job.chdir=false"],
              ["seed=12", "hydra.job.chdir=false"],
              ["scheduler=dynamic_no_bins", "seed=1"], ["scheduler=dynamic_no_bins", "seed=2"],
              ["seed='${oc.env:HOME}'"], ["seed=13"]],
    "compare": [[f"scheduler={s}", f"seed={k}"] for s in ("static_fifo", "dynamic_no_bins", "multi_bin_dynamic")
                for k in (0, 1, 2)],
}


@pytest.mark.parametrize("name", list(MASTERS))
def test_every_job_config_equals_hydras(hydra_loader, name):
    from hydra.types import RunMode

    from simsched.app.compose import CachingConfigLoader

    master = hydra_loader.load_configuration("config", MASTERS[name] + ["hydra.sweep.dir=/tmp/x"], RunMode.MULTIRUN)
    cached = CachingConfigLoader(hydra_loader)
    for overrides in JOBS[name] + JOBS[name]:   # twice: the second pass is all cache hits
        fast = cached.load_sweep_config(master, overrides)
        full = hydra_loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(full), overrides
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full), overrides
        assert OmegaConf.is_struct(fast) == OmegaConf.is_struct(full)
        assert OmegaConf.get_type(fast, "scheduler") is OmegaConf.get_type(full, "scheduler")
    assert len(cached._shapes) < len(JOBS[name])    # most jobs were not composed from scratch


@pytest.mark.parametrize("bad", ["seed=abc", "scheduler.k_bins=two", "sla.ttft_s=[1]"])
def test_a_bad_value_fails_as_hydras_composition_fails(hydra_loader, bad):
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from simsched.app.compose import CachingConfigLoader

    master = hydra_loader.load_configuration("config", ["tracking=none", "hydra.sweep.dir=/tmp/x"], RunMode.MULTIRUN)
    cached = CachingConfigLoader(hydra_loader)
    key = bad.split("=")[0]
    cached.load_sweep_config(master, [f"{key}=1" if key != "sla.ttft_s" else f"{key}=2"])   # the shape is cached
    with pytest.raises((HydraException, OmegaConfBaseException)):
        hydra_loader.load_sweep_config(master, [bad])
    with pytest.raises((HydraException, OmegaConfBaseException)):
        cached.load_sweep_config(master, [bad])
    with pytest.raises((HydraException, OmegaConfBaseException)):
        cached.validate(master, [bad])


def test_the_launcher_writes_what_hydras_run_job_writes(tmp_path):
    """Job folders of simsched's launcher and of Hydra's basic launcher hold the same config,
    overrides and results."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), MLFLOW_DISABLE_TELEMETRY="true")
    for launcher in ("simsched", "basic"):
        proc = subprocess.run([sys.executable, "-m", "simsched", "-m", "seed=0,1", "scheduler.k_bins=2,4",
                               "workload.num_requests=200", "output.plots=false", "output.quiet=true",
                               "tracking=none", f"hydra/launcher={launcher}", f"hydra.sweep.dir={launcher}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for job in range(4):
        a, b = tmp_path / "simsched" / str(job), tmp_path / "basic" / str(job)
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json"):
            if name == "metrics.json":
                import json

                ma, mb = (json.loads((d / name).read_text()) for d in (a, b))
                for k in ("sim_wall_s", "workload_wall_s", "sim_requests_per_s"):
                    ma.pop(k), mb.pop(k)
                assert ma == mb, job
            else:
                assert (a / name).read_text() == (b / name).read_text(), (job, name)
        assert (a / "simsched.log").is_file() and (a / "done.json").is_file()
