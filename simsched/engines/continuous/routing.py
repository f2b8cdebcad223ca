"""Routing arrivals across replicas (the ``router`` group, engine=continuous).

A router decides, at a request's arrival instant, which replica serves it. It sees only what
a real router in front of vLLM replicas sees at that instant: the request's prompt (and its
block hashes), a *predicted* output length (``predictor`` group; ``predictor=oracle`` makes the
prediction the truth, the upper bound), and each replica's state as of the arrival. The loop
routes an arrival only once every replica tick before it has run (at equal times arrivals
come first), and fast-forward never carries a replica past an arrival whose routing reads
what the jump would change (``route_bound``), so a router cannot see a later event.

What each policy reads (ties go to the lowest replica index):

- ``round_robin``: nothing; request k goes to replica k mod G (today's behaviour, exactly).
- ``jsq``: the replica's requests, waiting + running (``Sched.si`` WQ_LEN + RUN_LEN).
- ``least_tokens``: the tokens the router has sent to the replica and not yet seen finish,
  prompt + predicted output per request (``Sched.si[OUT_TOK]``), divided by the replica's
  relative speed (the only speed-weighted policy: a fleet with pools of different GPUs).
- ``kv_aware``: the replica's free KV blocks (the block pool's free count, which includes
  cached blocks that can be evicted, as vLLM's KV usage metric counts them); most wins.
- ``bin_affine``: the request's bin, from its predicted output and equal-mass boundaries of
  the predictions of earlier arrivals (recomputed every ``refresh`` arrivals; until the first
  ``refresh`` arrivals the whole fleet is one bin); bin k is served by its own contiguous
  replica subset (the multi-GPU reading of Multi-Bin), and within it by ``jsq``.
- ``prefix_affinity``: the longest prefix of the request's blocks cached in the replica's
  block pool (what llm-d's precise prefix-cache scorer learns from vLLM's KV events), among
  replicas whose requests are at most ``load_cap`` above the least loaded one; then ``jsq``.
  The load cap plays the part of llm-d's queue/load scorers (llm-d inference-scheduler,
  ``prefix-cache-scorer`` + ``queue-scorer``) and of SGLang router's ``balance_abs_threshold``.

The bin boundaries are computed here (``bin_bounds``), not shared with the scheduler's bins:
both read predictions of past arrivals only, and can be unified later.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from simsched.engines.continuous.block_hash import ROOT, block_key
from simsched.engines.continuous.block_pool import ht_get_first
from simsched.engines.continuous.state import FINISHED, N_FREE, OUT_TOK, PROMPT, REPLICA, ROUTED_TOK, RUN_LEN, STATUS, WQ_LEN
from simsched.errors import ConfigError, check_choice, check_positive
from simsched.jit import jitable

ROUTERS = ("round_robin", "jsq", "least_tokens", "kv_aware", "bin_affine", "prefix_affinity")
ROUND_ROBIN, JSQ, LEAST_TOKENS, KV_AWARE, BIN_AFFINE, PREFIX_AFFINITY = range(6)
# Rt.xi entries.
KIND, K_BINS, REFRESH, LOAD_CAP, SEEN, HIST_MAX, READY = range(7)
# Rt.bins columns: the largest prediction in bin k, its first replica, one past its last.
UPPER, LO, HI = range(3)

Rt = namedtuple("Rt", ["xi", "pred", "speed", "hist", "bins"])


@dataclass(frozen=True)
class Router:
    """A routing policy (see the module docstring). ``k_bins`` and ``refresh``: bin_affine's
    number of bins (at most the number of replicas) and how often (in arrivals) its
    boundaries are recomputed; ``load_cap``: prefix_affinity's tolerated excess of requests
    over the least loaded replica."""

    name: str = "round_robin"
    k_bins: int = 2
    refresh: int = 64
    load_cap: int = 32

    def __post_init__(self) -> None:
        check_choice("name", self.name, ROUTERS)
        check_positive("k_bins", self.k_bins, integer=True)
        check_positive("refresh", self.refresh, integer=True)
        check_positive("load_cap", self.load_cap, integer=True, allow_zero=True)

    @property
    def reads_state(self) -> bool:
        return self.name != "round_robin"

    @property
    def reads_pool(self) -> bool:
        """Reads the KV block pool, which a fast-forward jump changes ahead of time."""
        return self.name in ("kv_aware", "prefix_affinity")


ROUND_ROBIN_ROUTER = Router()


def new_router(router: Router, replicas: int, predicted: np.ndarray | None, speed: np.ndarray | None,
               max_model_len: int) -> Rt:
    """The router's arrays. ``predicted``: each request's predicted output length (needed by
    least_tokens and bin_affine); ``speed``: each replica's relative speed (fastest = 1)."""
    if router.name == "bin_affine" and router.k_bins > replicas:
        raise ConfigError("router.k_bins", f"must be at most the number of replicas ({replicas})",
                          router.k_bins)
    if router.name in ("least_tokens", "bin_affine") and predicted is None:
        raise ConfigError("router", f"'{router.name}' needs predicted output lengths (predictor group)")
    pred = np.zeros(0, dtype=np.int64) if predicted is None else \
        np.clip(np.asarray(predicted), 1, max_model_len).astype(np.int64)
    xi = np.zeros(7, dtype=np.int64)
    xi[KIND] = ROUTERS.index(router.name)
    xi[K_BINS] = router.k_bins
    xi[REFRESH] = router.refresh
    xi[LOAD_CAP] = router.load_cap
    xi[HIST_MAX] = max_model_len
    k = router.k_bins
    bins = np.zeros((k, 3), dtype=np.int64)
    for b in range(k):
        bins[b, LO] = b * replicas // k
        bins[b, HI] = (b + 1) * replicas // k
    bins[:, UPPER] = max_model_len
    sp = np.ones(replicas) if speed is None else np.asarray(speed, dtype=np.float64)
    hist = np.zeros(max_model_len + 1 if router.name == "bin_affine" else 1, dtype=np.int64)
    return Rt(xi=xi, pred=pred, speed=np.ascontiguousarray(sp), hist=hist, bins=bins)


@jitable(inline=True)
def fewest_requests(S, lo, hi):
    """The replica in [lo, hi) with the fewest requests (waiting + running), lowest index first."""
    g = lo
    best = S.si[lo, WQ_LEN] + S.si[lo, RUN_LEN]
    for h in range(lo + 1, hi):
        load = S.si[h, WQ_LEN] + S.si[h, RUN_LEN]
        if load < best:
            best = load
            g = h
    return g


@jitable
def bin_bounds(X):
    """Equal-mass boundaries of the predictions seen so far: bin k holds predictions up to
    the smallest value v with count(<= v) >= (k + 1)·N/K (the lower empirical quantile)."""
    k_bins = X.xi[K_BINS]
    total = X.xi[SEEN]
    cum = 0
    b = 0
    for v in range(len(X.hist)):
        cum += X.hist[v]
        while b < k_bins - 1 and cum * k_bins >= (b + 1) * total:
            X.bins[b, UPPER] = v
            b += 1
        if b == k_bins - 1:
            break
    X.bins[k_bins - 1, UPPER] = len(X.hist) - 1
    X.xi[READY] = 1


@jitable
def bin_affine(S, X, i):
    seen = X.xi[SEEN]
    if seen > 0 and seen % X.xi[REFRESH] == 0:
        bin_bounds(X)
    p = X.pred[i]
    if X.xi[READY] == 0:
        g = fewest_requests(S, 0, len(S.si))
    else:
        b = 0
        while b < X.xi[K_BINS] - 1 and p > X.bins[b, UPPER]:
            b += 1
        g = fewest_requests(S, X.bins[b, LO], X.bins[b, HI])
    X.hist[p] += 1                     # observed after the decision: past arrivals only
    X.xi[SEEN] = seen + 1
    return g


@jitable
def cached_prefix_blocks(P, Q, K, g, i):
    """How many leading blocks of request ``i``'s prompt are cached in replica ``g``'s pool
    (the lookup ``find_cache_hit`` makes, without touching the pool)."""
    if not P.caching or Q.hash_off[i + 1] == Q.hash_off[i]:
        return 0
    prompt = Q.qi[i, PROMPT]
    max_blocks = (prompt - 1) // P.block_size
    key = ROOT
    n = 0
    while n < max_blocks:
        nk = block_key(key, i, n, prompt, P.block_size, P.hash_block_tokens, Q.hash_off, Q.hash_val)
        if ht_get_first(K, g, nk) < 0:
            break
        key = nk
        n += 1
    return n


@jitable
def prefix_affinity(P, Q, S, K, X, i):
    G = len(S.si)
    h0 = fewest_requests(S, 0, G)
    least = S.si[h0, WQ_LEN] + S.si[h0, RUN_LEN]
    g = -1
    best_hit = -1
    best_load = 0
    for h in range(G):
        load = S.si[h, WQ_LEN] + S.si[h, RUN_LEN]
        if load > least + X.xi[LOAD_CAP]:
            continue
        hit = cached_prefix_blocks(P, Q, K, h, i)
        if hit > best_hit or (hit == best_hit and load < best_load):
            g = h
            best_hit = hit
            best_load = load
    return g


@jitable
def choose_replica(P, Q, S, K, X, i):
    """The replica request ``i`` goes to, from the state at its arrival (module docstring)."""
    kind = X.xi[KIND]
    if kind == ROUND_ROBIN:
        return Q.qi[i, REPLICA]
    G = len(S.si)
    if kind == JSQ:
        return fewest_requests(S, 0, G)
    if kind == LEAST_TOKENS:
        g = 0
        best = S.si[0, OUT_TOK] / X.speed[0]
        for h in range(1, G):
            v = S.si[h, OUT_TOK] / X.speed[h]
            if v < best:
                best = v
                g = h
        return g
    if kind == KV_AWARE:
        g = 0
        for h in range(1, G):
            if K.ki[h, N_FREE] > K.ki[g, N_FREE]:
                g = h
        return g
    if kind == BIN_AFFINE:
        return bin_affine(S, X, i)
    return prefix_affinity(P, Q, S, K, X, i)


def check_books(si: np.ndarray, ri: np.ndarray, replica: np.ndarray) -> None:
    """The least_tokens books balance after a run: each replica's outstanding tokens equal
    the routed tokens of its requests that did not finish (checked in every run)."""
    open_ = (ri[:, STATUS] != FINISHED) & (replica >= 0)
    expect = np.bincount(replica[open_], weights=ri[open_, ROUTED_TOK], minlength=len(si))
    if not np.array_equal(expect.astype(np.int64), si[:, OUT_TOK]):
        raise AssertionError("router books violated: outstanding tokens per replica differ from the "
                             "unfinished requests routed there")


@jitable(inline=True)
def routed_tokens(Q, X, i):
    """What least_tokens counts for request ``i`` while it is outstanding."""
    if len(X.pred) == 0:
        return Q.qi[i, PROMPT]
    return Q.qi[i, PROMPT] + X.pred[i]
