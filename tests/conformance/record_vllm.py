"""Record golden step traces from vLLM v1's real scheduler (vLLM 0.33.0) on the CPU.

Never imported by the simulator or by the tests: it imports vllm, which is not installed in
CI. It drives `Scheduler` / `AsyncScheduler` exactly as `EngineCore.step` /
`EngineCore.step_with_batch_queue` do, with a mock model output (one sampled token for every
request whose scheduled tokens reach its last known token), and writes one gzip JSON file per
scenario and scheduler to tests/data/vllm/ (format: tests/data/vllm/README.md; semantics:
docs/vllm_v1_scheduler.md).

Minimal install (no GPU, no weights; 2.2 GB and 3 min 43 s here, tests/data/vllm/README.md):

    python3 -m venv /path/to/vllm-venv && . /path/to/vllm-venv/bin/activate
    pip install --upgrade pip
    pip install torch==2.13.0                        # the CPU wheel; anything looser pulls CUDA
    pip install --no-deps vllm==0.33.0 xgrammar==0.2.8   # xgrammar's own deps pull 1 GB of triton
    pip install -r tests/conformance/requirements-vllm.txt

Regenerate every golden (from the repository root, in that venv):

    python tests/conformance/record_vllm.py --out tests/data/vllm
    python tests/conformance/record_vllm.py --out tests/data/vllm --only preemption_storm
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The Model Runner V2 is what a GPU install runs by default (VllmConfig.use_v2_model_runner:
# Triton present, no unsupported feature); pin it so the recording does not depend on whether
# this CPU venv happens to hold triton. The scheduler's decisions do not depend on it at
# pipeline-parallel size 1 without speculative decoding (checked: VLLM_USE_V2_MODEL_RUNNER=0
# records identical steps for every scenario).
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

VLLM_VERSION = "0.33.0"
RECORDER = "python tests/conformance/record_vllm.py --out tests/data/vllm [--only NAME]"
FORMAT = 1

# Token ids. The scheduler only hashes them (prefix caching); they never reach a model.
# Prompt blocks with a hash id h hold tokens h*block_size + j (equal ids, equal tokens; distinct
# ids, distinct tokens). Requests without hash ids get private tokens; sampled tokens are private
# to their request, so only prompt blocks can be shared between requests.
PRIVATE_PROMPT_BASE = 500_000_000
SAMPLED_BASE = 1_000_000_000
PER_REQUEST_SPAN = 50_000


@dataclass(frozen=True)
class RequestSpec:
    """One request of a scenario: arrives before schedule() of `arrival_step`."""

    id: str
    arrival_step: int
    prompt_len: int
    output_len: int
    priority: int = 0
    hash_ids: list[int] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requests: list[RequestSpec]
    block_size: int = 16
    num_gpu_blocks: int = 1000
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 16
    max_model_len: int = 2048
    long_prefill_token_threshold: int = 0
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    scheduler_reserve_full_isl: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def _reqs(rows: list[tuple], **kw: Any) -> list[RequestSpec]:
    """Rows of (arrival_step, prompt_len, output_len[, priority[, hash_ids]]) -> specs r0, r1..."""
    out = []
    for i, row in enumerate(rows):
        step, p, o = row[:3]
        prio = row[3] if len(row) > 3 else 0
        hids = row[4] if len(row) > 4 else None
        out.append(RequestSpec(f"r{i}", step, p, o, prio, hids, **kw))
    return out


def _hash_ids(prefix: list[int], prompt_len: int, block_size: int, fresh: int) -> list[int]:
    """Mooncake-style ids: the shared `prefix` ids, then fresh private ids, one per block."""
    n = -(-prompt_len // block_size)
    ids = list(prefix[:n])
    while len(ids) < n:
        ids.append(fresh)
        fresh += 1
    return ids


def scenarios() -> list[Scenario]:
    bs = 16
    out: list[Scenario] = []

    out.append(Scenario(
        "basic", "Four short requests at step 0 in an ample pool: prefill then decode",
        _reqs([(0, 40, 8), (0, 17, 5), (0, 64, 12), (0, 1, 3)]),
    ))

    out.append(Scenario(
        "chunked_prefill",
        "Long prompts chunked over several steps by a 256-token budget, beside decodes",
        _reqs([(0, 30, 40), (0, 1000, 6), (1, 700, 5), (2, 2000, 4), (3, 20, 30)]),
        max_num_batched_tokens=256, num_gpu_blocks=400, max_model_len=4096,
    ))

    out.append(Scenario(
        "max_num_seqs",
        "max_num_seqs=4 binds: twelve requests at step 0, admitted as running ones finish",
        _reqs([(0, 20 + 7 * i, 5 + (i * 3) % 11) for i in range(12)]),
        max_num_seqs=4, max_num_batched_tokens=512,
    ))

    out.append(Scenario(
        "arrivals",
        "Arrivals between steps, including after the engine went idle",
        _reqs([(0, 50, 10), (2, 30, 6), (3, 200, 4), (3, 10, 12), (7, 90, 3),
               (8, 16, 16), (15, 33, 2), (40, 64, 5), (41, 65, 1), (41, 5, 2)]),
        max_num_batched_tokens=128,
    ))

    # Short prompts, long outputs, four arrivals a step: the gate admits what fits now, then
    # the decodes outgrow the 23 usable blocks together and the tail is preempted, again and again.
    storm = [(i // 4, 8 + 3 * (i % 5), 120 + 7 * (i % 3)) for i in range(16)]
    out.append(Scenario(
        "preemption_storm",
        "Tiny pool (24 blocks): decodes outgrow the pool, recompute preemption from the tail",
        _reqs(storm), num_gpu_blocks=24, max_model_len=256, max_num_batched_tokens=256,
    ))
    out.append(Scenario(
        "preemption_storm_no_cache",
        "As preemption_storm with prefix caching off (no self re-hits after preemption)",
        _reqs(storm), num_gpu_blocks=24, max_model_len=256, max_num_batched_tokens=256,
        enable_prefix_caching=False,
    ))

    gate = [(0, 300, 20), (0, 300, 20), (0, 300, 20), (1, 40, 10), (2, 300, 8), (3, 30, 30)]
    out.append(Scenario(
        "admission_gate_on",
        "scheduler_reserve_full_isl=True: a prompt is admitted only if all of it fits now",
        _reqs(gate), num_gpu_blocks=48, max_num_batched_tokens=64, max_model_len=512,
        enable_prefix_caching=False,
    ))
    out.append(Scenario(
        "admission_gate_off",
        "scheduler_reserve_full_isl=False: only the first chunk must fit, so it over-admits",
        _reqs(gate), num_gpu_blocks=48, max_num_batched_tokens=64, max_model_len=512,
        enable_prefix_caching=False, scheduler_reserve_full_isl=False,
    ))

    out.append(Scenario(
        "hol_blocking",
        "A large request at the head of the waiting queue blocks smaller ones behind it",
        _reqs([(0, 200, 60), (0, 200, 60), (1, 400, 5), (1, 20, 5), (1, 20, 5), (2, 20, 5)]),
        num_gpu_blocks=40, max_num_batched_tokens=512, max_model_len=600,
        enable_prefix_caching=False,
    ))

    out.append(Scenario(
        "long_prefill_threshold",
        "long_prefill_token_threshold=64 caps each prompt chunk; off while one request is alone",
        _reqs([(0, 500, 5), (6, 300, 4), (6, 100, 3), (7, 40, 20), (30, 260, 2)]),
        long_prefill_token_threshold=64, max_num_batched_tokens=512,
    ))

    out.append(Scenario(
        "max_model_len",
        "max_model_len=128: outputs capped at the context limit (FINISHED_LENGTH_CAPPED)",
        _reqs([(0, 100, 50), (0, 127, 5), (0, 64, 64), (1, 20, 200), (2, 120, 1)]),
        max_model_len=128, max_num_batched_tokens=128, num_gpu_blocks=40,
    ))

    prio = _reqs([(0, 60, 40, 5), (0, 60, 40, 5), (0, 60, 40, 3), (2, 60, 30, 1),
                  (2, 60, 30, 5), (4, 40, 20, 0), (6, 80, 10, 3), (9, 20, 20, 1)])
    out.append(Scenario(
        "priority",
        "policy=priority: admission by (priority, arrival), preemption of the lowest priority",
        prio, policy="priority", num_gpu_blocks=30, max_num_batched_tokens=128,
        max_model_len=256, enable_prefix_caching=False,
    ))
    out.append(Scenario(
        "priority_prefix_cache",
        "As priority with prefix caching on: freed blocks are cached and evicted (no hit here)",
        prio, policy="priority", num_gpu_blocks=30, max_num_batched_tokens=128,
        max_model_len=256,
    ))

    # Shared prefixes: three system prompts (A, B, C), each 4-8 blocks, followed by private
    # suffixes; a pool just big enough that freed cached blocks get evicted (LRU) over time.
    sys_a = list(range(1, 9))
    sys_b = list(range(101, 107))
    sys_c = list(range(201, 205))
    rows, fresh = [], 10_000
    plan = [(0, sys_a, 150, 10), (0, sys_a, 140, 8), (1, sys_b, 120, 6), (3, sys_a, 160, 4),
            (6, sys_c, 70, 12), (8, sys_b, 96, 5), (12, sys_a, 128, 3), (20, sys_c, 64, 6),
            (25, sys_b, 110, 4), (30, sys_a, 200, 5), (31, sys_a, 129, 2), (45, sys_c, 100, 3),
            (50, sys_b, 97, 7), (60, sys_a, 150, 1)]
    for step, prefix, plen, olen in plan:
        ids = _hash_ids(prefix, plen, bs, fresh)
        fresh += len(ids)
        rows.append((step, plen, olen, 0, ids))
    shared = _reqs(rows)
    out.append(Scenario(
        "prefix_cache",
        "Shared prefixes (Mooncake hash_ids): hits, same-step hits, the last block recomputed",
        shared, num_gpu_blocks=40, max_num_batched_tokens=256, max_model_len=512,
    ))
    out.append(Scenario(
        "prefix_cache_off",
        "The prefix_cache workload with prefix caching off",
        shared, num_gpu_blocks=40, max_num_batched_tokens=256, max_model_len=512,
        enable_prefix_caching=False,
    ))

    # Eviction order: r0 caches a 10-block prefix A and leaves; r1 and r2 (private prompts)
    # then need more than the never-used blocks, so the free queue hands out r0's cached blocks
    # from the front: r0 freed its chain tail first, so A loses its last blocks and r3 hits
    # only the first ones. r3 recomputes and re-caches the rest, so r4 hits all ten.
    a = list(range(1, 11))
    out.append(Scenario(
        "prefix_cache_eviction",
        "LRU eviction of freed cached blocks, tail of a chain first: a partial hit, then a full one",
        _reqs([(0, 176, 4, 0, _hash_ids(a, 176, bs, 1000)), (8, 320, 2), (15, 130, 2),
               (25, 176, 3, 0, _hash_ids(a, 176, bs, 2000)),
               (26, 170, 2, 0, _hash_ids(a, 170, bs, 3000))]),
        num_gpu_blocks=34, max_num_batched_tokens=512, max_model_len=512,
    ))

    out.append(_mixed_long())
    out.append(_mixed_long_priority())
    return out


def _mixed_rows(seed: int, n: int, prefixes: list[list[int]], rate: float,
                prompt: tuple[int, int], output: tuple[int, int], priorities: int = 1
                ) -> list[tuple]:
    """Random arrivals (geometric gaps, mean 1/rate steps) and log-uniform lengths."""
    rng = random.Random(seed)
    rows, step, fresh = [], 0, 100_000
    for _ in range(n):
        step += int(rng.expovariate(rate))
        plen = int(round(prompt[0] * (prompt[1] / prompt[0]) ** rng.random()))
        olen = int(round(output[0] * (output[1] / output[0]) ** rng.random()))
        prio = rng.randrange(priorities)
        ids = None
        if prefixes and rng.random() < 0.6:
            ids = _hash_ids(rng.choice(prefixes), plen, 16, fresh)
            fresh += len(ids)
        rows.append((step, plen, olen, prio, ids))
    return rows


def _mixed_long() -> Scenario:
    prefixes = [list(range(1 + 100 * k, 1 + 100 * k + 3 + 2 * k)) for k in range(4)]
    rows = _mixed_rows(seed=11, n=400, prefixes=prefixes, rate=0.35,
                       prompt=(8, 900), output=(1, 120))
    return Scenario(
        "mixed_long",
        "1,000+ steps of random load (seed 11): arrivals, chunking, preemption, shared prefixes",
        _reqs(rows), num_gpu_blocks=160, max_num_batched_tokens=384, max_num_seqs=24,
        max_model_len=1024, long_prefill_token_threshold=256,
    )


def _mixed_long_priority() -> Scenario:
    rows = _mixed_rows(seed=23, n=300, prefixes=[], rate=0.3, prompt=(8, 600),
                       output=(1, 100), priorities=4)
    return Scenario(
        "mixed_long_priority",
        "1,000+ steps of random load (seed 23) under policy=priority with four priority levels",
        _reqs(rows), num_gpu_blocks=80, max_num_batched_tokens=256, max_num_seqs=16,
        max_model_len=1024, policy="priority",
    )


# --------------------------------------------------------------------------------------------
# Building vLLM's scheduler
# --------------------------------------------------------------------------------------------

TINY_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 1024, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "torch_dtype": "float16",
    "tie_word_embeddings": True,
}


def build_scheduler(sc: Scenario, async_scheduling: bool, model_dir: str):
    """The scheduler EngineCore.__init__ would build for this config, with no executor."""
    import torch
    from vllm.config import (CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig,
                             VllmConfig)
    from vllm.v1.core.kv_cache_utils import resolve_kv_cache_block_sizes
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    limit = -(-sc.max_model_len // sc.block_size)
    if limit > sc.num_gpu_blocks - 1:
        raise ValueError(f"{sc.name}: the pool cannot hold one max_model_len sequence")
    model_config = ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="float16",
                               max_model_len=sc.max_model_len, seed=0)
    scheduler_config = SchedulerConfig(
        max_model_len=sc.max_model_len, is_encoder_decoder=False,
        max_num_batched_tokens=sc.max_num_batched_tokens, max_num_seqs=sc.max_num_seqs,
        long_prefill_token_threshold=sc.long_prefill_token_threshold, policy=sc.policy,
        scheduler_reserve_full_isl=sc.scheduler_reserve_full_isl,
        async_scheduling=async_scheduling, enable_chunked_prefill=True,
    )
    cache_config = CacheConfig(block_size=sc.block_size,
                               enable_prefix_caching=sc.enable_prefix_caching)
    vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                             cache_config=cache_config, device_config=DeviceConfig(device="cuda"))
    assert vllm_config.scheduler_config.async_scheduling is async_scheduling
    kv_cache_config = KVCacheConfig(
        num_blocks=sc.num_gpu_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=sc.block_size, num_kv_heads=1, head_size=1, dtype=torch.float16))],
    )
    vllm_config.cache_config.num_gpu_blocks = sc.num_gpu_blocks
    scheduler_block_size, hash_block_size = resolve_kv_cache_block_sizes(
        kv_cache_config, vllm_config)
    cls = vllm_config.scheduler_config.get_scheduler_cls()
    sched = cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                structured_output_manager=StructuredOutputManager(vllm_config),
                block_size=scheduler_block_size, hash_block_size=hash_block_size,
                log_stats=False)
    return sched, vllm_config


def make_block_hasher(vllm_config):
    """EngineCore.__init__'s request block hasher (None with prefix caching off)."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

    if not vllm_config.cache_config.enable_prefix_caching:
        return None
    fn = get_hash_fn_by_name(vllm_config.cache_config.prefix_caching_hash_algo)
    init_none_hash(fn)
    return get_request_block_hasher(vllm_config.cache_config.block_size, fn,
                                    vllm_config.num_hash_lookahead_tokens)


def prompt_tokens(spec: RequestSpec, index: int, block_size: int) -> list[int]:
    if spec.hash_ids is None:
        if spec.prompt_len >= PER_REQUEST_SPAN:
            raise ValueError(f"{spec.id}: prompt too long for private token ids")
        base = PRIVATE_PROMPT_BASE + index * PER_REQUEST_SPAN
        return [base + j for j in range(spec.prompt_len)]
    if len(spec.hash_ids) != -(-spec.prompt_len // block_size):
        raise ValueError(f"{spec.id}: need one hash id per block of {block_size} tokens")
    return [spec.hash_ids[j // block_size] * block_size + j % block_size
            for j in range(spec.prompt_len)]


def make_request(spec: RequestSpec, index: int, block_size: int, hasher):
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=spec.output_len, ignore_eos=True)
    return Request(request_id=spec.id, prompt_token_ids=prompt_tokens(spec, index, block_size),
                   sampling_params=params, pooling_params=None, arrival_time=float(index),
                   priority=spec.priority, block_hasher=hasher)


# --------------------------------------------------------------------------------------------
# Driving it
# --------------------------------------------------------------------------------------------


class Recorder:
    """Runs one scenario through the scheduler the way EngineCore's loop does."""

    def __init__(self, sc: Scenario, async_scheduling: bool, model_dir: str):
        self.sc = sc
        self.async_scheduling = async_scheduling
        self.sched, self.vllm_config = build_scheduler(sc, async_scheduling, model_dir)
        self.hasher = make_block_hasher(self.vllm_config)
        self.index = {spec.id: i for i, spec in enumerate(sc.requests)}
        self.reqs: dict[str, Any] = {}
        self.samples: dict[str, int] = {}
        self.preempted: list[str] = []
        self.finish_step: dict[str, int] = {}
        self.finish_reason: dict[str, str] = {}
        # Observe the preemption order (SchedulerOutput.preempted_req_ids is a set).
        original = self.sched._preempt_request

        def preempt(request, *args, **kwargs):
            self.preempted.append(request.request_id)
            return original(request, *args, **kwargs)

        self.sched._preempt_request = preempt
        # Observe evictions of cached blocks (a hashed free block handed out again).
        pool = self.sched.kv_cache_manager.block_pool
        self.evicted = 0
        evict = pool._maybe_evict_cached_block

        def maybe_evict(block):
            hit = evict(block)
            self.evicted += bool(hit)
            return hit

        pool._maybe_evict_cached_block = maybe_evict
        # EngineCore's batch queue: max_concurrent_batches (2 with async scheduling).
        self.queue_size = self.vllm_config.max_concurrent_batches
        self.queue: deque = deque()

    def free_blocks(self) -> int:
        return self.sched.kv_cache_manager.block_pool.get_num_free_blocks()

    def mock_output(self, so):
        """What the model runner returns for this batch: one token per request whose
        scheduled tokens reach its last known token, nothing for a partial prefill chunk."""
        from vllm.v1.outputs import ModelRunnerOutput

        req_ids = list(so.num_scheduled_tokens)
        sampled = []
        for rid in req_ids:
            req = self.reqs[rid]
            if req.is_prefill_chunk:
                sampled.append([])
                continue
            k = self.samples.get(rid, 0)
            self.samples[rid] = k + 1
            if k >= PER_REQUEST_SPAN:
                raise ValueError(f"{rid}: too many samples for private token ids")
            sampled.append([SAMPLED_BASE + self.index[rid] * PER_REQUEST_SPAN + k])
        return ModelRunnerOutput(req_ids=req_ids,
                                 req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=sampled)

    def schedule(self, step: int) -> dict[str, Any]:
        before = {r.request_id for r in self.sched.running}
        self.preempted = []
        so = self.sched.schedule()
        scheduled = [[rid, n] for rid, n in so.num_scheduled_tokens.items()]
        hits = {}
        for rid, n in so.num_scheduled_tokens.items():
            if rid not in before:
                hit = self.reqs[rid].num_computed_tokens - n
                if hit > 0:
                    hits[rid] = hit
        rec = {"scheduled": scheduled, "preempted": list(self.preempted),
               "prefix_hit_tokens": hits, "free_blocks_after_schedule": self.free_blocks(),
               "num_scheduled_tokens": so.total_num_scheduled_tokens}
        assert set(self.preempted) == set(so.preempted_req_ids)
        return so, rec

    def update(self, so, output, step: int) -> list[str]:
        outs = self.sched.update_from_output(so, output)
        finished = []
        for eco in outs.values():
            for o in eco.outputs:
                if o.finish_reason is not None:
                    finished.append(o.request_id)
                    self.finish_step[o.request_id] = step
                    self.finish_reason[o.request_id] = str(o.finish_reason)
        return finished

    def iteration(self, step: int) -> dict[str, Any]:
        """One pass of EngineCore.run_busy_loop: add arrivals, then step / step_with_batch_queue."""
        for spec in self.sc.requests:
            if spec.arrival_step == step:
                req = make_request(spec, self.index[spec.id], self.sc.block_size, self.hasher)
                self.reqs[spec.id] = req
                self.sched.add_request(req)
        rec: dict[str, Any] = {"step": step, "schedule_called": False, "scheduled": [],
                               "num_scheduled_tokens": 0, "preempted": [],
                               "prefix_hit_tokens": {}, "free_blocks_after_schedule": None,
                               "update_of": None, "finished": []}
        if self.queue_size == 1:  # EngineCore.step
            if self.sched.has_requests():
                so, srec = self.schedule(step)
                rec.update(srec)
                rec["schedule_called"] = True
                rec["finished"] = self.update(so, self.mock_output(so), step)
                rec["update_of"] = step
        else:  # EngineCore.step_with_batch_queue
            do_update = True
            if self.sched.has_requests():
                so, srec = self.schedule(step)
                rec.update(srec)
                rec["schedule_called"] = True
                executed = so.total_num_scheduled_tokens > 0
                self.queue.appendleft((self.mock_output(so), so, step))
                if len(self.queue) < self.queue_size and (executed or self.sched.has_requests()):
                    do_update = False
            elif not self.queue:
                do_update = False
            if do_update:
                output, so, s = self.queue.pop()
                rec["finished"] = self.update(so, output, step)
                rec["update_of"] = s
        rec["free_blocks"] = self.free_blocks()
        rec["evicted_blocks"] = self.evicted
        self.evicted = 0
        running, waiting = self.sched.get_request_counts()
        rec["num_running"] = running
        rec["num_waiting"] = waiting
        return rec

    def busy(self) -> bool:
        """EngineCore.has_work: requests in the scheduler or batches in flight."""
        return self.sched.has_requests() or bool(self.queue)

    def run(self, max_steps: int = 200_000) -> list[dict[str, Any]]:
        last_arrival = max(s.arrival_step for s in self.sc.requests)
        steps, step = [], 0
        while step <= last_arrival or self.busy():
            if step >= max_steps:
                raise RuntimeError(f"{self.sc.name}: no end after {max_steps} steps")
            steps.append(self.iteration(step))
            step += 1
        return steps


def config_record(sc: Scenario, sched, vllm_config) -> dict[str, Any]:
    """Every setting that influences scheduling, read back from the built configs."""
    s = vllm_config.scheduler_config
    c = vllm_config.cache_config
    return {
        "block_size": c.block_size,
        "num_gpu_blocks": c.num_gpu_blocks,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "max_num_scheduled_tokens": sched.max_num_scheduled_tokens,
        "max_num_seqs": s.max_num_seqs,
        "max_num_active_seqs": sched.max_num_active_reqs,
        "max_model_len": vllm_config.model_config.max_model_len,
        "long_prefill_token_threshold": s.long_prefill_token_threshold,
        "long_prefill_token_threshold_adaptive": s.long_prefill_token_threshold_adaptive,
        "enable_chunked_prefill": s.enable_chunked_prefill,
        "enable_prefix_caching": c.enable_prefix_caching,
        "hash_block_size": sched.hash_block_size,
        "policy": s.policy,
        "scheduler_reserve_full_isl": s.scheduler_reserve_full_isl,
        "watermark": s.watermark,
        "prefill_schedule_interval": s.prefill_schedule_interval,
        "async_scheduling": bool(s.async_scheduling),
        "max_concurrent_batches": vllm_config.max_concurrent_batches,
        "scheduler_class": type(sched).__name__,
        "use_v2_model_runner": vllm_config.use_v2_model_runner,
        "num_lookahead_tokens": vllm_config.num_lookahead_tokens,
        "num_speculative_tokens": vllm_config.num_speculative_tokens,
        "pipeline_parallel_size": vllm_config.parallel_config.pipeline_parallel_size,
    }


def record(sc: Scenario, async_scheduling: bool, model_dir: str) -> dict[str, Any]:
    rec = Recorder(sc, async_scheduling, model_dir)
    steps = rec.run()
    results = {}
    for spec in sc.requests:
        req = rec.reqs[spec.id]
        results[spec.id] = {
            "finish_step": rec.finish_step[spec.id],
            "finish_reason": rec.finish_reason[spec.id],
            "num_output_tokens": req.num_output_tokens,
            "num_preemptions": req.num_preemptions,
        }
    return {
        "format": FORMAT,
        "vllm_version": VLLM_VERSION,
        "recorder": RECORDER,
        "scenario": sc.name,
        "description": sc.description,
        "async_scheduling": async_scheduling,
        "config": config_record(sc, rec.sched, rec.vllm_config),
        "requests": [
            {"id": s.id, "arrival_step": s.arrival_step, "arrival_time": float(i),
             "prompt_len": s.prompt_len, "output_len": s.output_len, "priority": s.priority,
             "hash_ids": s.hash_ids}
            for i, s in enumerate(sc.requests)
        ],
        "steps": steps,
        "results": results,
    }


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    kind = "async" if doc["async_scheduling"] else "sync"
    path = out_dir / f"{doc['scenario']}__{kind}.json.gz"
    text = json.dumps(doc, separators=(",", ":"), sort_keys=False)
    # mtime=0: the same recording gives the same bytes.
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(text.encode())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/data/vllm"))
    ap.add_argument("--only", action="append", help="scenario name (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)
    scs = scenarios()
    if args.list:
        for sc in scs:
            print(f"{sc.name:28s} {sc.description}")
        return 0
    names = {sc.name for sc in scs}
    for name in args.only or []:
        if name not in names:
            print(f"error: unknown scenario {name!r}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as model_dir:
        with open(os.path.join(model_dir, "config.json"), "w") as fh:
            json.dump(TINY_QWEN2, fh)
        for sc in scs:
            if args.only and sc.name not in args.only:
                continue
            for async_scheduling in (False, True):
                doc = record(sc, async_scheduling, model_dir)
                path = write(doc, args.out)
                print(f"{path}  steps={len(doc['steps'])}  bytes={path.stat().st_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
