"""The Mooncake JSONL trace workload: parsing, one-line errors, and prefix-cache hits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from simsched.engines.continuous import ContinuousEngine, Hardware, simulate_continuous
from simsched.errors import InputError
from simsched.latency import StepTime
from simsched.workloads.mooncake import MooncakeTrace

ROWS = [
    {"timestamp": 0, "input_length": 1000, "output_length": 20, "hash_ids": [1, 2]},
    {"timestamp": 500, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]},
    {"timestamp": 500, "input_length": 600, "output_length": 0, "hash_ids": [1, 9]},
    {"timestamp": 2000, "input_length": 1040, "output_length": 5, "hash_ids": [1, 2, 3]},
]


def write(tmp_path, rows, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_parse_select_and_scale(tmp_path):
    w = MooncakeTrace(path=write(tmp_path, ROWS + [""]))
    req = w.generate()
    assert list(req.arrival) == [0.0, 0.5, 2.0]            # ms -> s; the failure dropped
    assert list(req.prompt) == [1000, 1100, 1040] and list(req.output) == [20, 10, 5]
    assert list(req.hash_offsets) == [0, 2, 5, 8] and req.hash_block_tokens == 512
    assert req.info["trace_failures_dropped"] == 1 and req.info["trace_blank_lines"] == 1
    assert list(MooncakeTrace(path=w.path, target_rate=2.0).generate().arrival) == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("row,message", [
    ("{not json", "2: not a JSON object"),
    ({"timestamp": 1, "input_length": 5, "output_length": 1}, "2 column 'hash_ids': missing field"),
    ({"timestamp": 1, "input_length": -5, "output_length": 1, "hash_ids": []}, "input_length is negative"),
    ({"timestamp": 1, "input_length": 5.5, "output_length": 1, "hash_ids": []}, "input_length is not an integer"),
    ({"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}, "2 hash ids for 5 prompt tokens"),
    ({"timestamp": "x", "input_length": 5, "output_length": 1, "hash_ids": []}, "timestamp is not"),
])
def test_bad_rows_are_one_line_errors_naming_line_and_field(tmp_path, row, message):
    path = write(tmp_path, [ROWS[0], row])
    with pytest.raises(InputError) as exc:
        MooncakeTrace(path=path).generate()
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_out_of_order_and_missing_file(tmp_path):
    path = write(tmp_path, [ROWS[3], ROWS[0]])
    with pytest.raises(InputError, match="goes back 2 s"):
        MooncakeTrace(path=path).generate()
    with pytest.raises(InputError, match="no such file"):
        MooncakeTrace(path=str(tmp_path / "missing.jsonl"))


def test_shared_prefixes_hit_the_prefix_cache(tmp_path):
    """Requests sharing their first hash ids reuse those blocks (whole blocks, last token
    recomputed); with prefix caching off nothing hits."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(60):
        shared = [7, 8, 9][: int(rng.integers(1, 4))]
        ids = shared + [1000 + k * 10 + j for j in range(4 - len(shared))]
        rows.append({"timestamp": 200 * k, "input_length": 64, "output_length": 8, "hash_ids": ids})
    req = MooncakeTrace(path=write(tmp_path, rows), hash_block_tokens=16).generate()
    step = StepTime(c0_s=0.01, c_pf_s=1e-4, c_dec_s=1e-4)
    eng = ContinuousEngine(num_gpu_blocks=400, max_model_len=1024, max_num_batched_tokens=512, max_num_seqs=16)
    on, _ = simulate_continuous(req, eng, step, Hardware(1, 6400, "t", None))
    off, _ = simulate_continuous(req, ContinuousEngine(**{**eng.__dict__, "enable_prefix_caching": False}), step,
                                 Hardware(1, 6400, "t", None))
    assert (on.prefix_hit_tokens > 0).sum() > 30
    assert np.all(on.prefix_hit_tokens % 16 == 0) and np.all(on.prefix_hit_tokens <= 48)
    assert np.all(off.prefix_hit_tokens == 0)
