"""Compose a sweep's job configs once per *shape*, not once per job.

Hydra composes every job of a multirun from scratch, twice (the sweeper validates each job, then
the launcher composes it again): about 0.3 s each on this project's configs, most of a small
job's cost. Most jobs of a sweep differ only in plain values (``seed=3``,
``workload.arrivals.rate=8``), which do not change the defaults list. ``CachingConfigLoader``
wraps Hydra's config loader: the first job of each shape (the same overrides up to the values
of plain keys) is composed by Hydra itself; every other job is a copy of it with its values
applied by Hydra's own override code, which is exactly what a full composition would do after
building the same defaults tree. Group choices (``scheduler=...``), added or deleted keys
(``+k``, ``~k``), dict or list values and ``hydra.*`` overrides change the shape, so they are
always composed in full. ``tests/test_sweep_compose.py`` checks job by job that both paths give
identical configs.

Launchers receive the wrapped loader through the ``HydraContext`` the sweeper hands them
(``hydra_plugins/simsched_plugins``), so Hydra's basic launcher, the joblib launcher's
workers (the loader is pickled with the composed shapes) and Ray all use it.
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional

from hydra.core.config_loader import ConfigLoader
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.plugins.config_source import ConfigSource
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

_PLAIN = (int, float, bool, str, type(None))


class CachingConfigLoader(ConfigLoader):
    """A ConfigLoader that delegates everything to Hydra's, except that ``load_sweep_config``
    composes once per job shape and applies each job's plain values to a copy."""

    def __init__(self, inner: ConfigLoader) -> None:
        self.inner = inner
        self._shapes: dict[tuple, DictConfig] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._scratch: dict[tuple, DictConfig] = {}
        self._parsed: dict[tuple, tuple[list[Override], list[bool], tuple]] = {}
        self._lines: dict[str, tuple[Override, bool]] = {}

    # --- the cached path --------------------------------------------------------------------

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        parsed, plain, key = self._parse(master_config, sweep_overrides)
        shape = self._shapes.get(key)
        if shape is None:
            cfg = self.inner.load_sweep_config(master_config, list(sweep_overrides))
            self._shapes[key] = copy.deepcopy(cfg)
            return cfg
        cfg = copy.deepcopy(shape)
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        ConfigLoaderImpl._apply_overrides_to_config([o for o, p in zip(parsed, plain) if p], cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in task]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def validate(self, master_config: DictConfig, sweep_overrides: List[str]) -> None:
        """Raise as ``load_sweep_config`` would, without copying a config per job: a new shape is
        composed (and cached); a job of a known shape has its values applied to one scratch copy
        of that shape (a plain value's check does not depend on the value it replaces)."""
        parsed, plain, key = self._parse(master_config, sweep_overrides)
        if key not in self._shapes:
            self.load_sweep_config(master_config, sweep_overrides)
            return
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = copy.deepcopy(self._shapes[key])
        ConfigLoaderImpl._apply_overrides_to_config([o for o, p in zip(parsed, plain) if p], scratch)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_scratch": {}, "_parsed": {}, "_lines": {}}   # caches stay in this process

    def _parse(self, master_config: DictConfig, sweep_overrides: List[str]) -> tuple[list[Override], list[bool], tuple]:
        """The job's overrides parsed, which of them are plain values, and its shape. Hydra's
        parser costs ~0.5 ms a line and a job repeats most lines of the job before it (all but
        ``seed=3``, say), so each distinct line is parsed once; a job validated, then composed
        in this process, is looked up once."""
        hydra_lines = [str(o) for o in OmegaConf.to_container(master_config.hydra.overrides.hydra)]
        lines = tuple(hydra_lines + list(sweep_overrides))
        if lines in self._parsed:
            return self._parsed.pop(lines)
        parsed, plain = [], []
        for line in lines:
            hit = self._lines.get(line)
            if hit is None:
                override = OverridesParser.create().parse_overrides([line])[0]
                hit = (override, self._plain(override))
                if len(self._lines) < 100_000:
                    self._lines[line] = hit
            parsed.append(hit[0])
            plain.append(hit[1])
        key = tuple(("value", o.key_or_group) if p else ("shape", o.input_line) for o, p in zip(parsed, plain))
        if len(self._parsed) < 100_000:
            self._parsed[lines] = (parsed, plain, key)
        return parsed, plain, key

    def _plain(self, o: Override) -> bool:
        """A plain value override: ``a.b=1`` on an existing key, not a config group."""
        if o.is_hydra_override() or o.package is not None or o.is_sweep_override():
            return False
        if o.is_add() or o.is_force_add() or o.is_delete() or "/" in o.key_or_group:
            return False
        return isinstance(o.value(), _PLAIN) and not self._is_group(o.key_or_group)

    def _is_group(self, key: str) -> bool:
        parent, _, name = key.replace(".", "/").rpartition("/")
        if parent not in self._groups:
            self._groups[parent] = frozenset(self.inner.list_groups(parent))
        return name in self._groups[parent]

    # --- everything else: Hydra's loader ------------------------------------------------------

    def load_configuration(self, config_name: Optional[str], overrides: List[str], run_mode: RunMode,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> DictConfig:
        return self.inner.load_configuration(config_name, overrides, run_mode, from_shell=from_shell,
                                             validate_sweep_overrides=validate_sweep_overrides)

    def get_search_path(self) -> ConfigSearchPath:
        return self.inner.get_search_path()

    def get_sources(self) -> List[ConfigSource]:
        return self.inner.get_sources()

    def list_groups(self, parent_name: str) -> List[str]:
        return self.inner.list_groups(parent_name)

    def get_group_options(self, group_name: str, results_filter: Optional[ObjectType] = ObjectType.CONFIG,
                          config_name: Optional[str] = None, overrides: Optional[List[str]] = None) -> List[str]:
        return self.inner.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(self, config_name: Optional[str], overrides: List[str],
                              run_mode: RunMode) -> Any:
        return self.inner.compute_defaults_list(config_name, overrides, run_mode)


def caching_context(context: HydraContext) -> HydraContext:
    """The same context with the caching loader (idempotent)."""
    loader = context.config_loader
    if not isinstance(loader, CachingConfigLoader):
        loader = CachingConfigLoader(loader)
    return HydraContext(config_loader=loader, callbacks=context.callbacks)

