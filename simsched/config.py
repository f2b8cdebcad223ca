"""Hydra structured configs and the builder that turns a config node into a component.

Each config group option's YAML names a component with ``_target_`` and lists a schema in its
defaults; the schemas are generated from the components' own dataclasses, so a field's name and
type are written once. Types are checked by OmegaConf while composing; values by the
component's ``__post_init__``, whose ConfigError is re-raised here with the full dotted key.

Nothing in a config is imported or called before it is checked: every ``_target_`` against its
slot (``simsched.registry``), then every key against the fields of the component it configures,
so a misspelt key added with ``+`` is an error before the run, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from simsched.errors import ConfigError, SimschedError, check_positive
from simsched.registry import GROUPS, SLOTS, check_target

GROUP_COMPONENTS = {group: list(SLOTS[group].builtins) for group in GROUPS}


def _locate(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _omegaconf_type(hint: Any) -> Any:
    """Map a component's type hint to one OmegaConf 2.3 can check (else Any)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in (int, float, str, bool):
        return hint
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            mapped = _omegaconf_type(inner[0])
            return Optional[mapped] if mapped is not Any else Any
        return Any
    if origin is list and len(args) == 1:
        inner = _omegaconf_type(args[0])
        return List[inner] if inner is not Any else Any
    return Any


def schema_for(path: str) -> type:
    """A structured-config dataclass with ``_target_`` plus the component's fields and defaults."""
    cls = _locate(path)
    hints = typing.get_type_hints(cls)
    specs: list[tuple[str, Any, Any]] = [("_target_", str, field(default=path))]
    for f in dataclasses.fields(cls):
        typ = _omegaconf_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field(default_factory=f.default_factory)  # type: ignore[misc]
        else:
            # "???" is OmegaConf's mandatory-value marker (a dataclass MISSING cannot follow _target_).
            default = field(default=None) if typ is Any else field(default="???")
        specs.append((f.name, typ, default))
    return dataclasses.make_dataclass(cls.__name__ + "Config", specs)


@dataclass
class SlaConfig:
    latency_s: float = 20.0
    ttft_s: Optional[float] = None
    tbt_s: Optional[float] = None


@dataclass
class MetricsConfig:
    warmup_fraction: float = 0.1
    saturation_requests: int = 20000


@dataclass
class OutputConfig:
    requests_table: bool = True
    batches_table: bool = True
    plots: bool = True
    quiet: bool = False


@dataclass
class SimschedConfig:
    """Top-level schema: groups are ``Any`` here (their own schemas check them)."""

    scheduler: Any = None
    workload: Any = None
    latency_model: Any = None
    predictor: Any = None
    gpus: Any = None
    tracking: Any = None
    seed: int = 0
    sla: SlaConfig = field(default_factory=SlaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    engine: Any = None
    router: Any = None
    output: OutputConfig = field(default_factory=OutputConfig)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore, the ``simsched.roofline_kv`` resolver
    that ``gpus=roofline`` uses and ``simsched.per_gpu`` (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from simsched.roofline import kv_capacity_resolver

    if not OmegaConf.has_resolver("simsched.roofline_kv"):
        OmegaConf.register_new_resolver("simsched.roofline_kv", kv_capacity_resolver)
    if not OmegaConf.has_resolver("simsched.per_gpu"):
        OmegaConf.register_new_resolver("simsched.per_gpu", per_gpu_rate)
    cs = ConfigStore.instance()
    cs.store(name="simsched_schema", node=SimschedConfig)
    for group, paths in GROUP_COMPONENTS.items():
        for path in paths:
            cs.store(group=f"schema/{group}", name=path.rsplit(".", 1)[1], node=schema_for(path))


def per_gpu_rate(rate: float, *, _root_: Any) -> float:
    """``${simsched.per_gpu:15}``: 15 requests/s per GPU times ``gpus.count`` (``+sweep=routers``
    varies the fleet size at a fixed load per GPU)."""
    return float(rate) * int(_root_.gpus.count)


_FULL_KEY = re.compile(r"full_key:\s*(\S+)")
_SETTINGS = {"sla": SlaConfig, "metrics": MetricsConfig, "output": OutputConfig}


def check_settings(cfg: Any) -> None:
    """The parts of a run's config outside the component groups: no unknown key anywhere at the
    top or in ``sla``/``metrics``/``output`` (``+sed=5`` would otherwise be ignored),
    and a seed numpy accepts (an integer >= 0)."""
    known = [f.name for f in dataclasses.fields(SimschedConfig)]
    for key in cfg.keys():
        if key not in known and key != "hydra":
            raise ConfigError(str(key), "no such key", allowed=", ".join(known))
    for name, schema in _SETTINGS.items():
        node = cfg.get(name)
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in (node.keys() if node is not None else ()):
            if key not in fields:
                raise ConfigError(f"{name}.{key}", "no such key", allowed=", ".join(fields))
    check_positive("seed", cfg.seed, integer=True, allow_zero=True)


def _plain(node: Any, key: str) -> Any:
    """A config node as plain dicts and lists, interpolations resolved (mandatory ``???`` kept)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, SimschedError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:   # a resolver's own error (simsched.roofline_kv) names its key
            raise cause from None
        match = _FULL_KEY.search(str(exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(match.group(1) if match else key, first) from None


def check_targets(data: Any, path: str) -> None:
    """Every ``_target_`` in a plain config tree must be allowed at its path, and every slot
    (``SLOTS``) below it must hold a component; raises before anything is imported."""
    if isinstance(data, dict):
        if "_target_" in data:
            check_target(path, data["_target_"])
        elif path in SLOTS:
            raise ConfigError(f"{path}._target_", "is required (the component to build)")
        for key, value in data.items():
            sub = f"{path}.{key}"
            if sub in SLOTS and not isinstance(value, dict):
                raise ConfigError(sub, "must be a component (a mapping with _target_)", value)
            check_targets(value, sub)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_targets(value, f"{path}.{i}")


def parameters(cls: Any) -> list[str] | None:
    """The keyword arguments a component takes (None: it takes any, through ``**kwargs``)."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_keys(data: Any, path: str) -> None:
    """Every key of a component's node must be a parameter of its (already allowed) class."""
    if isinstance(data, dict) and "_target_" in data:
        allowed = parameters(_locate(data["_target_"]))
        for key, value in data.items():
            if key == "_target_":
                continue
            if allowed is not None and key not in allowed:
                raise ConfigError(f"{path}.{key}", "no such key", allowed=", ".join(allowed) or "(none)")
            check_keys(value, f"{path}.{key}")


def build(node: Any, key: str) -> Any:
    """Instantiate a config node, having checked its targets and keys; a component's
    ConfigError comes back with its dotted key.

    The node is built from its plain, resolved form (``_plain``) by ``_instantiate``: what
    ``hydra.utils.instantiate(node, _convert_="all")`` does for the only features simsched's
    configs use (nested ``_target_`` nodes, plain values), at ~1/50 of its cost, which a sweep
    pays for every group of every job."""
    data = _plain(node, key)
    check_targets(data, key)
    check_keys(data, key)
    return _instantiate(data, key)


def _instantiate(data: Any, path: str) -> Any:
    """Build ``data`` depth first: a mapping with ``_target_`` calls its class with its other
    entries as keyword arguments (built first); other mappings and lists keep their shape."""
    if isinstance(data, list):
        return [_instantiate(v, f"{path}.{i}") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        if data == "???":   # OmegaConf's mandatory value, left unset
            raise ConfigError(path, "is required (no value given)")
        return data
    special = [k for k in data if k != "_target_" and str(k).startswith("_") and str(k).endswith("_")]
    if special:   # Hydra's _partial_, _args_, _recursive_, _convert_: not used, so not mimicked
        raise ConfigError(f"{path}.{special[0]}", "is not supported (a component is built from its keys only)")
    kwargs = {k: _instantiate(v, f"{path}.{k}") for k, v in data.items() if k != "_target_"}
    if "_target_" not in data:
        return kwargs
    target = data["_target_"]
    try:
        return _locate(target)(**kwargs)
    except ConfigError as exc:
        raise exc.under(path) from None
    except SimschedError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of a constructor, as one line
        first = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(path, f"cannot build component {target}: {first}") from None
