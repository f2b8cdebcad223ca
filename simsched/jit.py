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

``kernel(fn, n, nrt=False)`` compiles without numba's reference counting (NRT), for kernels
that never allocate an array and only index the arrays they are given: every array taken out
of a tuple or passed to a helper otherwise costs two atomic operations, which made the
continuous engine's loop 40 times slower.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import types
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable)

# Runs with at least this many requests use the compiled loop (when numba is installed).
MIN_COMPILED_REQUESTS = 2000


def jitable(fn: F | None = None, *, inline: bool = False) -> Any:
    """Mark ``fn`` as a helper that compiled kernels may call (see the module docstring);
    ``inline=True`` inlines it into its callers when compiled (small, hot helpers)."""
    def mark(f: F) -> F:
        f.__dict__["_simsched_jitable"] = "always" if inline else "never"
        return f

    return mark if fn is None else mark(fn)


def _register_helpers(fn: Callable, nrt: bool) -> set[str]:
    """Register with numba every ``@jitable`` function reachable from ``fn``'s globals; returns
    their source files."""
    from numba.extending import register_jitable

    files = {fn.__code__.co_filename}
    todo = [fn]
    while todo:
        for value in list(todo.pop().__globals__.values()):
            if callable(value) and getattr(value, "__dict__", {}).get("_simsched_jitable"):
                files.add(value.__code__.co_filename)
                if not value.__dict__.get("_simsched_registered"):
                    register_jitable(inline=value.__dict__["_simsched_jitable"], _nrt=nrt)(value)
                    value.__dict__["_simsched_registered"] = True
                    todo.append(value)
    return files


def _versioned(fn: Callable, files: set[str]) -> Callable:
    """``fn`` under a name that carries a digest of every source file the kernel compiles from.
    numba's cache checks only the entry function's own file; with the digest in the name, an
    edited helper gives a new cache entry instead of a stale kernel."""
    digest = hashlib.sha1()
    for path in sorted(files):
        with open(path, "rb") as fh:
            digest.update(fh.read())
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = f"{fn.__qualname__}_{digest.hexdigest()[:12]}"
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return clone


def compiled(fn: F, nrt: bool = True) -> F:
    """The numba ``njit(cache=True)`` version of ``fn`` (compiled at its first call)."""
    cache = fn.__dict__.get("_simsched_compiled")
    if cache is None:
        import numba

        files = _register_helpers(fn, nrt)
        cache = numba.njit(cache=True, nogil=True, _nrt=nrt)(_versioned(fn, files) if len(files) > 1 else fn)
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


def kernel(fn: F, n: int, nrt: bool = True) -> F:
    """``fn`` compiled when a run of ``n`` requests repays it, else ``fn`` itself
    (``nrt=False``: see the module docstring)."""
    return compiled(fn, nrt) if use_compiled(n) else fn


@contextlib.contextmanager
def quiet_compile():
    """Silence numba's pedantic ``NumbaIRAssumptionWarning`` ("variable ... is not in scope"),
    which its inliner emits for helpers with early returns; the compiled code is unaffected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is not in scope.*")
        yield
