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
All allocation is all-or-nothing: a request is checked against the free count before any
block moves (STYLE point 7), as ``allocate_slots`` does.
"""
from __future__ import annotations

from simsched.engines.continuous.block_hash import ROOT, block_key
from simsched.jit import jitable


# --- FreeKVCacheBlockQueue ---------------------------------------------------------------

@jitable
def fq_head(K, g):
    return len(K.ref) + 2 * g


@jitable
def fq_remove(K, b):
    p = K.prv[b]
    n = K.nxt[b]
    K.nxt[p] = n
    K.prv[n] = p
    K.prv[b] = -1
    K.nxt[b] = -1


@jitable
def fq_popleft(K, g):
    head = len(K.ref) + 2 * g
    b = K.nxt[head]
    fq_remove(K, b)
    return b


@jitable
def fq_append(K, g, b):
    tail = len(K.ref) + 2 * g + 1
    last = K.prv[tail]
    K.nxt[last] = b
    K.prv[b] = last
    K.nxt[b] = tail
    K.prv[tail] = b


@jitable
def fq_insert_after(K, at, b):
    n = K.nxt[at]
    K.nxt[at] = b
    K.prv[b] = at
    K.nxt[b] = n
    K.prv[n] = b


# --- BlockHashToBlockMap --------------------------------------------------------------------

@jitable
def ht_slot(key, mask):
    return (key ^ (key >> 31)) & mask


@jitable
def ht_insert(K, g, key, b):
    off = K.ht_off[g]
    mask = K.ht_mask[g]
    i = ht_slot(key, mask)
    while K.ht_key[off + i] != 0:
        i = (i + 1) & mask
    K.ht_key[off + i] = key
    K.ht_val[off + i] = b


@jitable
def ht_get_first(K, g, key):
    """The earliest-inserted block cached under ``key``, or -1 (``get_one_block``)."""
    off = K.ht_off[g]
    mask = K.ht_mask[g]
    i = ht_slot(key, mask)
    while K.ht_key[off + i] != 0:
        if K.ht_key[off + i] == key:
            return K.ht_val[off + i]
        i = (i + 1) & mask
    return -1


@jitable
def ht_remove(K, g, key, b):
    """Drop the entry (key, b), then shift later entries of its probe run back."""
    off = K.ht_off[g]
    mask = K.ht_mask[g]
    i = ht_slot(key, mask)
    while not (K.ht_key[off + i] == key and K.ht_val[off + i] == b):
        i = (i + 1) & mask
    hole = i
    j = (i + 1) & mask
    while K.ht_key[off + j] != 0:
        home = ht_slot(K.ht_key[off + j], mask)
        # Move entry j into the hole unless its home lies cyclically in (hole, j].
        if (j > hole and (home <= hole or home > j)) or (j < hole and (home <= hole and home > j)):
            K.ht_key[off + hole] = K.ht_key[off + j]
            K.ht_val[off + hole] = K.ht_val[off + j]
            hole = j
        j = (j + 1) & mask
    K.ht_key[off + hole] = 0
    K.ht_val[off + hole] = 0


# --- BlockPool ------------------------------------------------------------------------------

@jitable
def get_new_blocks(K, g, row, n):
    """Pop ``n`` blocks from the head of the free queue onto ``row``'s table, evicting their
    cached hashes (``BlockPool.get_new_blocks``). The caller has checked ``n <= n_free``."""
    for _ in range(n):
        b = fq_popleft(K, g)
        if K.bhash[b] != 0:
            ht_remove(K, g, K.bhash[b], b)
            K.bhash[b] = 0
        K.ref[b] = 1
        K.tbl[row, K.row_n[row]] = b
        K.row_n[row] += 1
    K.n_free[g] -= n


@jitable
def touch(K, g, b):
    """A prefix-cache hit takes a reference; a free cached block leaves the free queue."""
    if K.ref[b] == 0:
        fq_remove(K, b)
        K.n_free[g] -= 1
    K.ref[b] += 1


@jitable
def free_row(K, g, row):
    """Release ``row``'s blocks, tail first (``KVCacheManager.free`` -> ``free_blocks``):
    blocks left unreferenced and uncached go to the front of the free queue in that order,
    cached ones to the back. The row returns to the replica's stack of free rows."""
    n_first = 0
    n_last = 0
    for j in range(K.row_n[row] - 1, -1, -1):
        b = K.tbl[row, j]
        K.ref[b] -= 1
        if K.ref[b] == 0:
            if K.bhash[b] == 0:
                K.tmp_a[n_first] = b
                n_first += 1
            else:
                K.tmp_b[n_last] = b
                n_last += 1
    at = fq_head(K, g)
    for i in range(n_first):
        fq_insert_after(K, at, K.tmp_a[i])
        at = K.tmp_a[i]
    for i in range(n_last):
        fq_append(K, g, K.tmp_b[i])
    K.n_free[g] += n_first + n_last
    K.row_n[row] = 0
    K.row_cached[row] = 0
    K.row_hash[row] = ROOT
    K.row_stack[g, K.row_top[g]] = row
    K.row_top[g] += 1


@jitable
def take_row(K, g):
    K.row_top[g] -= 1
    row = K.row_stack[g, K.row_top[g]]
    K.row_n[row] = 0
    K.row_cached[row] = 0
    K.row_hash[row] = ROOT
    return row


# --- prefix caching (FullAttentionManager / KVCacheManager) ---------------------------------

@jitable
def cache_blocks(P, Q, R, K, g, i, upto):
    """Cache request ``i``'s full blocks up to ``upto`` tokens, limited to its known tokens
    (``cache_blocks``: ``num_full_blocks = min(num_tokens, num_hashed_tokens) // block_size``)."""
    if not P.caching:
        return
    row = R.row[i]
    known = Q.prompt[i] + R.n_out[i]
    if upto > known:
        upto = known
    n_full = upto // P.block_size
    if n_full > K.row_n[row]:
        n_full = K.row_n[row]
    key = K.row_hash[row]
    for j in range(K.row_cached[row], n_full):
        key = block_key(key, i, j, Q.prompt[i], P.block_size, P.hash_block_tokens, Q.hash_off, Q.hash_val)
        b = K.tbl[row, j]
        K.bhash[b] = key
        ht_insert(K, g, key, b)
    if n_full > K.row_cached[row]:
        K.row_cached[row] = n_full
        K.row_hash[row] = key


@jitable
def find_cache_hit(P, Q, R, K, g, i):
    """Longest run of cached full blocks from the start of request ``i``'s tokens, at most
    ``num_tokens - 1`` tokens (the last token is always recomputed: ``get_computed_blocks``).
    The blocks go to ``K.hits``; returns (number of blocks, hash of the last one)."""
    if not P.caching:
        return 0, ROOT
    n_ids = Q.hash_off[i + 1] - Q.hash_off[i]
    if n_ids == 0 and R.n_preempt[i] == 0:
        return 0, ROOT   # unique content never cached yet: a lookup cannot hit
    max_blocks = (Q.prompt[i] + R.n_out[i] - 1) // P.block_size
    key = ROOT
    n = 0
    while n < max_blocks:
        nk = block_key(key, i, n, Q.prompt[i], P.block_size, P.hash_block_tokens, Q.hash_off, Q.hash_val)
        b = ht_get_first(K, g, nk)
        if b < 0:
            break
        K.hits[n] = b
        key = nk
        n += 1
    return n, key


@jitable
def cdiv(a, b):
    return -(-a // b)


@jitable
def allocate_running(P, Q, R, K, g, i, num_new):
    """``allocate_slots`` for a running request: enough blocks for ``computed + num_new``
    tokens, or False with nothing changed."""
    row = R.row[i]
    total = R.computed[i] + num_new
    if total > P.max_model_len:
        total = P.max_model_len
    need = cdiv(total, P.block_size) - K.row_n[row]
    if need < 0:
        need = 0
    if need > K.n_free[g]:
        return False
    get_new_blocks(K, g, row, need)
    cache_blocks(P, Q, R, K, g, i, R.computed[i] + num_new)
    return True


@jitable
def admit_blocks_needed(P, Q, R, K, g, i, n_hit, num_new, running_nonempty):
    """(blocks the full-sequence gate needs, blocks the first chunk needs), each with the
    watermark, for a waiting request with ``n_hit`` cached blocks in ``K.hits``
    (``get_num_blocks_to_allocate``: hit blocks that sit in the free queue count, since
    touching them takes them out of it)."""
    evictable = 0
    for k in range(n_hit):
        if K.ref[K.hits[k]] == 0:
            evictable += 1
    wm = P.watermark_blocks if running_nonempty else 0
    hit_tokens = n_hit * P.block_size
    full = Q.prompt[i] + R.n_out[i]
    if full > P.max_model_len:
        full = P.max_model_len
    gate_need = cdiv(full, P.block_size) - n_hit
    if gate_need < 0:
        gate_need = 0
    slots = hit_tokens + num_new
    if slots > P.max_model_len:
        slots = P.max_model_len
    need = cdiv(slots, P.block_size) - n_hit
    if need < 0:
        need = 0
    return gate_need + evictable + wm, need + evictable + wm


@jitable
def allocate_waiting(P, Q, R, K, g, i, n_hit, hit_key, num_new, running_nonempty):
    """``allocate_slots`` for a request leaving WAITING: the full-sequence gate (when on),
    then the first chunk; on success the hit blocks are touched, new blocks taken and full
    blocks cached. Returns False with nothing changed when short of blocks."""
    gate_need, need = admit_blocks_needed(P, Q, R, K, g, i, n_hit, num_new, running_nonempty)
    if P.gate and gate_need > K.n_free[g]:
        return False
    if need > K.n_free[g]:
        return False
    row = take_row(K, g)
    R.row[i] = row
    for k in range(n_hit):
        b = K.hits[k]
        touch(K, g, b)
        K.tbl[row, k] = b
    K.row_n[row] = n_hit
    K.row_cached[row] = n_hit
    K.row_hash[row] = hit_key
    hit_tokens = n_hit * P.block_size
    slots = hit_tokens + num_new
    if slots > P.max_model_len:
        slots = P.max_model_len
    extra = cdiv(slots, P.block_size) - n_hit
    if extra > 0:
        get_new_blocks(K, g, row, extra)
    cache_blocks(P, Q, R, K, g, i, hit_tokens + num_new)
    return True
