"""Closed forms the checks compare against (REFERENCE.md §2, §6).

Besides the papers' formulas (Pollaczek–Khinchine, Multi-Bin Theorem 4.2, Remark 4.3,
Lemma 5.1) this module computes the *exact* saturated throughput of K bins for any discrete
length distribution, cut points and ±1-bin error rate p_e [derived]: under overload every bin
always holds a full batch, round-robin serves the bins in turn, so each bin forms the same
number of batches and the mean batch time is the average over bins of E[T(B, max of B)] with
each bin's content distribution (its own lengths, plus neighbours moved in by p_e).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def pk_wait(lam: float, es: float, es2: float) -> float:
    """M/G/1 mean queueing delay W_q = λ E[S²] / (2(1 − ρ)), ρ = λ E[S] < 1."""
    rho = lam * es
    if rho >= 1:
        raise ValueError(f"P-K needs rho < 1 (got {rho})")
    return lam * es2 / (2.0 * (1.0 - rho))


def theorem42_service(k: float, B: int, l_min: float, l_max: float) -> float:
    """E[t_service,k] of Theorem 4.2 (k may be math.inf: Remark 4.3's limit)."""
    mean = (l_max + l_min) / 2.0
    bracket = B / (B + 1) * l_max + 1 / (B + 1) * l_min - mean
    return mean + bracket / k


def theorem42_throughput(k: float, B: int, l_min: float, l_max: float) -> float:
    """Throughput_k = B / E[t_service,k] (requests per time unit, one server)."""
    return B / theorem42_service(k, B, l_min, l_max)


def lemma51_latency(k: int, B: int, l_min: float, l_max: float, lam: float) -> float:
    """Lemma 5.1 (infinitely many servers): E[latency] = E[t_service,k] + (B − 1)k / (2λ)."""
    return theorem42_service(k, B, l_min, l_max) + (B - 1) * k / (2.0 * lam)


def expected_max_time(values: np.ndarray, probs: np.ndarray, B: int,
                      service: Callable[[np.ndarray], np.ndarray]) -> float:
    """E[service(max of B iid draws)] for a discrete distribution on sorted ``values``."""
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    cdf = np.minimum(np.cumsum(p), 1.0)
    pmax = np.diff(np.concatenate(([0.0], cdf ** B)))
    return float(np.sum(service(np.asarray(values, dtype=float)) * pmax))


def bin_contents(values: np.ndarray, probs: np.ndarray, cuts: np.ndarray, p_e: float = 0.0) -> list[np.ndarray]:
    """Per bin, the (unnormalised) probability of each value being in it, after the ±1-bin
    error of the Noisy predictor (a move past the first or last bin leaves the request)."""
    k = len(cuts) + 1
    base = np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(values, dtype=float), side="right")
    out = []
    for j in range(k):
        stay = 1.0 - 2.0 * p_e + p_e * ((j == 0) + (j == k - 1)) if k > 1 else 1.0
        w = np.where(base == j, stay, 0.0)
        if k > 1:
            w = w + np.where(base == j - 1, p_e, 0.0) + np.where(base == j + 1, p_e, 0.0)
        out.append(np.asarray(probs, dtype=float) * w)
    return out


def saturated_throughput(values: np.ndarray, probs: np.ndarray, cuts: np.ndarray, B: int,
                         service: Callable[[np.ndarray], np.ndarray], gpus: int = 1,
                         p_e: float = 0.0) -> float:
    """Exact service rate (requests/s) of G GPUs serving full batches of B from K bins in
    round-robin while every bin is backlogged [derived, see module docstring]."""
    times = [expected_max_time(values, w, B, service) for w in bin_contents(values, probs, cuts, p_e)
             if w.sum() > 0]
    return gpus * B / float(np.mean(times))


def equal_mass_cuts(values: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Interior cut points for k equal-mass bins of a discrete distribution on integers: the
    value x = F^-1(i/k) goes to the lower bin (cut at x + 0.5)."""
    cdf = np.cumsum(np.asarray(probs, dtype=float) / np.sum(probs))
    idx = np.searchsorted(cdf, np.arange(1, k) / k - 1e-12, side="left")
    return np.asarray(values, dtype=float)[idx] + 0.5
