"""Compiled inner loops, on demand.

The engines write their per-step and per-batch loops as plain Python functions over numpy
arrays and scalars (the subset numba compiles). ``kernel(fn, n)`` returns the numba-compiled
version when a run is large enough to repay it, and ``fn`` itself otherwise: the same source,
so a small run and a large one cannot disagree, and a small run never pays the ~0.5 s import
of numba. With ``amortize=True`` the size is counted per process (a sweep's small jobs add up).

Helpers. A loop may call plain functions from other modules (Algorithm 1 in ``batchers``, the
bin choice in ``scheduler``, the latency forms in ``latency``, the continuous engine's block
pool and step formation) if they are marked ``@jitable``: Python callers keep the plain
function, and when a kernel that reaches them is compiled they are registered with numba
(``register_jitable``), so the compiled kernel calls their compiled form. ``@jitable(inline=True)``
inlines a small, hot helper into its callers. Import helpers by name (``from simsched.batchers
import batch_size``): the kernel finds them among its module's globals.

Cache. Compiled code is cached on disk by numba (``cache=True``): in ``__pycache__`` beside the
source, or under ``NUMBA_CACHE_DIR`` when that is set (a read-only install falls back to
numba's user cache folder), so only the first large run after an install compiles. numba
checks the freshness of a cached function against its own source file only, so the cache
entry is named by a fingerprint of the code of the loop, of every helper it reaches and of the
global constants they read: editing a helper in another file (or a mutation test rewriting
one) compiles afresh instead of loading stale machine code. Each such change leaves a few
files behind in ``__pycache__``; deleting them is always safe. Code without a source file
(exec'd, e.g. by a mutation harness) compiles uncached.

``SIMSCHED_JIT=0`` forces the Python path and ``SIMSCHED_JIT=1`` forces compilation, whatever
the size (tests use both to check that the two agree). Patching a helper at run time (e.g.
``monkeypatch``) reaches the Python path only.

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

# Runs with at least this many requests use the compiled loop (when numba is installed); an
# engine may pass the break-even of its own Python loop instead.
MIN_COMPILED_REQUESTS = 2000

_MARK = "_simsched_jitable"
_PYTHON_REQUESTS = "_simsched_python_requests"   # (amortize) requests run uncompiled in this process
_CONSTANTS = (bool, int, float, str, bytes, tuple, type(None))


def jitable(fn: F | None = None, *, inline: bool = False) -> Any:
    """Mark ``fn`` as a helper that compiled kernels may call (see the module docstring);
    ``inline=True`` inlines it into its callers when compiled (small, hot helpers)."""
    def mark(f: F) -> F:
        f.__dict__[_MARK] = "always" if inline else "never"
        return f

    return mark if fn is None else mark(fn)


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
    """The ``@jitable`` functions ``fn`` calls by global name."""
    glb = fn.__globals__
    return {name: glb[name] for name in sorted(_names(fn.__code__))
            if name in glb and callable(glb[name]) and _MARK in getattr(glb[name], "__dict__", {})}


def fingerprint(fn: Callable, _seen: frozenset = frozenset()) -> str:
    """A hash of what numba compiles for ``fn``: its code, the code of every helper it
    reaches, and the values of the global constants they read (numba freezes those)."""
    h = hashlib.sha1(repr((_code_key(fn.__code__), fn.__defaults__)).encode())
    glb = fn.__globals__
    seen = _seen | {id(fn)}
    for name in sorted(_names(fn.__code__)):
        obj = glb.get(name)
        if callable(obj) and _MARK in getattr(obj, "__dict__", {}):
            if id(obj) not in seen:
                h.update(f"{name}:{fingerprint(obj, seen)}".encode())
        elif isinstance(obj, _CONSTANTS):
            h.update(f"{name}={obj!r}".encode())
    return h.hexdigest()[:16]


def _register_helpers(fn: Callable, nrt: bool) -> None:
    """Register with numba every ``@jitable`` function ``fn`` reaches (once per function)."""
    from numba.extending import register_jitable

    todo, seen = [fn], {id(fn)}
    while todo:
        for helper in _helpers(todo.pop()).values():
            if id(helper) in seen:
                continue
            seen.add(id(helper))
            if not helper.__dict__.get("_simsched_registered"):
                register_jitable(inline=helper.__dict__[_MARK], _nrt=nrt)(helper)
                helper.__dict__["_simsched_registered"] = True
            todo.append(helper)


def _compiled_key(nrt: bool) -> str:
    """Where ``compiled`` keeps ``fn``'s compiled version, in ``fn.__dict__``."""
    return "_simsched_compiled" if nrt else "_simsched_compiled_nonrt"


def compiled(fn: F, nrt: bool = True) -> F:
    """The numba ``njit(cache=True)`` version of ``fn`` and of the helpers it calls (compiled
    at the first call, or loaded from the on-disk cache)."""
    key = _compiled_key(nrt)
    done = fn.__dict__.get(key)
    if done is None:
        import numba

        _register_helpers(fn, nrt)
        twin: Any = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        twin.__module__ = fn.__module__
        twin.__qualname__ = f"{fn.__qualname__}_{fingerprint(fn)}"   # names the cache entry
        twin.__doc__ = fn.__doc__
        done = numba.njit(cache=os.path.isfile(fn.__code__.co_filename), nogil=True, _nrt=nrt)(twin)
        fn.__dict__[key] = done
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


def kernel(fn: F, n: int, nrt: bool = True, min_requests: int = MIN_COMPILED_REQUESTS,
           amortize: bool = False) -> F:
    """``fn`` compiled when a run of ``n`` requests repays it, else ``fn`` itself
    (``nrt=False``: see the module docstring).

    ``amortize``: count the requests this process has already run through ``fn`` on the Python
    path, and use the compiled loop once they reach ``min_requests`` or once it is loaded. A
    sweep's process runs many small jobs: numba's fixed cost (~0.5 s to import it and load the
    loop from the cache) is then paid once and repaid by every later job."""
    if amortize:
        seen = fn.__dict__.get(_PYTHON_REQUESTS, 0)
        loaded = _compiled_key(nrt) in fn.__dict__
        if (loaded and os.environ.get("SIMSCHED_JIT", "") != "0") or use_compiled(seen + n, min_requests):
            return compiled(fn, nrt)
        fn.__dict__[_PYTHON_REQUESTS] = seen + n
        return fn
    return compiled(fn, nrt) if use_compiled(n, min_requests) else fn


def with_globals(fn: F, **names: Any) -> F:
    """``fn`` (uncompiled) with some of the global names it reads bound to other objects."""
    glb = dict(fn.__globals__)
    glb.update(names)
    return types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)


@contextlib.contextmanager
def quiet_compile():
    """Silence numba's pedantic ``NumbaIRAssumptionWarning`` ("variable ... is not in scope"),
    which its inliner emits for helpers with early returns; the compiled code is unaffected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is not in scope.*")
        yield
