"""Content hashes of KV blocks (vLLM ``kv_cache_utils.hash_block_tokens`` / ``Request.block_hashes``).

vLLM hashes each full block of a request's tokens, chained to the hash of the block before it,
so two requests share a block's hash exactly when they share every token up to its end. The
simulator has no tokens; it has what a trace says about them. A workload may give each
request ``hash_ids`` (the Mooncake trace format): one id per ``hash_block_tokens`` prompt
tokens, equal ids meaning equal content. A block that lies inside the prompt and is covered
by hash ids hashes that content; every other block (a prompt without hash ids, a partial
prompt block, any block holding output tokens) hashes content unique to its request, because
sampled tokens of different requests are taken as different.

The chain is a polynomial hash in two independent lanes modulo primes below 2**31, kept in one
positive int64 key; all products stay below 2**63, so the Python and compiled paths compute
the same integers (no overflow, no warnings).
"""
from __future__ import annotations

from simsched.jit import jitable

P1, A1 = 2147483647, 1103515245
P2, A2 = 2147483629, 2654435761 % 2147483629
LANE = 1 << 31
ROOT = 1 * LANE + 1 + 1          # the key of the empty prefix (vLLM's NONE_HASH)
UNIQUE_SALT = 7919


@jitable(inline=True)
def mix(key: int, x: int) -> int:
    """The chained key after folding the value ``x`` (any int64) into ``key``."""
    k = key - 1
    h1 = k // LANE
    h2 = k - h1 * LANE
    x1 = x % P1
    x2 = x % P2
    h1 = (h1 * A1 + x1) % P1
    h2 = (h2 * A2 + x2) % P2
    return h1 * LANE + h2 + 1


@jitable(inline=True)
def block_key(parent: int, req: int, j: int, prompt: int, block_size: int, hb: int,
              hash_off, hash_val) -> int:
    """The hash of request ``req``'s block ``j`` (tokens ``j*bs .. (j+1)*bs-1``), chained to
    ``parent``, the hash of block ``j-1`` (``ROOT`` for ``j = 0``)."""
    lo = j * block_size
    hi = lo + block_size            # exclusive
    n_ids = hash_off[req + 1] - hash_off[req]
    if hb > 0 and hi <= prompt and (hi - 1) // hb < n_ids:
        key = parent
        k = lo // hb
        while k * hb < hi:
            key = mix(key, hash_val[hash_off[req] + k])
            start = lo if lo > k * hb else k * hb
            key = mix(key, start - k * hb)
            k += 1
        return key
    key = mix(parent, UNIQUE_SALT)
    key = mix(key, req)
    return mix(key, j)
