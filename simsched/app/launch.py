"""The work of simsched's launcher (``hydra_plugins/simsched_plugins/launcher.py``): run a batch
of sweep jobs in this process or on worker processes, each job set up the way Hydra's
``run_job`` sets it up, minus what costs without serving a job.

What a job gets, as with Hydra's launchers: its config (from the caching loader), ``hydra.job.num``
and ``id``, ``hydra.runtime.output_dir``, ``HydraConfig``, its folder with ``.hydra/config.yaml``
and ``.hydra/overrides.yaml``, its log file (``<job>/<job name>.log``), ``hydra.job.env_set``,
``hydra.job.chdir``, and the ``on_job_start`` / ``on_job_end`` callbacks (which receive the
job's config without its ``hydra`` node: ``HydraConfig.get()`` has it). What it does not get: a
per-job ``.hydra/hydra.yaml`` (the sweep's ``multirun.yaml`` holds Hydra's settings) and Hydra's
four deep copies of the config per job.

Worker processes start from a fork server (fresh interpreters that import simsched, and MLflow
when the sweep logs to it, once), take jobs in chunks, and exit when the launching process is
gone; Ctrl-C or SIGTERM terminates them.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, env_override, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

log = logging.getLogger(__name__)


def launch(context: HydraContext, config: DictConfig, task_function: TaskFunction, n_jobs: int,
           job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Run the jobs; their returns in job order."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    workers = min(len(jobs), (os.cpu_count() or 1) if n_jobs < 1 else n_jobs)
    where = "in this process" if workers <= 1 else f"on {workers} worker processes"
    log.info(f"Launching {len(jobs)} jobs {where}")
    for idx, overrides in jobs if len(jobs) <= 20 else []:   # a long sweep's list is in jobs.json
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    if workers <= 1:
        from simsched.app.sweep import interrupt_pending

        done = []
        for idx, overrides in jobs:
            done.append(run_job(context, config, task_function, idx, overrides))
            if interrupt_pending():   # a Ctrl-C that Python dropped inside a finalizer
                raise KeyboardInterrupt
        return done
    return _on_workers(context, config, task_function, jobs, workers)


def run_job(context: HydraContext, master: DictConfig, task_function: TaskFunction, idx: int,
            overrides: list[str]) -> JobReturn:
    """Compose job ``idx`` and run it as Hydra's ``run_job`` would (see the module docstring)."""
    cfg = context.config_loader.load_sweep_config(master, overrides)   # a private copy
    with open_dict(cfg):
        cfg.hydra.job.id = idx
        cfg.hydra.job.num = idx
    hydra_config = HydraConfig.instance()
    previous, old_cwd = hydra_config.cfg, os.getcwd()
    if "${hydra:" in str(OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_resolution_failure=False)) + \
            str(master.hydra.sweep.get("dir", "")):
        hydra_config.cfg = _hydra_view(cfg)   # the folder's name refers to Hydra's own node
    output_dir = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = output_dir
    hydra_config.cfg = _hydra_view(cfg)
    ret = JobReturn()
    ret.overrides = [str(o) for o in cfg.hydra.overrides.task]
    ret.hydra_cfg = hydra_config.cfg
    chdir, output_subdir = bool(cfg.hydra.job.chdir), cfg.hydra.output_subdir
    env_set = dict(cfg.hydra.job.env_set)
    task_cfg = cfg   # this job's own copy: its task config is it without the hydra node
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    ret.cfg = task_cfg
    handler = None
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if chdir:
            os.chdir(output_dir)
        ret.working_dir = os.getcwd()
        handler = _job_log(Path(output_dir) / f"{ret.hydra_cfg.hydra.job.name}.log")
        if output_subdir is not None:
            meta = Path(output_dir) / str(output_subdir)
            meta.mkdir(parents=True, exist_ok=True)
            (meta / "config.yaml").write_text(_to_yaml(task_cfg), encoding="utf-8")
            (meta / "overrides.yaml").write_text(_to_yaml(ret.overrides), encoding="utf-8")
        with env_override(env_set):
            context.callbacks.on_job_start(config=task_cfg, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:  # noqa: BLE001 - as Hydra's run_job: the sweeper reads it
                ret.return_value = exc
                ret.status = JobStatus.FAILED
        ret.task_name = str(ret.hydra_cfg.hydra.job.name)
        context.callbacks.on_job_end(config=task_cfg, job_return=ret)
        return ret
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        hydra_config.cfg = previous
        if chdir:
            os.chdir(old_cwd)


def _hydra_view(cfg: DictConfig) -> DictConfig:
    """What ``HydraConfig.set_config(cfg)`` stores (a config holding ``cfg.hydra``, read-only,
    its interpolations resolved against ``cfg``) without its deep copy of the node (~7 ms a
    job): ``cfg`` is this job's own copy, so the view may share the node."""
    OmegaConf.set_readonly(cfg.hydra, True)
    view = OmegaConf.create({})
    with flag_override(view, "no_deepcopy_set_nodes", True):
        view["hydra"] = cfg.hydra
    view.hydra._set_parent(cfg)
    return view


def _to_yaml(data: Any) -> str:
    """``OmegaConf.to_yaml(data)`` through libyaml's emitter when PyYAML has it (same text,
    ~3 times faster)."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    if not getattr(yaml, "__with_libyaml__", False):
        return OmegaConf.to_yaml(data)
    container = OmegaConf.to_container(data, enum_to_str=True) if OmegaConf.is_config(data) else data
    dumper = type("OmegaConfCDumper", (yaml.CDumper,), {})
    dumper.add_representer(str, get_omega_conf_dumper().str_representer)
    return yaml.dump(container, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def _job_log(path: Path) -> logging.Handler:
    """The job's log file (what Hydra's default job logging writes), on the root logger."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


# --- worker processes --------------------------------------------------------------------------

def _on_workers(context: HydraContext, config: DictConfig, task_function: TaskFunction,
                jobs: list[tuple[int, list[str]]], workers: int) -> list[JobReturn]:
    """Run ``jobs`` on a pool of ``workers`` processes, in chunks (about four per worker)."""
    ctx = _worker_context(config)
    size = max(1, math.ceil(len(jobs) / (4 * workers)))
    import cloudpickle   # the structured-config classes are generated at run time: pickled by value

    shared = cloudpickle.dumps((context, config, task_function, Singleton.get_state()))
    chunks = [(shared, jobs[i:i + size]) for i in range(0, len(jobs), size)]
    results: dict[int, JobReturn] = {}
    pool = ctx.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        for chunk in pool.imap_unordered(_worker_run, chunks):
            for idx, ret in chunk:
                results[idx] = ret
        pool.close()
    except BaseException:
        pool.terminate()   # Ctrl-C, SIGTERM, a broken worker: no job outlives the sweep
        raise
    finally:
        pool.join()
    return [results[idx] for idx, _ in jobs]


def start_workers_early(config: DictConfig) -> None:
    """A multirun on simsched's launcher with worker processes: start their fork server now, so
    that its imports (~3 s: simsched, pyarrow, MLflow) run on another core while this process
    composes the sweep, opens the tracking store and checks every job. The pool created at
    launch forks its workers from it. ``config``: a job's config with its ``hydra`` node."""
    if not str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith(".SimschedLauncher"):
        return
    n_jobs = int(OmegaConf.select(config, "hydra.launcher.n_jobs", default=1) or 1)
    if n_jobs == 1 or (n_jobs < 1 and (os.cpu_count() or 1) <= 1):
        return
    ctx = _worker_context(config)
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _worker_context(config: DictConfig) -> Any:
    """Workers come from a fork server that has imported what every job imports (once); where
    there is no fork server, they are spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    preload = ["simsched.app.launch", "simsched.app.sweep", "simsched.run", "simsched.engines.run_to_completion",
               "simsched.metrics", "simsched.outputs", "pyarrow.parquet"]
    if str(OmegaConf.select(config, "tracking._target_", default="")).endswith("MlflowTracker"):
        preload += ["mlflow.tracking", "mlflow.entities", "mlflow.store.tracking.sqlalchemy_store",
                    "mlflow.store.artifact.local_artifact_repo", "filelock"]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx


def _worker_init(launcher_pid: int) -> None:   # a worker of this machine's pool
    from simsched.app.sweep import end_with_launcher

    end_with_launcher(launcher_pid)


def _worker_run(args: tuple[bytes, list[tuple[int, list[str]]]]) -> list[tuple[int, JobReturn]]:
    """Run a chunk of jobs in a worker; the launch context comes with each chunk."""
    import cloudpickle

    shared, chunk = args
    context, config, task_function, singleton_state = cloudpickle.loads(shared)
    setup_globals()
    Singleton.set_state(singleton_state)
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    out = []
    for idx, overrides in chunk:
        ret = run_job(context, config, task_function, idx, overrides)
        ret.cfg = ret.hydra_cfg = None   # not sent back: the job folder holds them
        if ret.status == JobStatus.FAILED:
            ret.return_value = RuntimeError(" ".join(str(ret._return_value).split()))
        out.append((idx, ret))
    return out
