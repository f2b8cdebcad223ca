"""The golden step traces recorded from vLLM's scheduler: loading them and checking their invariants.

The files are written by tests/conformance/record_vllm.py (which needs vllm; this module does
not). Their format is described in tests/data/vllm/README.md and the rules behind them in
docs/vllm_v1_scheduler.md. `check_golden` replays each request's token accounting from the trace
alone, so a corrupted or truncated golden, or a recorder that drifted from the format, fails here
before any engine is compared with it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "vllm"
FORMAT = 1
VLLM_VERSION = "0.33.0"

TOP_KEYS = {"format", "vllm_version", "recorder", "scenario", "description", "async_scheduling",
            "config", "requests", "steps", "results"}
CONFIG_KEYS = {"block_size", "num_gpu_blocks", "max_num_batched_tokens",
               "max_num_scheduled_tokens", "max_num_seqs", "max_num_active_seqs",
               "max_model_len", "long_prefill_token_threshold",
               "long_prefill_token_threshold_adaptive", "enable_chunked_prefill",
               "enable_prefix_caching", "hash_block_size", "policy",
               "scheduler_reserve_full_isl", "watermark", "prefill_schedule_interval",
               "async_scheduling", "max_concurrent_batches", "scheduler_class",
               "use_v2_model_runner", "num_lookahead_tokens", "num_speculative_tokens",
               "pipeline_parallel_size"}
REQUEST_KEYS = {"id", "arrival_step", "arrival_time", "prompt_len", "output_len", "priority",
                "hash_ids"}
STEP_KEYS = {"step", "schedule_called", "scheduled", "num_scheduled_tokens", "preempted",
             "prefix_hit_tokens", "free_blocks_after_schedule", "update_of", "finished",
             "free_blocks", "evicted_blocks", "num_running", "num_waiting"}
RESULT_KEYS = {"finish_step", "finish_reason", "num_output_tokens", "num_preemptions"}


def golden_paths(directory: Path = GOLDEN_DIR) -> list[Path]:
    return sorted(directory.glob("*.json.gz"))


def load_golden(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def effective_output_len(req: dict[str, Any], max_model_len: int) -> int:
    """Output tokens vLLM produces: max_tokens, or fewer where the context limit stops it
    (check_stop: num_tokens >= max_model_len -> FINISHED_LENGTH_CAPPED)."""
    return min(req["output_len"], max_model_len - req["prompt_len"])


class _Req:
    """What the trace says about one request so far."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.computed = 0      # num_computed_tokens after the latest schedule()
        self.samples = 0       # steps that sampled a token for it (delivered or in flight)
        self.holding = False   # admitted and not since preempted or finished
        self.finished = False
        self.last_sample_step = -1
        self.preemptions = 0


def check_golden(doc: dict[str, Any], name: str = "golden") -> None:
    """Raise AssertionError naming the first broken invariant of one golden trace."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise AssertionError(f"{name}: {msg}")

    # Format.
    need(set(doc) == TOP_KEYS, f"top-level keys {sorted(set(doc) ^ TOP_KEYS)} differ")
    need(doc["format"] == FORMAT, f"format {doc['format']!r} != {FORMAT}")
    need(doc["vllm_version"] == VLLM_VERSION, f"vllm_version {doc['vllm_version']!r}")
    need("record_vllm.py" in doc["recorder"], "recorder command missing")
    cfg = doc["config"]
    need(CONFIG_KEYS <= set(cfg), f"config lacks {sorted(CONFIG_KEYS - set(cfg))}")
    need(cfg["async_scheduling"] == doc["async_scheduling"], "async_scheduling disagrees")
    need(cfg["max_concurrent_batches"] == (2 if doc["async_scheduling"] else 1),
         "max_concurrent_batches must be 2 with async scheduling, 1 without")
    need(cfg["policy"] in ("fcfs", "priority"), f"policy {cfg['policy']!r}")
    bs, pool, mml = cfg["block_size"], cfg["num_gpu_blocks"] - 1, cfg["max_model_len"]
    budget, max_seqs = cfg["max_num_scheduled_tokens"], cfg["max_num_active_seqs"]
    need(cfg["max_num_scheduled_tokens"] <= cfg["max_num_batched_tokens"], "token budgets")
    need(cdiv(mml, bs) <= pool, "the pool cannot hold one max_model_len sequence")

    reqs: dict[str, _Req] = {}
    order = []
    for r in doc["requests"]:
        need(set(r) == REQUEST_KEYS, f"request keys {sorted(set(r) ^ REQUEST_KEYS)}")
        need(r["id"] not in reqs, f"duplicate request id {r['id']}")
        need(1 <= r["prompt_len"] < mml, f"{r['id']}: prompt_len must be in [1, max_model_len)")
        need(r["output_len"] >= 1, f"{r['id']}: output_len < 1")
        if r["hash_ids"] is not None:
            need(len(r["hash_ids"]) == cdiv(r["prompt_len"], bs),
                 f"{r['id']}: one hash id per block of {bs} prompt tokens")
        reqs[r["id"]] = _Req(r)
        order.append(r)
    need([r["arrival_step"] for r in order] == sorted(r["arrival_step"] for r in order),
         "requests must be listed in arrival order")
    need([r["arrival_time"] for r in order] == [float(i) for i in range(len(order))],
         "arrival_time must be the request's index")

    steps = doc["steps"]
    need(len(steps) > 0, "no steps")
    arrived: set[str] = set()
    in_flight: list[int] = []  # batches scheduled and not yet updated, oldest first
    for k, s in enumerate(steps):
        where = f"step {k}"
        need(set(s) == STEP_KEYS, f"{where}: keys {sorted(set(s) ^ STEP_KEYS)} differ")
        need(s["step"] == k, f"{where}: numbered {s['step']}")
        arrived |= {r["id"] for r in order if r["arrival_step"] == k}

        # schedule(): preemptions, then running requests, then admissions.
        if not s["schedule_called"]:
            need(not s["scheduled"] and not s["preempted"] and not s["prefix_hit_tokens"]
                 and s["free_blocks_after_schedule"] is None,
                 f"{where}: a step without schedule() schedules nothing")
        ids = [rid for rid, _ in s["scheduled"]]
        need(len(set(ids)) == len(ids), f"{where}: a request scheduled twice")
        need(sum(n for _, n in s["scheduled"]) == s["num_scheduled_tokens"],
             f"{where}: num_scheduled_tokens is not the sum of the scheduled tokens")
        need(s["num_scheduled_tokens"] <= budget, f"{where}: token budget {budget} exceeded")
        need(len(ids) <= max_seqs, f"{where}: more than max_num_seqs={max_seqs} scheduled")
        need(len(set(s["preempted"])) == len(s["preempted"]), f"{where}: preempted twice")
        need(not set(s["preempted"]) & set(ids), f"{where}: a preempted request is scheduled")
        for rid in s["preempted"]:
            need(rid in reqs and reqs[rid].holding, f"{where}: {rid} preempted but not running")
            q = reqs[rid]
            q.holding, q.computed = False, 0
            q.preemptions += 1
        admitted_seen = False
        for rid, n in s["scheduled"]:
            need(rid in arrived, f"{where}: {rid} scheduled before its arrival")
            q = reqs[rid]
            need(not q.finished, f"{where}: {rid} scheduled after it finished")
            need(isinstance(n, int) and n > 0, f"{where}: {rid} scheduled {n!r} tokens")
            known = q.spec["prompt_len"] + q.samples
            if q.holding:
                need(not admitted_seen, f"{where}: running request {rid} after an admission")
                need(rid not in s["prefix_hit_tokens"], f"{where}: hit for running {rid}")
            else:
                need(not s["preempted"], f"{where}: {rid} admitted in a step that preempted")
                admitted_seen = True
                hit = s["prefix_hit_tokens"].get(rid, 0)
                need(hit % bs == 0 and 0 <= hit < known,
                     f"{where}: {rid} prefix hit {hit} is not whole blocks below {known}")
                need(hit == 0 or cfg["enable_prefix_caching"],
                     f"{where}: {rid} hit with prefix caching off")
                q.holding, q.computed = True, hit
            q.computed += n
            need(q.computed <= known, f"{where}: {rid} computes {q.computed} > {known} known")
            if q.computed == known:
                q.samples += 1
                q.last_sample_step = k
        for rid in s["prefix_hit_tokens"]:
            need(rid in ids, f"{where}: prefix hit for unscheduled {rid}")
        held = sum(cdiv(q.computed, bs) for q in reqs.values() if q.holding)
        if s["schedule_called"]:
            _check_free(need, cfg, s["free_blocks_after_schedule"], pool, held,
                        f"{where} after schedule")

        # update_from_output(): finishes of the batch update_of, the oldest one in flight.
        if s["schedule_called"]:
            in_flight.append(k)
        need(len(in_flight) <= cfg["max_concurrent_batches"],
             f"{where}: more than max_concurrent_batches batches in flight")
        if s["num_scheduled_tokens"] > 0 and len(in_flight) < cfg["max_concurrent_batches"]:
            # EngineCore.step_with_batch_queue returns before any update while the queue has room.
            need(s["update_of"] is None, f"{where}: updated with room in the batch queue")
        if s["update_of"] is None:
            need(not s["finished"], f"{where}: finishes without an update")
            need(len(in_flight) < cfg["max_concurrent_batches"] or not in_flight,
                 f"{where}: the batch queue is full but nothing was updated")
        else:
            need(bool(in_flight) and s["update_of"] == in_flight.pop(0),
                 f"{where}: update_of {s['update_of']} is not the oldest batch in flight")
        for rid in s["finished"]:
            need(rid in reqs and not reqs[rid].finished, f"{where}: {rid} finishes twice")
            q = reqs[rid]
            want = effective_output_len(q.spec, mml)
            need(q.samples == want, f"{where}: {rid} finished after {q.samples} of {want} tokens")
            need(q.last_sample_step == s["update_of"],
                 f"{where}: {rid} finished by the update of step {s['update_of']}, "
                 f"its last token was sampled in step {q.last_sample_step}")
            q.finished, q.holding, q.computed = True, False, 0
        unfinished = [q for q in reqs.values() if q.spec["id"] in arrived and not q.finished]
        for q in unfinished:
            need(q.samples < effective_output_len(q.spec, mml) or doc["async_scheduling"],
                 f"{where}: {q.spec['id']} has all its tokens but did not finish")
        held = sum(cdiv(q.computed, bs) for q in reqs.values() if q.holding)
        _check_free(need, cfg, s["free_blocks"], pool, held, where)
        need(s["num_running"] == sum(q.holding for q in reqs.values()),
             f"{where}: num_running {s['num_running']} is not the admitted, unfinished count")
        need(s["num_running"] <= max_seqs, f"{where}: num_running above max_num_seqs")
        need(s["num_running"] + s["num_waiting"] == len(unfinished),
             f"{where}: running + waiting != arrived and unfinished")
        need(s["evicted_blocks"] >= 0, f"{where}: evicted_blocks < 0")
        need(s["evicted_blocks"] == 0 or cfg["enable_prefix_caching"],
             f"{where}: evictions with prefix caching off")

    # Conservation: every request finished exactly once, with all its tokens.
    for rid, q in reqs.items():
        need(q.finished, f"{rid} never finishes")
        res = doc["results"].get(rid)
        need(res is not None and set(res) == RESULT_KEYS, f"{rid}: results entry")
        need(steps[res["finish_step"]]["finished"].count(rid) == 1,
             f"{rid}: results.finish_step {res['finish_step']} is not where it finished")
        need(res["num_output_tokens"] == effective_output_len(q.spec, mml),
             f"{rid}: {res['num_output_tokens']} output tokens")
        need(res["num_preemptions"] == q.preemptions, f"{rid}: num_preemptions")
        capped = q.spec["output_len"] > effective_output_len(q.spec, mml)
        need(res["finish_reason"] == "length", f"{rid}: finish_reason {res['finish_reason']}")
        need(not capped or q.spec["prompt_len"] + res["num_output_tokens"] == mml,
             f"{rid}: capped below max_model_len")
    need(set(doc["results"]) == set(reqs), "results for unknown requests")
    need(not in_flight, f"batches {in_flight} never updated")
    last = steps[-1]
    need(last["num_running"] == 0 and last["num_waiting"] == 0, "the trace ends with work left")
    need(last["free_blocks"] == pool, "the trace ends with blocks still held")


def _check_free(need, cfg: dict[str, Any], free: int, pool: int, held: int, where: str) -> None:
    """Block conservation: each holder has ceil(computed / block_size) blocks; with prefix
    caching they may share blocks, so the pool can only be fuller than that."""
    need(isinstance(free, int) and 0 <= free <= pool, f"{where}: free blocks {free!r}")
    if cfg["enable_prefix_caching"]:
        need(free >= pool - held, f"{where}: {free} free < {pool} - {held} held")
    else:
        need(free == pool - held, f"{where}: {free} free != {pool} - {held} held")
