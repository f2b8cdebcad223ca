"""Command-line checks made before Hydra starts, so that a user's mistake is one line and
exit code 2 rather than Hydra's multi-line report (exit 1) or a failure deep inside a job."""
from __future__ import annotations

import re
import sys
from typing import Any

from simsched.errors import SimschedError

_MULTIRUN_FLAGS = {"-m", "--multirun"}
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


def _composable(override: str) -> bool:
    """Hydra's own settings are not composed here, except the search path (extra config dirs)."""
    key = override.lstrip("+~")
    return not key.startswith("hydra") or key.startswith("hydra.searchpath")


def _expand(overrides: list[str]) -> list[list[str]]:
    """For a multirun, the override lists that cover every value of every sweep at least once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed, sweeps = [], []
    for ov in parsed:
        if ov.is_hydra_override():
            if ov.get_key_element() == "hydra.searchpath":
                fixed.append(ov.input_line)
            continue
        if ov.is_sweep_override():
            key = ov.get_key_element()
            sweeps.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            fixed.append(ov.input_line)
    if not sweeps:
        return [fixed]
    combos = []
    for i, values in enumerate(sweeps):
        others = [s[0] for j, s in enumerate(sweeps) if j != i]
        combos += [fixed + others + [v] for v in values]
    return combos


def precheck(config_dir: str, argv: list[str]) -> None:
    """Compose (and build) the configs a command line asks for; exit 2 with one line on error."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in _MULTIRUN_FLAGS for f in flags):
        return  # --help, --cfg, --config-name ...: Hydra's own business
    overrides = [a for a in argv if not a.startswith("-")]
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = bool(flags)
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="precheck"):
        def compose_base(ovs: list[str]) -> Any:
            return compose(config_name="config", overrides=ovs)

        try:
            lists = _expand(overrides) if multirun else [[o for o in overrides if _composable(o)]]
        except HydraException as exc:
            _fail(" ".join(str(exc).split()))
        for ovs in lists:
            try:
                cfg = compose_base(ovs)
            except (HydraException, OmegaConfBaseException) as exc:
                _fail(one_line(exc, ovs, compose_base))
            try:
                from simsched.run import build_components

                build_components(cfg)
            except SimschedError as exc:
                _fail(str(exc))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


