"""docs/vllm_v1_scheduler.md transcribed into plain Python, to be replayed against the goldens.

Not an engine (no clock, one object per request, lists for queues): its only job is to show that
the document is complete and exact. tests/test_goldens_format.py runs every scenario of
tests/data/vllm/ through it and requires the recorded steps, field for field. Section numbers
refer to the document. Token ids follow tests/conformance/record_vllm.py, since prefix-cache
keys are built from them.
"""

from __future__ import annotations

from typing import Any

PRIVATE_PROMPT_BASE = 500_000_000
SAMPLED_BASE = 1_000_000_000
PER_REQUEST_SPAN = 50_000


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Block:
    def __init__(self, bid: int):
        self.id, self.ref, self.key = bid, 0, None


class Req:
    def __init__(self, spec: dict[str, Any], index: int, bs: int):
        self.id, self.index, self.spec = spec["id"], index, spec
        self.priority, self.arrival = spec["priority"], spec["arrival_time"]
        self.max_tokens = spec["output_len"]
        if spec["hash_ids"] is None:
            base = PRIVATE_PROMPT_BASE + index * PER_REQUEST_SPAN
            self.tokens = [base + j for j in range(spec["prompt_len"])]
        else:
            self.tokens = [spec["hash_ids"][j // bs] * bs + j % bs
                           for j in range(spec["prompt_len"])]
        self.prompt_len = spec["prompt_len"]
        self.computed = self.placeholders = self.in_flight = self.stale = 0
        self.status = "WAITING"
        self.blocks: list[Block] = []
        self.num_cached = 0          # SingleTypeKVCacheManager.num_cached_block
        self.keys: list[int] = []    # chained block hashes of full blocks of known tokens
        self.samples = 0             # the recorder's per-request sampled-token counter
        self.prefill_chunk = False

    @property
    def outputs(self) -> int:
        return len(self.tokens) - self.prompt_len


class SpecModel:
    """One replica: the scheduler of sections 3-7 inside the engine loop of section 2."""

    def __init__(self, doc: dict[str, Any]):
        c = doc["config"]
        self.bs, self.mml = c["block_size"], c["max_model_len"]
        self.budget0, self.max_active = c["max_num_scheduled_tokens"], c["max_num_active_seqs"]
        self.threshold = c["long_prefill_token_threshold"]
        self.caching, self.gate = c["enable_prefix_caching"], c["scheduler_reserve_full_isl"]
        self.priority = c["policy"] == "priority"
        self.async_ = doc["async_scheduling"]
        self.queue_size = c["max_concurrent_batches"]
        assert not c["long_prefill_token_threshold_adaptive"] and c["watermark"] == 0.0
        self.blocks = [Block(i) for i in range(c["num_gpu_blocks"])]
        self.free = self.blocks[1:]                # block 0 is the null block
        self.cache: dict[int, list[Block]] = {}    # key -> blocks, first registered first
        self.interned: dict[tuple, int] = {}
        self.specs = doc["requests"]
        self.reqs: dict[str, Req] = {}
        self.running: list[Req] = []
        self.waiting: list[Req] = []
        self.finished_ids: set[str] = set()
        self.batches: list[tuple[int, list[tuple[str, int, int | None]]]] = []
        self.evicted = 0

    # ---- section 5: hashes, lookup, the free queue ------------------------------------------
    def extend_keys(self, r: Req) -> None:
        if not self.caching:
            return
        while (len(r.keys) + 1) * self.bs <= len(r.tokens):
            i = len(r.keys)
            item = (r.keys[-1] if r.keys else None, tuple(r.tokens[i * self.bs:(i + 1) * self.bs]))
            r.keys.append(self.interned.setdefault(item, len(self.interned)))

    def lookup(self, r: Req) -> list[Block]:
        if not self.caching:
            return []
        hit = []
        for key in r.keys[:(len(r.tokens) - 1) // self.bs]:
            blocks = self.cache.get(key)
            if not blocks:
                break
            hit.append(blocks[0])
        return hit

    def pop_free(self, n: int) -> list[Block]:
        out, self.free = self.free[:n], self.free[n:]
        for b in out:
            if b.key is not None:
                self.cache[b.key].remove(b)
                if not self.cache[b.key]:
                    del self.cache[b.key]
                b.key = None
                self.evicted += 1
            b.ref = 1
        return out

    def cache_blocks(self, r: Req, num_tokens: int) -> None:
        if not self.caching:
            return
        full = min(num_tokens, len(r.keys) * self.bs) // self.bs
        for i in range(r.num_cached, full):
            b, key = r.blocks[i], r.keys[i]
            if b.key == key or b in self.cache.get(key, []):
                continue
            assert b.key is None
            b.key = key
            self.cache.setdefault(key, []).append(b)
        r.num_cached = max(r.num_cached, full)

    def free_request(self, r: Req) -> None:
        first, last = [], []
        for b in reversed(r.blocks):
            b.ref -= 1
            if b.ref == 0:
                (first if b.key is None else last).append(b)
        self.free = first + self.free + last
        r.blocks, r.num_cached = [], 0

    # ---- section 4: allocate_slots ----------------------------------------------------------
    def allocate(self, r: Req, n: int, hit: list[Block] | None = None) -> bool:
        if r.blocks or hit is None:  # running
            need = max(cdiv(r.computed + n, self.bs) - len(r.blocks), 0)
            if need > len(self.free):
                return False
            r.blocks += self.pop_free(need)
            self.cache_blocks(r, min(r.computed + n, len(r.tokens)))
            return True
        h = len(hit) * self.bs
        evictable = sum(b.ref == 0 for b in hit)
        if self.gate:
            full = cdiv(min(len(r.tokens), self.mml), self.bs) - len(hit) + evictable
            if full > len(self.free):
                return False
        need = cdiv(min(h + n, self.mml), self.bs) - len(hit) + evictable
        if need > len(self.free):
            return False
        for b in hit:
            if b.ref == 0:
                self.free.remove(b)
            b.ref += 1
        r.blocks = list(hit)
        r.num_cached = len(hit)
        r.blocks += self.pop_free(need - evictable)
        self.cache_blocks(r, min(h + n, len(r.tokens)))
        return True

    # ---- section 6 ---------------------------------------------------------------------------
    def preempt(self, r: Req) -> None:
        self.free_request(r)
        r.status, r.computed, r.placeholders = "PREEMPTED", 0, 0
        r.stale = r.in_flight
        if self.priority:
            self.waiting.append(r)
        else:
            self.waiting.insert(0, r)

    def peek(self) -> Req:
        if self.priority:
            return min(self.waiting, key=lambda q: (q.priority, q.arrival, q.id))
        return self.waiting[0]

    # ---- section 3: schedule() ---------------------------------------------------------------
    def schedule(self) -> dict[str, Any]:
        budget = self.budget0
        eligible = len(self.running) + len(self.waiting)
        t = self.threshold if eligible > 1 else 0
        sched: dict[str, int] = {}
        preempted: list[str] = []
        hits: dict[str, int] = {}
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            if (self.async_ and r.placeholders > 0 and
                    r.computed + 2 - r.placeholders >= r.prompt_len + r.max_tokens):
                i += 1
                continue
            n = len(r.tokens) + r.placeholders - r.computed
            if 0 < t < n:
                n = t
            n = min(n, budget, self.mml - r.computed - 1)
            if n <= 0:
                i += 1
                continue
            ok = False
            while not (ok := self.allocate(r, n)):
                if self.priority:
                    victim = max(self.running, key=lambda q: (q.priority, q.arrival))
                    vi = self.running.index(victim)
                    del self.running[vi]
                    if vi < i:
                        i -= 1
                    if victim.id in sched:
                        budget += sched.pop(victim.id)
                else:
                    victim = self.running.pop()
                self.preempt(victim)
                preempted.append(victim.id)
                if victim is r:
                    break
            if not ok:
                if self.priority and r.status == "PREEMPTED":
                    continue
                break
            sched[r.id] = n
            budget -= n
            i += 1
        if not preempted:
            while budget > 0 and self.waiting:
                if len(self.running) >= self.max_active:
                    break
                r = self.peek()
                assert r.stale == 0, "stale output at admission: outside the documented scope"
                hit = self.lookup(r)
                h = len(hit) * self.bs
                n = len(r.tokens) - h
                if 0 < t < n:
                    n = t
                n = min(n, budget)
                if not self.allocate(r, n, hit):
                    break
                self.waiting.remove(r)
                self.running.append(r)
                r.status, r.computed = "RUNNING", h
                if h:
                    hits[r.id] = h
                sched[r.id] = n
                budget -= n
        # _update_after_schedule, and the mock model output (one token unless a partial chunk)
        batch = []
        for rid, n in sched.items():
            r = self.reqs[rid]
            r.computed += n
            r.in_flight += n
            r.prefill_chunk = r.computed < len(r.tokens) + r.placeholders
            token = None
            if not r.prefill_chunk:
                token = SAMPLED_BASE + r.index * PER_REQUEST_SPAN + r.samples
                r.samples += 1
                if self.async_:
                    r.placeholders += 1
            batch.append((rid, n, token))
        self.finished_ids = set()
        return {"scheduled": [[rid, n] for rid, n in sched.items()], "preempted": preempted,
                "prefix_hit_tokens": hits, "batch": batch}

    # ---- section 7: update_from_output -------------------------------------------------------
    def update(self, batch: list[tuple[str, int, int | None]]) -> list[str]:
        finished = []
        for rid, n, token in batch:
            r = self.reqs[rid]
            r.in_flight -= n
            stale = r.stale > 0
            if stale:
                r.stale -= n
            if r.status == "FINISHED" or token is None:
                continue
            had_placeholders = r.placeholders > 0
            before = r.status
            r.tokens.append(token)
            self.extend_keys(r)
            stopped = len(r.tokens) >= self.mml or r.outputs >= r.max_tokens
            if not stale and r.placeholders > 0:
                r.placeholders -= 1
            if not stale and before == "RUNNING" and had_placeholders:
                self.cache_blocks(r, r.computed - r.in_flight)
            if stopped:
                r.status = "FINISHED"
                self.free_request(r)
                if before == "RUNNING":
                    self.running.remove(r)
                else:
                    self.waiting.remove(r)
                self.finished_ids.add(rid)
                finished.append(rid)
        return finished

    # ---- section 2: the engine loop ----------------------------------------------------------
    def has_requests(self) -> bool:
        return bool(self.running or self.waiting or self.finished_ids)

    def iteration(self, k: int) -> dict[str, Any]:
        for idx, spec in enumerate(self.specs):
            if spec["arrival_step"] == k:
                r = Req(spec, idx, self.bs)
                self.extend_keys(r)
                self.reqs[r.id] = r
                self.waiting.append(r)
        rec: dict[str, Any] = {"step": k, "schedule_called": False, "scheduled": [],
                               "num_scheduled_tokens": 0, "preempted": [],
                               "prefix_hit_tokens": {}, "free_blocks_after_schedule": None,
                               "update_of": None, "finished": []}
        self.evicted = 0
        update = True
        if self.has_requests():
            out = self.schedule()
            batch = out.pop("batch")
            rec.update(out, schedule_called=True, free_blocks_after_schedule=len(self.free),
                       num_scheduled_tokens=sum(n for _, n in out["scheduled"]))
            self.batches.append((k, batch))
            if self.queue_size > 1 and len(self.batches) < self.queue_size and (
                    rec["num_scheduled_tokens"] > 0 or self.has_requests()):
                update = False
        elif not self.batches:
            update = False
        if update:
            s, batch = self.batches.pop(0)
            rec["update_of"], rec["finished"] = s, self.update(batch)
        rec["free_blocks"] = len(self.free)
        rec["evicted_blocks"] = self.evicted
        rec["num_running"], rec["num_waiting"] = len(self.running), len(self.waiting)
        return rec

    def run(self, num_steps: int) -> list[dict[str, Any]]:
        return [self.iteration(k) for k in range(num_steps)]


def first_difference(doc: dict[str, Any]) -> str | None:
    """Replay a golden's requests through the model; describe the first differing step field."""
    model = SpecModel(doc)
    for k, want in enumerate(doc["steps"]):
        got = model.iteration(k)
        for key in want:
            if got.get(key) != want[key]:
                return f"step {k} {key}: model {got.get(key)!r}, vLLM {want[key]!r}"
    if model.has_requests() or model.batches:
        return "the model has work left after the last recorded step"
    return None
