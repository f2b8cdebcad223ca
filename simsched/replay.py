"""Replay a measured run's requests through the continuous engine.

The completed requests of the real run are fed to the engine at their measured arrival times,
with their measured prompt and output lengths (as ``ignore_eos`` benchmarks produce exactly
``output_tokens``). A shared prompt prefix (``prefix_tokens`` / ``prefix_group`` columns)
becomes block hash ids, so the engine's prefix cache sees the same reuse the real one did.
Requests that failed in the real run are not replayed: what load they put on the server before
failing is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.errors import ConfigError
from simsched.workloads.measured import MeasuredRun
from simsched.workloads.requests import RequestTable


@dataclass
class Replayed:
    """The simulated side, one entry per row of the measured run (NaN where not completed).
    ``status``: completed, rejected, unfinished (the engine's), or not_replayed (failed in the
    real run)."""

    status: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    result: Any                      # the engine's ContinuousResult, for the replayed rows

    @property
    def completed(self) -> np.ndarray:
        return self.status == "completed"

    @property
    def replayed(self) -> np.ndarray:
        return self.status != "not_replayed"


def request_table(run: MeasuredRun, rows: np.ndarray, block_size: int) -> RequestTable:
    """The engine's requests for ``rows`` of the run; a shared prefix becomes one hash id per
    whole block of it (equal ids for equal (group, block)), the rest of a prompt unique."""
    hash_offsets = hash_values = None
    if run.prefix_tokens is not None:
        ids: dict[tuple[int, int], int] = {}
        offsets, values = [0], []
        for i in rows:
            for j in range(int(run.prefix_tokens[i]) // block_size):
                values.append(ids.setdefault((int(run.prefix_group[i]), j), len(ids) + 1))
            offsets.append(len(values))
        hash_offsets, hash_values = np.array(offsets), np.array(values, dtype=np.int64)
    return RequestTable(run.arrival[rows], run.prompt[rows], run.output[rows],
                        hash_offsets=hash_offsets, hash_values=hash_values,
                        hash_block_tokens=block_size if hash_offsets is not None else None)


def replay_with(run: MeasuredRun, engine: Any, step: Any, hardware: Any, max_seqs_cap: int | None = None) -> Replayed:
    """Replay the run's completed requests with explicit engine settings, step time and GPUs."""
    from simsched.engines.continuous import simulate_continuous
    from simsched.engines.continuous.result import STATUS_NAMES

    if engine.hash_block_tokens not in (None, engine.block_size) and run.prefix_tokens is not None:
        raise ConfigError("engine.hash_block_tokens", "a replayed prefix is hashed per KV block: leave it unset "
                          f"or equal to engine.block_size ({engine.block_size})", engine.hash_block_tokens)
    rows = np.flatnonzero(run.ok)
    table = request_table(run, rows, int(engine.block_size))
    result, _ = simulate_continuous(table, engine, step, hardware, max_seqs_cap)
    n = len(run)
    status = np.full(n, "not_replayed", dtype=object)
    status[rows] = np.array(STATUS_NAMES, dtype=object)[result.status]
    ttft, e2e = np.full(n, np.nan), np.full(n, np.nan)
    done = result.status == STATUS_NAMES.index("completed")
    ttft[rows[done]] = result.ttft[done]
    e2e[rows[done]] = result.e2e[done]
    return Replayed(status, ttft, e2e, result)



@dataclass(frozen=True)
class Setup:
    """What a replay runs with, from a composed config: the engine settings with vLLM's
    defaults resolved for the GPU class, the step time and the replicas' hardware."""

    engine: Any
    step: Any
    hardware: Any
    max_seqs_cap: int | None
    max_num_batched_tokens: int
    max_num_seqs: int
    num_gpu_blocks: int


def setup(cfg: Any) -> Setup:
    """Build the replay's engine, step time and hardware from ``cfg`` (``engine=continuous``)."""
    from simsched.engines.continuous import ContinuousEngine
    from simsched.engines.continuous.simulate import prepare
    from simsched.run import build_components

    comps = build_components(cfg)
    if not isinstance(comps.engine, ContinuousEngine):
        raise ConfigError("engine", "the comparison replays through the continuous engine only",
                          getattr(comps.engine, "name", None), "continuous")
    step, hardware, cap = prepare(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
    r = comps.engine.resolved(hardware.name, hardware.memory_gib, hardware.kv_capacity_tokens, cap)
    return Setup(comps.engine, step, hardware, cap, int(r.max_num_batched_tokens), int(r.max_num_seqs),
                 int(r.num_gpu_blocks))
