"""What each ``scheduler`` option means on ``engine=continuous`` (issue 12), as the engine's
policy seam: a WAITING-queue order (``waiting_queue``) and a cap on the running batch.

    scheduler           WAITING order                       running-batch cap (max_num_seqs)
    vllm                engine.policy (fcfs | priority)     engine.max_num_seqs
    static_fifo         fcfs                                batcher.batch_size
    dynamic_no_bins     fcfs                                Pang's b* = min(b_mem, b_SLA) <= b_max
    multi_bin_static    K bins (bin_selection)              batcher.batch_size
    multi_bin_dynamic   K bins (bin_selection)              Pang's b* <= b_max
    sjf                 shortest predicted output, aged     engine.max_num_seqs
    priority            vLLM priority                       engine.max_num_seqs
    lpm                 SGLang longest prefix match         engine.max_num_seqs

Bins (``k_bins`` > 1) hold requests by predicted output length with the scheduler's own
boundaries (``Scheduler.cut_points`` / ``assign_bins``: equal-mass quantiles of predictions,
and the predictor's ±1-bin error); all bins feed the one token budget of the replica's step.
``k_bins: 1`` is FCFS itself. Run-to-completion-only options: ``full_batches_only`` has no
meaning when requests join a running batch one by one (waiting for a full batch would idle a
GPU that vLLM keeps busy); it is ignored on this engine and reported as
``policy_ignored`` in the run's settings. ``engine.max_num_seqs``, when set, overrides a
scheduler's batch size. ``engine.policy`` other than fcfs is refused with any scheduler but
``vllm`` (the scheduler sets the order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simsched.batchers import ControllerParams, DynamicBatcher, FixedBatcher, SlaState, sla_state
from simsched.engines.continuous.state import POLICY_BINS, POLICY_FCFS, POLICY_LPM, POLICY_PRIORITY
from simsched.errors import ConfigError
from simsched.scheduler import QueuePolicy, Scheduler, VllmScheduler
from simsched.workloads.requests import RequestTable

AGING_KEY_SCALE = 1000.0    # the SJF heap key is in milli-tokens (an int64 column)


@dataclass(frozen=True)
class PolicySetup:
    """The engine's inputs for a policy: its code, bins, controllers and per-request columns."""

    name: str
    code: int
    priority: np.ndarray
    predicted: np.ndarray | None = None
    bins: np.ndarray | None = None
    k_bins: int = 1
    bin_rule: int = 0
    controller: ControllerParams | None = None
    ignored: str = ""

    def sla(self, replicas: int) -> SlaState:
        return sla_state(replicas if self.controller is not None else 1, self.params_for_engine())

    def params_for_engine(self) -> ControllerParams:
        """The controllers' numbers (a dummy set of the same types when they are off)."""
        return self.controller if self.controller is not None else DynamicBatcher().params(1)


def max_seqs_cap(scheduler: Any) -> int | None:
    """A scheduler's own limit on running requests: its batch size (fixed) or b_max (dynamic)."""
    if isinstance(scheduler, Scheduler):
        return int(scheduler.batcher.max_batch)
    if isinstance(scheduler, (VllmScheduler, QueuePolicy)):
        return None
    raise ConfigError("scheduler", "does not run on engine=continuous", getattr(scheduler, "name", None),
                      allowed="vllm, static_fifo, dynamic_no_bins, multi_bin_static, multi_bin_dynamic, sjf, "
                              "priority, lpm")


def check_policy(engine: Any, scheduler: Any) -> None:
    """One-line refusals of combinations that mean nothing (at config time)."""
    max_seqs_cap(scheduler)
    if not isinstance(scheduler, VllmScheduler) and engine.policy != "fcfs":
        raise ConfigError("engine.policy", f"applies to scheduler=vllm only; scheduler={scheduler.name} sets "
                          "its own WAITING order", engine.policy)
    if isinstance(scheduler, Scheduler) and not isinstance(scheduler.batcher, (FixedBatcher, DynamicBatcher)):
        raise ConfigError("scheduler.batcher", "must be FixedBatcher or DynamicBatcher on engine=continuous",
                          type(scheduler.batcher).__name__)


def policy_setup(engine: Any, scheduler: Any, predictor: Any, requests: RequestTable,
                 rng: np.random.Generator, kv_tokens: int) -> PolicySetup:
    """Map ``scheduler`` (and the predictor) to the engine's policy for these requests.
    ``kv_tokens``: one replica's usable KV capacity (Algorithm 1's η)."""
    check_policy(engine, scheduler)
    n = len(requests)
    prio = requests.priority if requests.priority is not None else np.zeros(n, dtype=np.int64)
    if isinstance(scheduler, VllmScheduler):
        code = POLICY_FCFS if engine.policy == "fcfs" else POLICY_PRIORITY
        return PolicySetup("vllm_" + engine.policy, code, prio)
    if isinstance(scheduler, QueuePolicy):
        if scheduler.order == "priority":
            return PolicySetup("priority", POLICY_PRIORITY, prio)
        if scheduler.order == "lpm":
            return PolicySetup("lpm", POLICY_LPM, prio)
        pred = np.asarray(predictor.predict(requests.output, rng), dtype=np.int64)
        waited_from = requests.arrival - (requests.arrival[0] if n else 0.0)
        key = np.rint((pred + scheduler.aging_tokens_per_s * waited_from) * AGING_KEY_SCALE).astype(np.int64)
        return PolicySetup("sjf", POLICY_PRIORITY, key, predicted=pred)
    batcher = scheduler.batcher
    ctl = batcher.params(kv_tokens) if isinstance(batcher, DynamicBatcher) else None
    ignored = "full_batches_only" if getattr(batcher, "full_batches_only", False) else ""
    k = int(scheduler.k_bins)
    pred = np.asarray(predictor.predict(requests.output, rng), dtype=np.int64)
    if k == 1:
        return PolicySetup(scheduler.name, POLICY_FCFS, prio, predicted=pred, controller=ctl, ignored=ignored)
    bins = scheduler.assign_bins(pred, scheduler.cut_points(pred))
    bins = np.asarray(predictor.perturb_bins(bins, k, rng), dtype=np.int64)
    return PolicySetup(scheduler.name, POLICY_BINS, prio, predicted=pred, bins=bins, k_bins=k,
                       bin_rule=scheduler.selection_rule, controller=ctl, ignored=ignored)
