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

A kernel may call helper functions marked ``@jitable``: plain Python functions that, when a
kernel that reaches them is compiled, are registered with numba (``register_jitable``) so the
compiled kernel calls their compiled form while Python callers keep the plain function.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

# Runs with at least this many requests use the compiled loop (when numba is installed).
MIN_COMPILED_REQUESTS = 2000


def jitable(fn: F) -> F:
    """Mark ``fn`` as a helper that compiled kernels may call (see the module docstring)."""
    fn.__dict__["_simsched_jitable"] = True
    return fn


def _register_helpers(fn: Callable) -> None:
    """Register with numba every ``@jitable`` function reachable from ``fn``'s globals."""
    from numba.extending import register_jitable

    todo = [fn]
    while todo:
        for value in list(todo.pop().__globals__.values()):
            if (callable(value) and getattr(value, "__dict__", {}).get("_simsched_jitable")
                    and not value.__dict__.get("_simsched_registered")):
                register_jitable(value)
                value.__dict__["_simsched_registered"] = True
                todo.append(value)


def compiled(fn: F) -> F:
    """The numba ``njit(cache=True)`` version of ``fn`` (compiled at its first call)."""
    cache = fn.__dict__.get("_simsched_compiled")
    if cache is None:
        import numba

        _register_helpers(fn)
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
