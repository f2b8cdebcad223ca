"""The paged KV cache of one replica, with prefix caching (vLLM 0.33.0, one full-attention group).

Mirrors, function by function:

- ``FreeKVCacheBlockQueue`` (``kv_cache_utils.py``): a doubly linked list of free blocks with
  a head and a tail sentinel (``fq_*``). Blocks start in id order; ``popleft`` takes the least
  recently freed; freed blocks without a hash go to the front, cached ones to the back (LRU).
- ``BlockHashToBlockMap`` (``block_pool.py``): hash -> block, several blocks per hash allowed,
  the earliest inserted returned first (``ht_*``: open addressing, linear probing,
  backward-shift deletion, which keeps equal keys in insertion order).
- ``BlockPool.get_new_blocks`` / ``touch`` / ``free_blocks`` / ``cache_full_blocks`` and
  ``_maybe_evict_cached_block``.
- ``FullAttentionManager.find_longest_cache_hit`` / ``cache_blocks`` and
  ``KVCacheManager.get_computed_blocks`` / ``allocate_slots`` / ``free``.

Divergences (none changes a schedule in this engine's scope): one KV cache group; no sliding
window, Mamba, encoder, connector, EAGLE or speculative lookahead slots; no partial-block
(fine-grained) hits, since hash blocks equal scheduler blocks; no KV events or metrics.
Allocation is all-or-nothing: a request is checked against the free count before any block
moves (STYLE point 7), as ``allocate_slots`` does.
"""
from __future__ import annotations

from simsched.engines.continuous.block_hash import ROOT, block_key
from simsched.engines.continuous.state import (BHASH, INTAB, COMPUTED, HITS, HT_MASK, HT_OFF, MAX_TOKENS, N_FREE, N_OUT,
                                              N_PREEMPT, NBLK, NXT, PROMPT, PRV, R_EMPTY, R_KV, R_MAX_LEN, REF, ROW,
                                              ROW_CACHED, ROW_HASH, ROW_N, ROW_TOP, TMP_A, TMP_B)
from simsched.jit import jitable


@jitable(inline=True)
def cdiv(a, b):
    return -(-a // b)


# --- FreeKVCacheBlockQueue ---------------------------------------------------------------

@jitable(inline=True)
def fq_remove(kb, b):
    p = kb[b, PRV]
    n = kb[b, NXT]
    kb[p, NXT] = n
    kb[n, PRV] = p
    kb[b, PRV] = -1
    kb[b, NXT] = -1


@jitable(inline=True)
def fq_insert_after(kb, at, b):
    n = kb[at, NXT]
    kb[at, NXT] = b
    kb[b, PRV] = at
    kb[b, NXT] = n
    kb[n, PRV] = b


# --- BlockHashToBlockMap --------------------------------------------------------------------

@jitable(inline=True)
def ht_slot(key, mask):
    """Fibonacci hashing of the key's folded low 32 bits (no product reaches 2**63)."""
    k = (key ^ (key >> 29)) & 0xFFFFFFFF
    return ((k * 1640531527) >> 16) & mask


@jitable(inline=True)
def ht_insert(K, g, key, b):
    off = K.ki[g, HT_OFF]
    mask = K.ki[g, HT_MASK]
    i = ht_slot(key, mask)
    while K.ht[off + i, 0] != 0:
        i = (i + 1) & mask
    K.ht[off + i, 0] = key
    K.ht[off + i, 1] = b


@jitable(inline=True)
def ht_get_first(K, g, key):
    """The earliest-inserted block cached under ``key``, or -1 (``get_one_block``)."""
    off = K.ki[g, HT_OFF]
    mask = K.ki[g, HT_MASK]
    i = ht_slot(key, mask)
    while K.ht[off + i, 0] != 0:
        if K.ht[off + i, 0] == key:
            return K.ht[off + i, 1]
        i = (i + 1) & mask
    return -1


@jitable(inline=True)
def ht_remove(K, g, key, b):
    """Drop the entry (key, b), then shift later entries of its probe run back."""
    ht = K.ht
    off = K.ki[g, HT_OFF]
    mask = K.ki[g, HT_MASK]
    i = ht_slot(key, mask)
    while not (ht[off + i, 0] == key and ht[off + i, 1] == b):
        i = (i + 1) & mask
    hole = i
    j = (i + 1) & mask
    while ht[off + j, 0] != 0:
        home = ht_slot(ht[off + j, 0], mask)
        # Move entry j into the hole unless its home lies cyclically in (hole, j].
        if (j > hole and (home <= hole or home > j)) or (j < hole and (home <= hole and home > j)):
            ht[off + hole, 0] = ht[off + j, 0]
            ht[off + hole, 1] = ht[off + j, 1]
            hole = j
        j = (j + 1) & mask
    ht[off + hole, 0] = 0
    ht[off + hole, 1] = 0


# --- BlockPool ------------------------------------------------------------------------------

@jitable(inline=True)
def get_new_blocks(K, g, row, n):
    """Pop ``n`` blocks from the head of the free queue onto ``row``'s table, evicting their
    cached hashes (``BlockPool.get_new_blocks``). The caller has checked ``n <= free``."""
    kb = K.kb
    head = len(kb) - 2 * len(K.ki) + 2 * g
    for _ in range(n):
        b = kb[head, NXT]
        fq_remove(kb, b)
        if kb[b, BHASH] != 0:
            if kb[b, INTAB] != 0:
                ht_remove(K, g, kb[b, BHASH], b)
                kb[b, INTAB] = 0
            kb[b, BHASH] = 0
        kb[b, REF] = 1
        K.tbl[row, K.rows[row, ROW_N]] = b
        K.rows[row, ROW_N] += 1
    K.ki[g, N_FREE] -= n


@jitable
def free_row(K, g, row):
    """Release ``row``'s blocks, tail first (``KVCacheManager.free`` -> ``free_blocks``):
    blocks left unreferenced and uncached go to the front of the free queue in that order,
    cached ones to the back. The row returns to the replica's stack of free rows."""
    kb = K.kb
    n_first = 0
    n_last = 0
    for j in range(K.rows[row, ROW_N] - 1, -1, -1):
        b = K.tbl[row, j]
        kb[b, REF] -= 1
        if kb[b, REF] == 0:
            if kb[b, BHASH] == 0:
                K.scratch[TMP_A, n_first] = b
                n_first += 1
            else:
                K.scratch[TMP_B, n_last] = b
                n_last += 1
    at = len(kb) - 2 * len(K.ki) + 2 * g       # head sentinel
    for i in range(n_first):
        fq_insert_after(kb, at, K.scratch[TMP_A, i])
        at = K.scratch[TMP_A, i]
    tail = len(kb) - 2 * len(K.ki) + 2 * g + 1
    for i in range(n_last):
        fq_insert_after(kb, kb[tail, PRV], K.scratch[TMP_B, i])
    K.ki[g, N_FREE] += n_first + n_last
    K.rows[row, ROW_N] = 0
    K.rows[row, ROW_CACHED] = 0
    K.rows[row, ROW_HASH] = ROOT
    K.row_stack[g, K.ki[g, ROW_TOP]] = row
    K.ki[g, ROW_TOP] += 1


# --- prefix caching (FullAttentionManager / KVCacheManager) ---------------------------------

@jitable(inline=True)
def cache_blocks(P, Q, R, K, g, i, upto):
    """Cache request ``i``'s full blocks up to ``upto`` tokens, limited to its known tokens
    (``cache_blocks``: ``num_full_blocks = min(num_tokens, num_hashed_tokens) // block_size``).
    A block of content unique to the request gets its hash now but enters the map only if the
    request is preempted (``publish_own_blocks``)."""
    if P.caching:
        row = R.ri[i, ROW]
        first = K.rows[row, ROW_CACHED]
        if upto >= (first + 1) * P.block_size:      # cheap test before any division
            prompt = Q.qi[i, PROMPT]
            known = prompt + R.ri[i, N_OUT]
            if upto > known:
                upto = known
            n_full = upto // P.block_size
            if n_full > first:
                key = K.rows[row, ROW_HASH]
                for j in range(first, n_full):
                    key = block_key(key, i, j, prompt, P.block_size, P.hash_block_tokens, Q.hash_off, Q.hash_val)
                    b = K.tbl[row, j]
                    K.kb[b, BHASH] = key
                    if key > 0:         # shared content: other requests may hit it now
                        ht_insert(K, g, key, b)
                        K.kb[b, INTAB] = 1
                K.rows[row, ROW_CACHED] = n_full
                K.rows[row, ROW_HASH] = key


@jitable
def publish_own_blocks(K, g, row):
    """Put a preempted request's own (unique-content) block hashes into the prefix-cache map
    before its blocks are freed: only it can hit them, and only after a preemption, so they
    are entered then rather than when they fill (which saves a map insert and a removal per
    block of every request that is never preempted; the map's answers are the same)."""
    for j in range(K.rows[row, ROW_N]):
        b = K.tbl[row, j]
        if K.kb[b, BHASH] < 0 and K.kb[b, INTAB] == 0:
            ht_insert(K, g, K.kb[b, BHASH], b)
            K.kb[b, INTAB] = 1


@jitable
def find_cache_hit(P, Q, R, K, g, i):
    """Longest run of cached full blocks from the start of request ``i``'s tokens, at most
    ``num_tokens - 1`` tokens (the last token is always recomputed: ``get_computed_blocks``).
    The blocks go to ``K.scratch[HITS]``; returns (number of blocks, hash of the last one)."""
    if not P.caching:
        return 0, ROOT
    if Q.hash_off[i + 1] == Q.hash_off[i] and R.ri[i, N_PREEMPT] == 0:
        return 0, ROOT   # content unique to a request never admitted: nothing can hit
    prompt = Q.qi[i, PROMPT]
    max_blocks = (prompt + R.ri[i, N_OUT] - 1) // P.block_size
    key = ROOT
    n = 0
    while n < max_blocks:
        nk = block_key(key, i, n, prompt, P.block_size, P.hash_block_tokens, Q.hash_off, Q.hash_val)
        b = ht_get_first(K, g, nk)
        if b < 0:
            break
        K.scratch[HITS, n] = b
        key = nk
        n += 1
    return n, key


@jitable(inline=True)
def allocate_running(P, Q, R, K, g, i, num_new):
    """``allocate_slots`` for a running request: enough blocks for ``computed + num_new``
    tokens, or False with nothing changed."""
    row = R.ri[i, ROW]
    total = R.ri[i, COMPUTED] + num_new
    if total > P.max_model_len:
        total = P.max_model_len
    held = K.rows[row, ROW_N]
    if total > held * P.block_size:                   # cheap test before any division
        need = cdiv(total, P.block_size) - held
        if need > K.ki[g, N_FREE]:
            return False
        get_new_blocks(K, g, row, need)
    cache_blocks(P, Q, R, K, g, i, R.ri[i, COMPUTED] + num_new)
    return True


@jitable
def admit_blocks_needed(P, Q, R, K, g, i, n_hit, num_new, running_nonempty):
    """(blocks the full-sequence gate needs, blocks the first chunk needs), each with the
    watermark, for a waiting request with ``n_hit`` cached blocks in ``K.scratch[HITS]``
    (``get_num_blocks_to_allocate``: hit blocks that sit in the free queue count, since
    touching them takes them out of it)."""
    evictable = 0
    for k in range(n_hit):
        if K.kb[K.scratch[HITS, k], REF] == 0:
            evictable += 1
    wm = P.watermark_blocks if running_nonempty else 0
    full = Q.qi[i, PROMPT] + R.ri[i, N_OUT]
    if full > P.max_model_len:
        full = P.max_model_len
    gate_need = cdiv(full, P.block_size) - n_hit
    if gate_need < 0:
        gate_need = 0
    slots = n_hit * P.block_size + num_new
    if slots > P.max_model_len:
        slots = P.max_model_len
    need = cdiv(slots, P.block_size) - n_hit
    if need < 0:
        need = 0
    return gate_need + evictable + wm, need + evictable + wm


@jitable
def allocate_waiting(P, Q, R, K, g, i, n_hit, hit_key, num_new, running_nonempty):
    """``allocate_slots`` for a request leaving WAITING: the full-sequence gate (when on),
    then the first chunk; on success the hit blocks are touched (taken out of the free queue
    if free), new blocks taken and full blocks cached. Returns False with nothing changed
    when short of blocks."""
    gate_need, need = admit_blocks_needed(P, Q, R, K, g, i, n_hit, num_new, running_nonempty)
    free = K.ki[g, N_FREE]
    if (P.gate and gate_need > free) or need > free:
        return False
    K.ki[g, ROW_TOP] -= 1
    row = K.row_stack[g, K.ki[g, ROW_TOP]]
    R.ri[i, ROW] = row
    kb = K.kb
    for k in range(n_hit):
        b = K.scratch[HITS, k]
        if kb[b, REF] == 0:
            fq_remove(kb, b)
            K.ki[g, N_FREE] -= 1
        kb[b, REF] += 1
        K.tbl[row, k] = b
    K.rows[row, ROW_N] = n_hit
    K.rows[row, ROW_CACHED] = n_hit
    K.rows[row, ROW_HASH] = hit_key
    slots = n_hit * P.block_size + num_new
    if slots > P.max_model_len:
        slots = P.max_model_len
    extra = cdiv(slots, P.block_size) - n_hit
    if extra > 0:
        get_new_blocks(K, g, row, extra)
    cache_blocks(P, Q, R, K, g, i, n_hit * P.block_size + num_new)
    return True


@jitable(inline=True)
def never_fits(P, Q, K, g, i):
    """0, or why request ``i`` can never run on replica ``g``: an empty prompt or one of
    ``max_model_len`` tokens or more (vLLM's input validation rejects both), or a sequence
    the pool cannot hold (impossible when the pool holds ``max_model_len`` tokens, which
    ``ContinuousEngine.resolved`` requires, as vLLM does at start-up)."""
    prompt = Q.qi[i, PROMPT]
    if prompt < 1:
        return R_EMPTY
    if prompt >= P.max_model_len:
        return R_MAX_LEN
    out = Q.qi[i, MAX_TOKENS]
    if out > P.max_model_len - prompt:
        out = P.max_model_len - prompt
    if cdiv(prompt + out - 1, P.block_size) > K.ki[g, NBLK] - 1:   # the null block is not usable
        return R_KV
    return 0
