"""Command-line checks made before Hydra starts, so that a user's mistake is one line and
exit code 2 rather than Hydra's multi-line report (exit 1) or a failure deep inside a job."""
from __future__ import annotations

import re
import sys
from typing import Any, Callable

from simsched.errors import SimschedError

_MULTIRUN_FLAGS = {"-m", "--multirun"}
# Launcher presets and what they need: the extra that installs them, and its modules.
_RAY = ("ray", ("hydra_plugins.hydra_ray_launcher", "ray"))
_SUBMITIT = ("slurm", ("hydra_plugins.hydra_submitit_launcher",))
LAUNCHER_EXTRAS = {
    "joblib": ("joblib", ("hydra_plugins.hydra_joblib_launcher",)),
    "ray_local": _RAY, "ray": _RAY, "ray_aws": _RAY,
    "slurm": _SUBMITIT, "submitit_slurm": _SUBMITIT, "submitit_local": _SUBMITIT,
}
# Hydra callbacks a config may name (Hydra instantiates them before any job).
HYDRA_CALLBACKS = ("simsched.app.sweep.SweepCallback", "hydra.experimental.callbacks.LogJobReturnCallback",
                   "hydra.experimental.callbacks.PickleJobInfoCallback")
_NOT_FOUND = re.compile(r"Could not find '([^']+)'")
_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_FULL_KEY = re.compile(r"full_key:\s*(\S+)")


def _options(text: str) -> list[str]:
    """The option names Hydra lists after 'Available options in ...' (not the search path)."""
    body = text.split("Available options", 1)[1].split("Config search path", 1)[0]
    return [line.strip() for line in body.splitlines() if line.startswith("\t")]


def one_line(exc: BaseException, overrides: list[str], compose_base) -> str:
    """Turn a Hydra/OmegaConf composition error into one line naming the key and what is allowed."""
    text = str(exc)
    cause = exc.__cause__
    found = _NOT_FOUND.search(text)
    if found and "Available options" in text:
        group, _, option = found.group(1).rpartition("/")
        return f"{group}={option}: unknown option; allowed: {', '.join(_options(text))}"
    ctext = str(cause) if cause is not None else text
    full = _FULL_KEY.search(ctext)
    key = full.group(1) if full else (_OVERRIDE.search(text).group(1) if _OVERRIDE.search(text) else "")
    first = ctext.strip().splitlines()[0] if ctext.strip() else text
    if key and ("not in" in first or "not in struct" in ctext):
        parent = key.rpartition(".")[0]
        rest = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        allowed = ""
        try:
            node = compose_base(rest)
            for part in filter(None, parent.split(".")):
                node = node[part]
            allowed = ", ".join(str(k) for k in node.keys())
        except Exception:  # noqa: BLE001 - best effort: the message stays useful without it
            pass
        return f"{key}: no such key" + (f"; allowed: {allowed}" if allowed else "")
    if key:
        return f"{key}: {first}"
    return " ".join(text.split())


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _first(overrides: list[str]) -> list[str]:
    """The overrides with each sweep replaced by its first value (Hydra's own included)."""
    out = []
    for ov in _parse(overrides):
        if ov.is_sweep_override():
            out.append(f"{ov.get_key_element()}={next(iter(ov.sweep_string_iterator()))}")
        else:
            out.append(ov.input_line)
    return out


def _expand(overrides: list[str], groups: set[str] | frozenset[str] = frozenset()
            ) -> tuple[list[list[str]], list[tuple[str, list[Any]]]]:
    """For a multirun, what covers every value of every sweep at least once: override lists to
    compose (one per value of a sweep over a config group, e.g. ``scheduler=a,b``), and the
    ``(key, typed values)`` of sweeps over plain values, checked on the first composition
    without composing again (a compose costs ~0.3 s; ``seed=range(0,200)`` would take a
    minute). A later override of a key replaces an earlier one, as in Hydra's basic sweeper."""
    by_key: dict[str, Any] = {}
    searchpath = []
    for ov in _parse(overrides):
        if ov.is_hydra_override():
            if ov.get_key_element() == "hydra.searchpath":   # extra config dirs must compose too
                searchpath.append(ov.input_line)
            continue
        key = ov.get_key_element()
        by_key.pop(key, None)
        by_key[key] = ov
    fixed, structural, values = list(searchpath), [], []
    for key, ov in by_key.items():
        if not ov.is_sweep_override():
            fixed.append(ov.input_line)
            continue
        strings = [f"{key}={v}" for v in ov.sweep_string_iterator()]
        bare = key.lstrip("+~")
        if bare != key or bare in groups or "/" in bare:
            structural.append(strings)
        else:
            fixed.append(strings[0])
            values.append((bare, list(ov.sweep_iterator())[1:]))
    combos = [fixed + [s[0] for s in structural]]
    for i, options in enumerate(structural):
        others = [s[0] for j, s in enumerate(structural) if j != i]
        combos += [fixed + others + [v] for v in options[1:]]
    return combos, values


def _check_value(cfg: Any, key: str, value: Any, overrides: list[str], compose_base) -> None:
    """Apply ``key=value`` to a composed config (changed in place) as Hydra would (struct: no
    new keys; typed by the schema) and build it; exit 2 with one line on error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as exc:
        _fail(one_line(exc, overrides + [f"{key}={value}"], compose_base))
    top = key.split(".")[0]
    try:
        from simsched.config import build, check_settings
        from simsched.run import build_components

        if top in _GROUPS:
            build(cfg[top], top)   # only what the key can change (a full build is ~50 ms)
        elif top in ("sla", "metrics"):
            build_components(cfg)
        else:
            check_settings(cfg)    # seed, engine.*, output.*: the cheap checks
    except SimschedError as exc:
        _fail(str(exc))


_GROUPS = ("engine", "scheduler", "workload", "latency_model", "predictor", "gpus", "tracking")


def precheck(config_dir: str, argv: list[str]) -> Any:
    """Compose (and build) the configs a command line asks for; exit 2 with one line on error.
    Returns the first job's config with its ``hydra`` node for a multirun (else None).

    A multirun is recognised by ``-m``/``--multirun`` or by ``hydra.mode: MULTIRUN`` in the
    composed config (the named sweeps in ``sweeps/``); its sweep is ``hydra.sweeper.params``
    from the config followed by the command line's sweeps, every value of which is checked."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in _MULTIRUN_FLAGS for f in flags):
        return  # --help, --cfg, --config-name ...: Hydra's own business
    overrides = [a for a in argv if not a.startswith("-")]
    import copy

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="precheck"):
        def compose_base(ovs: list[str]) -> Any:
            return compose(config_name="config", overrides=ovs)

        for o in overrides:
            if o.startswith("sweep="):
                _fail(f"{o}: a named sweep is selected with +{o} (the options are the files in sweeps/)")
        try:
            first = _first(overrides)
        except HydraException as exc:
            _fail(" ".join(str(exc).split()))
        try:
            head = compose(config_name="config", overrides=first, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as exc:
            _fail(one_line(exc, first, compose_base))
        from simsched.run import build_components

        multirun = bool(flags) or head.hydra.mode == RunMode.MULTIRUN
        if multirun:
            check_hydra_components(head.hydra)
        if not multirun:
            swept = [ov.input_line for ov in _parse(overrides) if ov.is_sweep_override()]
            if swept:
                _fail(f"{swept[0]}: several values make a sweep: add -m (--multirun)")
            try:
                build_components(head)
            except SimschedError as exc:
                _fail(str(exc))
            return
        params = head.hydra.sweeper.get("params") or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + overrides
        try:
            lists, values = _expand(overrides, set(head.hydra.runtime.choices.keys()))
        except HydraException as exc:
            _fail(" ".join(str(exc).split()))
        first_cfg = None
        for ovs in lists:
            try:
                cfg = compose_base(ovs)
            except (HydraException, OmegaConfBaseException) as exc:
                _fail(one_line(exc, ovs, compose_base))
            first_cfg = cfg if first_cfg is None else first_cfg
            try:
                build_components(cfg)
            except SimschedError as exc:
                _fail(str(exc))
        scratch = copy.deepcopy(first_cfg) if values else None   # shared by plain values (_scalar_swap)
        for key, options in values:
            reuse = _scalar_swap(first_cfg, key, options)
            for value in options:
                _check_value(scratch if reuse else copy.deepcopy(first_cfg), key, value, lists[0], compose_base)
            if reuse:
                OmegaConf.update(scratch, key, OmegaConf.select(first_cfg, key), merge=False)
        return head


def _scalar_swap(cfg: Any, key: str, options: list[Any]) -> bool:
    """Whether checking ``key``'s values can reuse one copy of the config: a plain value that
    replaces a plain value leaves nothing of the one before it (the copy costs ~8 ms; a sweep
    over ``seed=range(0,200)`` checks 200 values)."""
    from omegaconf import OmegaConf

    plain = (int, float, str, bool, type(None))
    return all(isinstance(v, plain) for v in options) and isinstance(
        OmegaConf.select(cfg, key, default=[]), plain)


def _installed(module: str) -> bool:
    """Whether a module can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_command_line(argv: list[str]) -> None:
    """Checks of the raw command line, before Hydra reads it (no composition, ~1 ms): a
    launcher preset whose extra is not installed is named with the ``pip install`` that adds
    it, and Hydra's own components cannot be replaced by a ``_target_`` (Hydra would import
    and call it before any simsched check); they are chosen by group, ``hydra/launcher=NAME``."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        key, _, value = arg.partition("=")
        bare = key.lstrip("+~")
        if bare == "hydra/launcher" and value in LAUNCHER_EXTRAS:
            extra, modules = LAUNCHER_EXTRAS[value]
            missing = [m for m in modules if not _installed(m)]
            if missing:
                _fail(f"hydra/launcher={value}: needs the '{extra}' extra ({missing[0]} is not installed); "
                      f"install it with: pip install 'simsched[{extra}]'")
        if bare.startswith("hydra.") and ("_target_" in bare or "_target_" in value):
            _fail(f"{bare}: Hydra's components cannot be set by _target_ here; choose a launcher or sweeper "
                  f"with hydra/launcher=NAME or hydra/sweeper=NAME")


def check_hydra_components(hydra_cfg: Any) -> None:
    """A composed multirun's launcher and sweeper must be installed Hydra plugins and its
    callbacks among ``HYDRA_CALLBACKS``: Hydra instantiates all three before any job."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    for name, kind in (("launcher", Launcher), ("sweeper", Sweeper)):
        target = (hydra_cfg.get(name) or {}).get("_target_")
        allowed = sorted(f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(kind))
        if target not in allowed:
            _fail(f"hydra.{name}._target_: not an installed Hydra {name} (got {target!r}); allowed: "
                  + ", ".join(allowed))
    for key, node in (hydra_cfg.get("callbacks") or {}).items():
        target = node.get("_target_") if node is not None else None
        if target not in HYDRA_CALLBACKS:
            _fail(f"hydra.callbacks.{key}._target_: not an allowed callback (got {target!r}); allowed: "
                  + ", ".join(HYDRA_CALLBACKS))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_command(main: Callable[[], Any]) -> None:
    """Run one of the ``python -m simsched.X`` commands: a user's mistake (a SimschedError) is
    one line on stderr and its exit code (2), never a traceback; otherwise the command exits
    with ``main``'s return value when it is an exit status (an int), else 0 (the results a
    command returns to Python callers)."""
    try:
        code = main()
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
