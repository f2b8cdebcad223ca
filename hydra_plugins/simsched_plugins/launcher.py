"""simsched's launcher (``hydra/launcher: simsched``, the default in conf/config.yaml; its options
are in conf/hydra/launcher/simsched.yaml).

``n_jobs: 1`` runs the jobs one after another in the launching process; ``n_jobs: N`` (or -1,
one per CPU) runs them on N worker processes, in chunks. Either way a job costs little besides
its simulation: its config comes from the sweeper's per-shape cache, and it is set up with the
steps of Hydra's ``run_job`` that a job needs (its folder, ``.hydra/config.yaml`` and
``overrides.yaml``, its log file, the callbacks) without Hydra's repeated deep copies and the
per-job ``hydra.yaml`` (the sweep's ``multirun.yaml`` holds Hydra's settings). Workers exit
when the launching process is gone. The work is in ``simsched.app.launch``; this module is
imported by Hydra at every start-up, so it imports nothing heavy.
"""
from typing import Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SimschedLauncher(Launcher):
    def __init__(self, n_jobs: int = 1) -> None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"hydra.launcher.n_jobs: must be a positive integer or -1 (got {n_jobs!r})")
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from simsched.app.launch import launch

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return launch(self.hydra_context, self.config, self.task_function, self.n_jobs, job_overrides,
                      initial_job_idx)



