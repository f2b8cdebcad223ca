"""The invariants of docs/continuous_invariants.md on random workloads, and the end-of-run
checks that assert I1 and I2 failing on corrupted state."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from continuous_cases import STEP, random_case
from simsched.engines.continuous import simulate_continuous
from simsched.engines.continuous import state as st
from simsched.engines.continuous.result import COMPLETED, REASONS, REJECTED, UNFINISHED, check_invariants
from simsched.engines.continuous.simulate import check_blocks


def run(seed, **changes):
    req, engine, hw = random_case(seed)
    return req, engine, simulate_continuous(req, replace(engine, steps_table=True, **changes), STEP, hw)[0]


@pytest.mark.parametrize("seed", range(8))
def test_steps_respect_clock_budget_and_limits(seed):
    """I3 and I5 on every recorded step."""
    req, engine, res = run(seed)
    s = res.steps
    budget = engine.max_num_batched_tokens
    assert np.all(s["duration"] >= 0)
    for g in range(res.num_replicas):
        t = s["time"][s["replica"] == g]
        assert np.all(np.diff(t) >= 0)
    assert np.all(s["prefill_tokens"] + s["decode_seqs"] <= budget)
    assert np.all(s["running"] <= engine.max_num_seqs) and np.all(s["scheduled"] <= engine.max_num_seqs)
    assert np.all(s["free_blocks"] >= 0) and np.all(s["free_blocks"] <= res.num_gpu_blocks - 1)


@pytest.mark.parametrize("seed", range(8))
def test_conservation_causality_and_token_times(seed):
    """I1 and I4 (also asserted inside every run) and per-request I3."""
    req, engine, res = run(seed)
    c = res.counts()
    assert c["completed"] + c["rejected"] + c["unfinished"] + c["not_arrived"] == len(req)
    done = res.status == COMPLETED
    assert np.all(res.first_scheduled[done] >= req.arrival[done])
    assert np.all(res.first_token[done] >= res.first_scheduled[done])
    assert np.all(res.finish[done] >= res.first_token[done])
    assert np.all(res.itl_max[np.isfinite(res.itl_max)] >= 0)
    assert np.all(res.reason[res.status == REJECTED] > 0)


def test_horizon_leaves_unfinished_requests_with_reasons_and_blocks_accounted():
    req, engine, hw = random_case(2)
    res, _ = simulate_continuous(req, replace(engine, horizon_s=float(req.arrival[len(req) // 2])), STEP, hw)
    c = res.counts()
    assert c["unfinished"] > 0 and c["not_arrived"] > 0
    reasons = {REASONS[k] for k in res.reason[res.status == UNFINISHED]}
    assert reasons <= {"waiting_at_horizon", "running_at_horizon"}
    assert np.all(np.isnan(res.finish[res.status == UNFINISHED]))


def test_rejected_requests_never_block_others():
    """A prompt of max_model_len tokens or more is rejected at arrival (vLLM's input check);
    the others complete."""
    from simsched.engines.continuous import ContinuousEngine, Hardware
    from simsched.workloads import RequestTable

    req = RequestTable(np.array([0.0, 0.1, 0.2]), np.array([10, 600, 0]), np.array([5, 5, 5]))
    eng = ContinuousEngine(max_model_len=512, num_gpu_blocks=100, max_num_batched_tokens=256, max_num_seqs=8)
    res, _ = simulate_continuous(req, eng, STEP, Hardware(1, 1600, "t", None))
    assert [REASONS[k] for k in res.reason] == ["", "exceeds_max_model_len", "empty_prompt"]
    assert res.counts()["completed"] == 1


def test_max_model_len_stops_a_request_early():
    """check_stop: num_tokens >= max_model_len ends a request before its max_tokens."""
    from simsched.engines.continuous import ContinuousEngine, Hardware
    from simsched.workloads import RequestTable

    req = RequestTable(np.array([0.0]), np.array([500]), np.array([100]))
    eng = ContinuousEngine(max_model_len=512, num_gpu_blocks=100, max_num_batched_tokens=512, max_num_seqs=8)
    res, _ = simulate_continuous(req, eng, STEP, Hardware(1, 1600, "t", None))
    assert res.status[0] == COMPLETED and res.output_emitted[0] == 12


def test_conservation_check_fails_on_a_lost_request():
    req, engine, res = run(1)
    produced = np.minimum(req.output, engine.max_model_len - req.prompt)
    check_invariants(res, produced)
    lost = replace(res, status=np.where(np.arange(len(req)) == 0, np.int8(7), res.status).astype(np.int8))
    with pytest.raises(AssertionError, match="conservation"):
        check_invariants(lost, produced)
    short = replace(res, output_emitted=res.output_emitted - (res.status == COMPLETED))
    with pytest.raises(AssertionError, match="whole output"):
        check_invariants(short, produced)


def test_block_check_fails_on_a_leaked_or_doubly_freed_block():
    """I2: build a pool, take blocks for a row, then corrupt the accounting."""
    from simsched.engines.continuous.block_pool import free_row, get_new_blocks

    K = st.new_pool(np.array([10]), 4, 8)
    R = st.new_rstate(1)
    row = K.row_stack[0, K.ki[0, st.ROW_TOP] - 1]
    K.ki[0, st.ROW_TOP] -= 1
    R.ri[0, st.ROW] = row
    get_new_blocks(K, 0, row, 3)
    check_blocks(K, R)
    K.ki[0, st.N_FREE] += 1                      # a block counted free twice
    with pytest.raises(AssertionError, match="block conservation"):
        check_blocks(K, R)
    K.ki[0, st.N_FREE] -= 1
    K.kb[K.tbl[row, 0], st.REF] = 2              # a reference nobody holds
    with pytest.raises(AssertionError, match="block conservation"):
        check_blocks(K, R)
    K.kb[K.tbl[row, 0], st.REF] = 1
    free_row(K, 0, row)
    R.ri[0, st.ROW] = -1
    check_blocks(K, R)


def test_same_inputs_same_results():
    """I6: determinism."""
    a = run(4)[2]
    b = run(4)[2]
    for f in ("status", "first_token", "finish", "preemptions", "prefix_hit_tokens"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True)
