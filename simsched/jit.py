"""Compiled inner loops, on demand.

The engines write their per-step and per-batch loops as plain Python functions over numpy
arrays and scalars (the subset numba compiles). ``kernel(fn, n)`` returns the numba-compiled
version when a run is large enough to repay it, and ``fn`` itself otherwise: the same source,
so a small run and a large one cannot disagree, and a 10-request run never pays the ~0.5 s
import of numba. Compiled code is cached on disk by numba (``cache=True``): in ``__pycache__``
beside the source, or under ``NUMBA_CACHE_DIR`` when that is set (a read-only install falls
back to numba's user cache folder), so only the first large run after an install compiles.

``SIMSCHED_JIT=0`` forces the Python path and ``SIMSCHED_JIT=1`` forces compilation, whatever
the size (tests use both to check that the two agree).
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

# Runs with at least this many requests use the compiled loop (when numba is installed).
MIN_COMPILED_REQUESTS = 2000


def compiled(fn: F) -> F:
    """The numba ``njit(cache=True)`` version of ``fn`` (compiled at its first call)."""
    cache = fn.__dict__.get("_simsched_compiled")
    if cache is None:
        import numba

        cache = numba.njit(cache=True, nogil=True)(fn)
        fn.__dict__["_simsched_compiled"] = cache
    return cache


def use_compiled(n: int) -> bool:
    """Whether a run of ``n`` requests should use the compiled loops."""
    forced = os.environ.get("SIMSCHED_JIT", "")
    if forced == "0":
        return False
    if forced == "1":
        return True
    if n < MIN_COMPILED_REQUESTS:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def kernel(fn: F, n: int) -> F:
    """``fn`` compiled when a run of ``n`` requests repays it, else ``fn`` itself."""
    return compiled(fn) if use_compiled(n) else fn
