"""What the checks share: run settings, seeding, building and running one simulation, plots."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from simsched.cluster import Gpus
from simsched.engines.run_to_completion import SimResult, simulate
from simsched.predictor import Oracle
from simsched.workloads.arrivals import Poisson
from simsched.workloads.lengths import Fixed
from simsched.workloads.requests import RequestTable
from simsched.workloads.synthetic import SyntheticWorkload

BIG_KV = 10**9   # KV capacity for checks where memory must never bind
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """How much work the suite does. ``quick`` shrinks request counts and replications."""

    quick: bool = False
    reps: int | None = None     # replications per point (None: 5, or 3 when quick)
    seed: int = 0
    jobs: int = 1               # processes for checks that run independent replications in parallel

    @property
    def replications(self) -> int:
        return self.reps if self.reps is not None else (3 if self.quick else 5)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def rng(seed: int, *ids: int) -> np.random.Generator:
    """An independent stream per (suite seed, check, setting, replication, ...)."""
    return np.random.default_rng([int(seed), *[int(i) for i in ids]])


def poisson_requests(rate: float, output: Any, n: int, gen: np.random.Generator,
                     prompt: Any = None, arrivals: Any = None) -> RequestTable:
    """n requests: Poisson arrivals at ``rate`` (or the given process), one-token prompts unless
    a prompt distribution is given, outputs from ``output``."""
    wl = SyntheticWorkload(arrivals or Poisson(rate), prompt or Fixed(1), output, int(n))
    return wl.generate(gen)


def run_sim(requests: RequestTable, scheduler: Any, latency: Any, gpus: int = 1,
            predictor: Any = None, gen: np.random.Generator | None = None,
            kv_capacity_tokens: int = BIG_KV, release: str = "batch_end") -> SimResult:
    """One engine run through the plain-Python API."""
    return simulate(requests, scheduler, latency, Gpus(count=int(gpus), kv_capacity_tokens=int(kv_capacity_tokens)),
                    predictor or Oracle(), gen if gen is not None else np.random.default_rng(0), release=release)


def parallel_map(fn: Callable[[Any], T], tasks: list[Any], jobs: int) -> list[T]:
    """``[fn(t) for t in tasks]``, in ``jobs`` processes when jobs > 1 (``fn`` and the tasks must
    pickle). Results come back in task order, so a run is the same whatever ``jobs`` is."""
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        return list(pool.map(fn, tasks, chunksize=max(1, len(tasks) // (4 * jobs))))


def figure(width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str,
           legend_size: int = 7, title_size: int | None = None) -> str:
    """Label, grid and save a one-axes check plot (every check's plot ends the same way)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    return save(fig, path)


def save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
