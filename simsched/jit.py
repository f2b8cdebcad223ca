"""Compiled inner loops, on demand.

The engines write their per-step and per-batch loops as plain Python functions over numpy
arrays and scalars (the subset numba compiles). ``kernel(fn, n)`` returns the numba-compiled
version when a run is large enough to repay it, and ``fn`` itself otherwise: the same source,
so a small run and a large one cannot disagree, and a small run never pays the ~0.5 s import
of numba.

Helpers. A loop may call plain functions from other modules (Algorithm 1 in ``batchers``, the
bin choice in ``scheduler``, the latency forms in ``latency``) if they are marked
``@jittable``: the Python path calls them as they are, and ``compiled`` compiles them along
with the loop. Import them by name (``from simsched.batchers import batch_size``), since the
compiled loop sees the module's globals as they were when it was compiled.

Cache. Compiled code is cached on disk by numba (``cache=True``): in ``__pycache__`` beside the
source, or under ``NUMBA_CACHE_DIR`` when that is set (a read-only install falls back to
numba's user cache folder), so only the first large run after an install compiles. numba
checks the freshness of a cached function against its own source file only, so the cache
entry is named by a fingerprint of the code of the loop, of every helper it reaches and of the
global constants they read: editing a helper in another file (or a mutation test rewriting
one) compiles afresh instead of loading stale machine code. Each such change leaves a few
files behind in ``__pycache__``; deleting them is always safe.

``SIMSCHED_JIT=0`` forces the Python path and ``SIMSCHED_JIT=1`` forces compilation, whatever
the size (tests use both to check that the two agree). Patching a helper at run time (e.g.
``monkeypatch``) reaches the Python path only.
"""
from __future__ import annotations

import hashlib
import os
import types
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable)

# Runs with at least this many requests use the compiled loop (when numba is installed).
MIN_COMPILED_REQUESTS = 2000

_MARK = "_simsched_jittable"
_COMPILED = "_simsched_compiled"
_CONSTANTS = (bool, int, float, str, bytes, tuple, type(None))


def jittable(fn: F) -> F:
    """Mark a plain function as callable from compiled loops; it stays a plain function."""
    setattr(fn, _MARK, True)
    return fn


def _names(code: types.CodeType) -> set[str]:
    """Every global (or attribute) name a code object and its nested code objects use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _code_key(code: types.CodeType) -> tuple:
    consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_argcount)


def _helpers(fn: Callable) -> dict[str, Callable]:
    """The ``@jittable`` functions ``fn`` calls by global name."""
    glb = fn.__globals__
    return {name: glb[name] for name in sorted(_names(fn.__code__))
            if name in glb and getattr(glb[name], _MARK, False)}


def fingerprint(fn: Callable) -> str:
    """A hash of what numba compiles for ``fn``: its code, the code of every helper it
    reaches, and the values of the global constants they read (numba freezes those)."""
    h = hashlib.sha1(repr((_code_key(fn.__code__), fn.__defaults__)).encode())
    glb = fn.__globals__
    for name in sorted(_names(fn.__code__)):
        obj = glb.get(name)
        if getattr(obj, _MARK, False) and obj is not fn:
            h.update(f"{name}:{fingerprint(obj)}".encode())
        elif isinstance(obj, _CONSTANTS):
            h.update(f"{name}={obj!r}".encode())
    return h.hexdigest()[:16]


def compiled(fn: F) -> F:
    """The numba ``njit(cache=True)`` version of ``fn`` and of the helpers it calls (compiled
    at the first call, or loaded from the on-disk cache)."""
    done = fn.__dict__.get(_COMPILED)
    if done is None:
        import numba

        glb = dict(fn.__globals__)
        glb.update({name: compiled(helper) for name, helper in _helpers(fn).items()})
        twin: Any = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
        twin.__module__ = fn.__module__
        twin.__qualname__ = f"{fn.__qualname__}_{fingerprint(fn)}"   # names the cache entry
        # Code without a source file (exec'd, e.g. by a mutation harness) compiles uncached.
        done = numba.njit(cache=os.path.isfile(fn.__code__.co_filename), nogil=True)(twin)
        fn.__dict__[_COMPILED] = done
    return done


def use_compiled(n: int, min_requests: int = MIN_COMPILED_REQUESTS) -> bool:
    """Whether a run of ``n`` requests should use the compiled loops: from ``min_requests`` on
    (an engine passes the break-even of its own Python loop against numba's fixed cost)."""
    forced = os.environ.get("SIMSCHED_JIT", "")
    if forced == "0":
        return False
    if forced == "1":
        return True
    if n < min_requests:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def kernel(fn: F, n: int, min_requests: int = MIN_COMPILED_REQUESTS) -> F:
    """``fn`` compiled when a run of ``n`` requests repays it, else ``fn`` itself."""
    return compiled(fn) if use_compiled(n, min_requests) else fn


def with_globals(fn: F, **names: Any) -> F:
    """``fn`` (uncompiled) with some of the global names it reads bound to other objects."""
    glb = dict(fn.__globals__)
    glb.update(names)
    return types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
