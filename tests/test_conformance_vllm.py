"""The continuous engine against vLLM 0.33.0's real scheduler, step by step.

Every golden trace in tests/data/vllm (recorded by tests/conformance/record_vllm.py from
vLLM's Scheduler and AsyncScheduler) is replayed in step-conformance mode (time = engine
iteration), with fast-forward on and off: each step's scheduled (request, tokens) pairs in
vLLM's order, preemptions, prefix hits, finishes, free blocks (after schedule() and at the
end of the iteration) and running/waiting counts must be identical, and so must every
request's output tokens and preemption count. Hand-checked cases from the vLLM source run
even where the goldens are absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.engines.continuous import state as st
from simsched.engines.continuous.conformance import UNIT_STEP, check_results, compare, run_golden
from simsched.workloads import RequestTable

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "vllm"
GOLDENS = sorted(GOLDEN_DIR.glob("*.json.gz"))


def load(path: Path) -> dict:
    import gzip
    import json

    with gzip.open(path, "rt") as fh:
        return json.load(fh)


@pytest.mark.skipif(not GOLDENS, reason="no golden traces in tests/data/vllm (branch goldens not merged yet)")
@pytest.mark.parametrize("fast_forward", [True, False], ids=["ff", "step_by_step"])
@pytest.mark.parametrize("path", GOLDENS, ids=[p.name.split(".")[0] for p in GOLDENS])
def test_golden(path, fast_forward):
    doc = load(path)
    rec = run_golden(doc, fast_forward=fast_forward)
    assert compare(doc, rec) == []
    assert check_results(doc, rec["result"]) == []


def steps_of(req: RequestTable, engine: ContinuousEngine, blocks: int) -> dict[int, list]:
    """Scheduled (request, tokens) pairs per iteration, in step-conformance mode."""
    _, ev = simulate_continuous(req, engine, UNIT_STEP, Hardware(1, blocks * engine.block_size, "t", None),
                                unit_steps=True, record_events=True, serve_max_tokens=False)
    out: dict[int, list] = {}
    for step, kind, i, n in zip(ev["step"], ev["kind"], ev["id"], ev["n"]):
        if kind == st.EV_SCHEDULED:
            out.setdefault(int(step), []).append((int(i), int(n)))
    return out


def table(arrival, prompt, output) -> RequestTable:
    return RequestTable(np.asarray(arrival, float), np.asarray(prompt), np.asarray(output))


@pytest.mark.parametrize("ff", [True, False])
def test_lone_request_is_chunked_by_the_budget_not_the_threshold(ff):
    """Scheduler.schedule: long_prefill_token_threshold applies only when more than one request
    is running or waiting; alone, a 700-token prompt takes the whole 256-token budget."""
    eng = ContinuousEngine(max_num_batched_tokens=256, max_num_seqs=4, num_gpu_blocks=200, max_model_len=2048,
                           long_prefill_token_threshold=64, async_scheduling=False, fast_forward=ff)
    steps = steps_of(table([0], [700], [3]), eng, 200)
    assert [steps[k] for k in range(5)] == [[(0, 256)], [(0, 256)], [(0, 188)], [(0, 1)], [(0, 1)]]
    assert 5 not in steps


def test_threshold_caps_chunks_when_two_requests_wait():
    eng = ContinuousEngine(max_num_batched_tokens=256, max_num_seqs=4, num_gpu_blocks=200, max_model_len=2048,
                           long_prefill_token_threshold=64, async_scheduling=False)
    steps = steps_of(table([0, 0], [700, 100], [2, 2]), eng, 200)
    assert steps[0] == [(0, 64), (1, 64)]            # both capped at 64
    assert steps[1] == [(0, 64), (1, 36)]            # r1's prompt completes: 36 left


def test_async_skips_a_request_whose_last_token_is_in_flight():
    """AsyncScheduler: with one placeholder in flight, computed + 2 - placeholders >= prompt +
    max_tokens skips the request, so a 2-token request is scheduled exactly twice (prefill and
    one decode) and step 2 is empty."""
    eng = ContinuousEngine(max_num_batched_tokens=256, max_num_seqs=4, num_gpu_blocks=64, max_model_len=512,
                           async_scheduling=True)
    steps = steps_of(table([0], [40], [2]), eng, 64)
    assert steps == {0: [(0, 40)], 1: [(0, 1)]}


def test_fcfs_preempts_the_tail_and_head_of_line_blocks():
    """Hand-checked from Scheduler.schedule / allocate_slots: 4 usable blocks of 16 tokens, r0
    (32 + 20 tokens) and r1 (16 + 20). Step 0 admits both (2 + 1 blocks). Step 1: r0's decode
    takes the last free block; r1's needs one more, so the tail (r1 itself) is preempted and
    the running pass stops. r1 then needs 2 blocks for its 17 tokens, there is 1: it blocks the
    head of WAITING until r0 finishes after its 20th token (update of step 19), and step 20
    readmits it with its 17 tokens (prompt + the token it had sampled)."""
    eng = ContinuousEngine(max_num_batched_tokens=256, max_num_seqs=4, num_gpu_blocks=5, max_model_len=64,
                           block_size=16, async_scheduling=False, enable_prefix_caching=False,
                           full_sequence_gate=False)
    req = table([0, 0], [32, 16], [20, 20])
    _, ev = simulate_continuous(req, eng, UNIT_STEP, Hardware(1, 80, "t", None), unit_steps=True,
                                record_events=True, serve_max_tokens=False)
    pre = [(int(s), int(i)) for s, k, i in zip(ev["step"], ev["kind"], ev["id"]) if k == st.EV_PREEMPTED]
    assert pre == [(1, 1)]
    sched = steps_of(req, eng, 5)
    assert sched[0] == [(0, 32), (1, 16)]
    assert all(sched[k] == [(0, 1)] for k in range(1, 20))
    assert sched[20] == [(1, 17)]
