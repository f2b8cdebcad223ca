"""simsched's sweeper (``hydra/sweeper: simsched``, the default in conf/config.yaml; its options
are Hydra's basic sweeper's, in conf/hydra/sweeper/simsched.yaml): the basic sweeper, with two
changes.

- Job configs are composed once per shape (``simsched.app.compose``): the sweeper validates
  every job before launching it (a full composition per shape, the others' values checked on a
  scratch copy), and hands the caching loader to the launcher, which composes each job again
  from its shape; a job costs milliseconds of composition instead of Hydra's ~0.6 s.
- Before launching, the list of jobs is written to ``jobs.json`` in the sweep folder, so an
  interrupted sweep knows which jobs never started (``python -m simsched.resume``).
- On Hydra's joblib launcher, a ``batch_size`` left at ``auto`` becomes about four chunks of
  jobs per worker (as simsched's own launcher does): joblib pickles the launch context (~300 kB:
  Hydra's config loader and singletons) once per chunk instead of once or twice per job.

It lives in ``hydra_plugins`` because Hydra only instantiates sweepers from there; Hydra imports
this module at every start-up, so it imports nothing heavy.
"""
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SimschedSweeper(BasicSweeper):
    """The basic sweeper with job configs composed once per shape and a written job list."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from simsched.app.compose import caching_context

        super().setup(hydra_context=caching_context(hydra_context), task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job composes: a full composition per shape, the values of the others applied
        to a scratch copy (the caching loader's ``validate``)."""
        loader = self.hydra_context.config_loader if self.hydra_context is not None else None
        if not hasattr(loader, "validate"):
            return super().validate_batch_is_legal(batch)
        for overrides in batch:
            loader.validate(self.config, list(overrides))

    def sweep(self, arguments: List[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from simsched.app.sweep import write_job_list

        assert self.config is not None
        params = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        jobs = [job for batch in self.split_arguments(OverridesParser.create().parse_overrides(params), None)
                for job in batch]
        write_job_list(self.config, jobs)
        chunk_joblib_jobs(self.launcher, min(len(jobs), self.max_batch_size or len(jobs)))
        return super().sweep(arguments)


def chunk_joblib_jobs(launcher: Any, n_jobs: int) -> None:
    """Hydra's joblib launcher with ``batch_size: auto``: chunks of about a quarter of a
    worker's share of the jobs. (joblib's own ``auto`` starts at one job per chunk and grows
    only when chunks finish in under a fraction of a second; a simsched job rarely does.)"""
    settings = getattr(launcher, "joblib", None)
    if type(launcher).__name__ != "JoblibLauncher" or not isinstance(settings, dict):
        return
    if str(settings.get("batch_size", "auto")) != "auto":
        return
    import math
    import os

    workers = int(settings.get("n_jobs") or 1)
    if workers < 0:   # joblib's -1: every CPU, -2: all but one, ...
        workers = max(1, (os.cpu_count() or 1) + 1 + workers)
    settings["batch_size"] = max(1, math.ceil(n_jobs / (4 * workers)))
