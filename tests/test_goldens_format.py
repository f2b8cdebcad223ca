"""The vLLM golden traces (tests/data/vllm/): present, well formed, and internally consistent.

They are recorded from vLLM 0.33.0's real scheduler by tests/conformance/record_vllm.py (not
run here: it needs vllm). These tests need no vllm: they check each file's invariants
(tests/vllm_goldens.py), that each scenario still exercises what its name says, that a
corrupted copy is caught, and that the rules written in docs/vllm_v1_scheduler.md, transcribed
in tests/vllm_spec_model.py, reproduce every golden step for step.
"""

from __future__ import annotations

import copy
import gzip
import json

import pytest
from vllm_goldens import (GOLDEN_DIR, cdiv, check_golden, effective_output_len, golden_paths,
                          load_golden)
from vllm_spec_model import first_difference

PATHS = golden_paths()
NAMES = sorted({p.name.split("__")[0] for p in PATHS})


def golden(name: str, kind: str) -> dict:
    return load_golden(GOLDEN_DIR / f"{name}__{kind}.json.gz")


def test_goldens_present_and_small():
    assert len(NAMES) >= 12, NAMES
    for name in NAMES:
        for kind in ("sync", "async"):
            assert (GOLDEN_DIR / f"{name}__{kind}.json.gz").exists(), (name, kind)
    assert len(PATHS) == 2 * len(NAMES), "only <scenario>__<sync|async>.json.gz files"
    assert sum(p.stat().st_size for p in PATHS) < 2_000_000
    assert max(len(load_golden(p)["steps"]) for p in PATHS) >= 1000
    assert (GOLDEN_DIR / "README.md").exists()


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_golden_invariants(path):
    doc = load_golden(path)
    check_golden(doc, path.name)
    assert doc["scenario"] == path.name.split("__")[0]
    assert doc["async_scheduling"] == path.name.endswith("__async.json.gz")


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_spec_document_reproduces_golden(path):
    """docs/vllm_v1_scheduler.md, transcribed (tests/vllm_spec_model.py), gives vLLM's steps."""
    assert first_difference(load_golden(path)) is None


def test_spec_model_notices_a_different_trace():
    doc = golden("priority", "sync")
    step = next(s for s in doc["steps"] if s["preempted"])
    step["preempted"] = step["preempted"][::-1] + ["r0"]
    assert "preempted" in first_difference(doc)


def _all(name: str):
    return [golden(name, kind) for kind in ("sync", "async")]


def _count(doc: dict, key: str) -> int:
    return sum(len(s[key]) for s in doc["steps"])


def test_scenarios_exercise_their_feature():
    """Re-recording with other parameters must not quietly lose what a scenario is for."""
    for doc in _all("preemption_storm") + _all("preemption_storm_no_cache"):
        assert _count(doc, "preempted") >= 20
    assert all(_count(d, "prefix_hit_tokens") > 0 for d in _all("preemption_storm"))
    assert all(_count(d, "prefix_hit_tokens") == 0 for d in _all("preemption_storm_no_cache"))
    for doc in _all("chunked_prefill"):
        chunks = {}
        for s in doc["steps"]:
            for rid, n in s["scheduled"]:
                chunks[rid] = chunks.get(rid, 0) + (n > 1)
        assert max(chunks.values()) >= 4
    for doc in _all("max_num_seqs"):
        assert max(s["num_running"] for s in doc["steps"]) == doc["config"]["max_num_seqs"]
        assert any(s["num_waiting"] > 0 for s in doc["steps"])
    for doc in _all("arrivals"):
        assert any(not s["schedule_called"] and s["update_of"] is None for s in doc["steps"])
    for on, off in zip(_all("admission_gate_on"), _all("admission_gate_off")):
        assert on["config"]["scheduler_reserve_full_isl"] and not off["config"][
            "scheduler_reserve_full_isl"]
        assert _count(on, "preempted") == 0 < _count(off, "preempted")
    for doc in _all("long_prefill_threshold"):
        cap = doc["config"]["long_prefill_token_threshold"]
        sizes = [n for s in doc["steps"] for _, n in s["scheduled"]]
        assert cap in sizes and max(sizes) > cap  # capped, and uncapped when alone
    for doc in _all("max_model_len"):
        mml = doc["config"]["max_model_len"]
        assert any(effective_output_len(r, mml) < r["output_len"] for r in doc["requests"])
    for doc in _all("priority") + _all("mixed_long_priority"):
        assert doc["config"]["policy"] == "priority" and _count(doc, "preempted") > 0
        assert len({r["priority"] for r in doc["requests"]}) >= 3
    for doc in _all("prefix_cache"):
        assert _count(doc, "prefix_hit_tokens") >= 10
    for doc in _all("prefix_cache_eviction"):
        assert sum(s["evicted_blocks"] for s in doc["steps"]) > 0
        hits = [h for s in doc["steps"] for h in s["prefix_hit_tokens"].values()]
        assert hits == [64, 160], hits  # partial after eviction, full after recompute
    for doc in _all("prefix_cache_off") + _all("admission_gate_on"):
        assert not doc["config"]["enable_prefix_caching"]
    for doc in _all("mixed_long"):
        assert len(doc["steps"]) >= 1000 and _count(doc, "preempted") > 0
        assert _count(doc, "prefix_hit_tokens") > 0


def test_async_differs_from_sync():
    """The two schedulers' traces differ (finishes one iteration later, at least)."""
    for name in NAMES:
        sync, asyn = golden(name, "sync"), golden(name, "async")
        assert sync["steps"] != asyn["steps"], name
        assert sync["requests"] == asyn["requests"], name


# --- a corrupted copy must fail ---------------------------------------------------------------


def _first(doc, pred):
    return next(s for s in doc["steps"] if pred(s))


def _bump_decode(doc):
    s = _first(doc, lambda s: any(n == 1 for _, n in s["scheduled"]) and s["step"] > 3)
    pair = next(p for p in s["scheduled"] if p[1] == 1)
    pair[1] = 2
    s["num_scheduled_tokens"] += 1


def _drop_finish(doc):
    _first(doc, lambda s: s["finished"])["finished"].pop()


def _double_finish(doc):
    s = _first(doc, lambda s: s["finished"])
    later = doc["steps"][s["step"] + 1]
    later["finished"].append(s["finished"][0])


def _free_off_by_one(doc):
    doc["steps"][len(doc["steps"]) // 2]["free_blocks"] -= 1


def _over_budget(doc):
    s = _first(doc, lambda s: s["scheduled"])
    extra = doc["config"]["max_num_scheduled_tokens"] + 1 - s["num_scheduled_tokens"]
    s["scheduled"][0][1] += extra
    s["num_scheduled_tokens"] += extra


def _renumber(doc):
    del doc["steps"][5]


def _truncate(doc):
    del doc["steps"][len(doc["steps"]) // 2:]


def _early(doc):
    doc["requests"][-1]["arrival_step"] += 1000


def _admissions(doc):
    """(step, request ids admitted in it) for every step that admits."""
    seen, out = set(), []
    for s in doc["steps"]:
        new = [rid for rid, _ in s["scheduled"] if rid not in seen]
        seen |= {rid for rid, _ in s["scheduled"]}
        if new and len(new) < len(s["scheduled"]):
            out.append((s, new))
    return out


def _admit_after_preempt(doc):
    """Turn a running request of an admitting step into a preemption of that step."""
    s, _ = _admissions(doc)[0]
    pair = s["scheduled"].pop(0)
    s["num_scheduled_tokens"] -= pair[1]
    s["preempted"].append(pair[0])


def _new_before_running(doc):
    s, _ = _admissions(doc)[0]
    s["scheduled"].reverse()


def _running_count(doc):
    doc["steps"][3]["num_running"] += 1


def _outputs(doc):
    rid = doc["requests"][0]["id"]
    doc["results"][rid]["num_output_tokens"] += 1


def _update_late(doc):
    """Hold one batch's update back an iteration (a different step sequence)."""
    s = _first(doc, lambda s: s["update_of"] is not None and s["finished"])
    nxt = doc["steps"][s["step"] + 1]
    nxt["finished"] = s["finished"] + nxt["finished"]
    s["finished"] = []
    s["update_of"], nxt["update_of"] = None, s["update_of"]


def _format(doc):
    doc["format"] = 2


def _drop_preemption(doc):
    _first(doc, lambda s: s["preempted"])["preempted"].pop()


def _hit_not_whole_blocks(doc):
    s = _first(doc, lambda s: s["prefix_hit_tokens"])
    rid = next(iter(s["prefix_hit_tokens"]))
    s["prefix_hit_tokens"][rid] -= 1


CORRUPTIONS = [
    ("preemption_storm_no_cache", _bump_decode, "known"),
    ("preemption_storm_no_cache", _drop_finish, "finish|free"),
    ("basic", _double_finish, "finishes twice"),
    ("preemption_storm_no_cache", _free_off_by_one, "free"),
    ("basic", _over_budget, "budget"),
    ("basic", _renumber, "numbered"),
    ("mixed_long", _truncate, "never finishes"),
    ("arrivals", _early, "before its arrival"),
    ("preemption_storm_no_cache", _admit_after_preempt, "admitted in a step that preempted"),
    ("chunked_prefill", _new_before_running, "after an admission"),
    ("basic", _running_count, "num_running"),
    ("basic", _outputs, "output tokens"),
    ("basic", _format, "format"),
    ("basic", _update_late, "update"),
    ("preemption_storm_no_cache", _drop_preemption, "free"),
    ("prefix_cache", _hit_not_whole_blocks, "whole blocks"),
]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name,corrupt,message", CORRUPTIONS,
                         ids=[c[1].__name__.strip("_") for c in CORRUPTIONS])
def test_corrupted_copy_fails(tmp_path, name, corrupt, message, kind):
    src = GOLDEN_DIR / f"{name}__{kind}.json.gz"
    doc = load_golden(src)
    check_golden(copy.deepcopy(doc), src.name)  # the original passes
    corrupt(doc)
    bad = tmp_path / src.name
    with gzip.open(bad, "wt") as fh:
        json.dump(doc, fh)
    with pytest.raises(AssertionError, match=message):
        check_golden(load_golden(bad), bad.name)


def test_cdiv():
    assert [cdiv(n, 16) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
