"""The continuous engine's settings (``engine=continuous``): vLLM 0.33.0's scheduler options.

Every field mirrors a vLLM engine argument; ``null`` means "what ``vllm serve`` picks". The
defaults of ``max_num_batched_tokens`` and ``max_num_seqs`` follow
``EngineArgs.get_batch_defaults`` for the OpenAI API server (``vllm serve``) on the configured
GPU class (``gpus.memory_gib`` and ``gpus.name``):

    memory >= 160 GiB (B200, B300)                 16384 tokens, 1024 sequences
    memory >= 70 GiB and not an A100 (H100, H200)   8192 tokens, 1024 sequences
    otherwise (A100, L40S, unknown)                 2048 tokens,  256 sequences

``async_scheduling`` defaults to true: ``VllmConfig.__post_init__`` enables it when the user
leaves it unset and nothing is incompatible, as on a plain ``vllm serve``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from simsched.errors import ConfigError, check_choice, check_positive

POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class ContinuousEngine:
    """vLLM v1 iteration-level batching on each of ``gpus.count`` replicas (one GPU each).

    ``num_gpu_blocks``: KV blocks per replica, ``gpus.kv_capacity_tokens // block_size`` when
    null (one of them is vLLM's reserved null block). ``full_sequence_gate`` is vLLM's
    ``scheduler_reserve_full_isl`` (admission needs the whole current sequence to fit).
    ``step_cpu_s`` overrides the latency model's per-step CPU time (``cpu_s``): it is added to
    every step under synchronous scheduling and hidden under the GPU step under asynchronous
    scheduling (a step then lasts ``max(cpu, gpu)``). ``fast_forward`` jumps over runs of
    identical decode steps in closed form (exact). ``steps_table`` writes ``steps.parquet``
    (one row per step; for small runs). ``timeseries_interval_s`` is the sampling period of
    ``timeseries.parquet``. ``horizon_s`` stops the clock (null: serve every request).
    """

    name: str = "continuous"
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    block_size: int = 16
    num_gpu_blocks: int | None = None
    max_model_len: int = 32768
    long_prefill_token_threshold: int = 0
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    async_scheduling: bool = True
    full_sequence_gate: bool = True
    watermark: float = 0.0
    step_cpu_s: float | None = None
    fast_forward: bool = True
    steps_table: bool = False
    timeseries_interval_s: float = 1.0
    hash_block_tokens: int | None = None
    horizon_s: float | None = None

    def __post_init__(self) -> None:
        for key in ("max_num_batched_tokens", "max_num_seqs", "num_gpu_blocks"):
            if getattr(self, key) is not None:
                check_positive(key, getattr(self, key), integer=True)
        check_positive("block_size", self.block_size, integer=True)
        check_positive("max_model_len", self.max_model_len, integer=True)
        check_positive("long_prefill_token_threshold", self.long_prefill_token_threshold,
                       integer=True, allow_zero=True)
        if self.long_prefill_token_threshold > self.max_model_len:
            raise ConfigError("long_prefill_token_threshold", f"cannot be greater than max_model_len "
                              f"({self.max_model_len})", self.long_prefill_token_threshold)
        check_choice("policy", self.policy, POLICIES)
        check_positive("watermark", self.watermark, allow_zero=True)
        if self.watermark >= 1:
            raise ConfigError("watermark", "must be in [0, 1)", self.watermark)
        if self.step_cpu_s is not None:
            check_positive("step_cpu_s", self.step_cpu_s, allow_zero=True)
        check_positive("timeseries_interval_s", self.timeseries_interval_s)
        if self.hash_block_tokens is not None:
            check_positive("hash_block_tokens", self.hash_block_tokens, integer=True)
        if self.horizon_s is not None:
            check_positive("horizon_s", self.horizon_s)
        for key in ("enable_prefix_caching", "async_scheduling", "full_sequence_gate",
                    "fast_forward", "steps_table"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, "must be true or false", getattr(self, key))

    def resolved(self, gpu_name: str, memory_gib: float | None, kv_capacity_tokens: int,
                 max_num_seqs_cap: int | None = None) -> "Resolved":
        """The settings with every null filled in for this GPU class (see the module docstring).
        ``max_num_seqs_cap`` is a scheduler's own sequence limit (``scheduler=static_fifo``)."""
        tokens, seqs = batch_defaults(gpu_name, memory_gib)
        max_batched = self.max_num_batched_tokens or tokens
        max_seqs = self.max_num_seqs or (max_num_seqs_cap or seqs)
        if max_batched < max_seqs:
            raise ConfigError("engine.max_num_batched_tokens", f"must be >= max_num_seqs ({max_seqs}) "
                              "(vLLM SchedulerConfig)", max_batched)
        blocks = int(self.num_gpu_blocks or kv_capacity_tokens // self.block_size)
        need = -(-self.max_model_len // self.block_size)
        if blocks - 1 < need:   # vLLM refuses to start when the KV cache cannot hold one max_model_len sequence
            key = "engine.num_gpu_blocks" if self.num_gpu_blocks else "gpus.kv_capacity_tokens"
            raise ConfigError(key, f"the KV cache ({blocks - 1} usable blocks of {self.block_size} tokens) cannot "
                              f"hold one engine.max_model_len={self.max_model_len} sequence ({need} blocks), so "
                              "vLLM would not start; lower engine.max_model_len", blocks)
        return Resolved(max_batched, max_seqs, blocks)


@dataclass(frozen=True)
class Resolved:
    """The GPU-dependent settings after defaults."""

    max_num_batched_tokens: int
    max_num_seqs: int
    num_gpu_blocks: int


def batch_defaults(gpu_name: str, memory_gib: float | None) -> tuple[int, int]:
    """``EngineArgs.get_batch_defaults`` for ``UsageContext.OPENAI_API_SERVER`` (vLLM 0.33.0)."""
    mem = 0.0 if memory_gib is None or not math.isfinite(memory_gib) else float(memory_gib)
    if mem >= 160:
        return 16384, 1024
    if mem >= 70 and "a100" not in gpu_name.lower():
        return 8192, 1024
    return 2048, 256
