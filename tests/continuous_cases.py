"""Shared helpers for the continuous-engine tests: random workloads and engine settings that
exercise every branch (tiny pools that force preemption, chunking, thresholds, priorities,
shared prefixes), and a per-request comparison of two results."""
from __future__ import annotations

import numpy as np

from simsched.engines.continuous import ContinuousEngine, Hardware
from simsched.latency import StepTime
from simsched.workloads import RequestTable

STEP = StepTime(c0_s=0.01, c_pf_s=5e-5, c_dec_s=2e-4, c_ctx_s=1e-7, c_attn_s=1e-9, cpu_s=0.004)
PER_REQUEST_INTS = ("status", "reason", "replica", "output_emitted", "preemptions", "prefix_hit_tokens")
PER_REQUEST_TIMES = ("first_scheduled", "first_token", "finish", "itl_max")


def random_case(seed: int, n_max: int = 250) -> tuple[RequestTable, ContinuousEngine, Hardware]:
    """A random workload and engine configuration; about half the cases preempt heavily."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, n_max))
    block = int(rng.choice([4, 16]))
    blocks = int(rng.choice([70, 120, 400, 4000]))
    mml = min(2048, (blocks - 1) * block)
    prompt = rng.integers(1, min(600, mml - 1), n)
    shared = rng.random() < 0.5
    hash_off = hash_val = None
    if shared:   # a few shared prefixes (Mooncake-style ids, one per block of prompt tokens)
        ids = []
        for p in prompt:
            k = -(-int(p) // block)
            root = int(rng.integers(0, 4))
            common = int(rng.integers(0, k + 1))
            ids.append([root * 1000 + j for j in range(common)] + [int(x) for x in rng.integers(10**6, 10**9, k - common)])
        hash_off = np.concatenate(([0], np.cumsum([len(x) for x in ids])))
        hash_val = np.array([h for x in ids for h in x], dtype=np.int64)
    req = RequestTable(np.sort(rng.uniform(0, float(rng.uniform(1, 40)), n)), prompt, rng.integers(1, 300, n),
                       priority=rng.integers(0, 3, n), hash_offsets=hash_off, hash_values=hash_val,
                       hash_block_tokens=block if shared else None)
    seqs = int(rng.choice([8, 32, 64]))
    engine = ContinuousEngine(
        async_scheduling=bool(rng.integers(2)), policy=("fcfs", "priority")[int(rng.integers(2))],
        num_gpu_blocks=blocks, block_size=block, max_model_len=mml,
        max_num_batched_tokens=int(rng.choice([max(64, seqs), 512, 2048])), max_num_seqs=seqs,
        long_prefill_token_threshold=int(rng.choice([0, 0, 48])), enable_prefix_caching=bool(rng.random() < 0.75),
        full_sequence_gate=bool(rng.integers(2)))
    return req, engine, Hardware(int(rng.integers(1, 4)), blocks * block, "test", None)


def differences(a, b, atol: float = 1e-9) -> list[str]:
    """Per-request fields that differ between two results (times within ``atol`` seconds)."""
    bad = [f for f in PER_REQUEST_INTS if not np.array_equal(getattr(a, f), getattr(b, f))]
    for f in PER_REQUEST_TIMES:
        x, y = getattr(a, f), getattr(b, f)
        if not np.allclose(x, y, atol=atol, rtol=0, equal_nan=True):
            bad.append(f"{f} (max diff {np.nanmax(np.abs(x - y)):.3g} s)")
    return bad
