"""Hydra launch for the calibration entry points, with simsched's contract: a user's mistake
(unknown key, bad value, unusable grid) is one line on stderr and exit code 2, checked before
Hydra creates a run folder."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from simsched.app.paths import config_dir
from simsched.errors import SimschedError


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def precheck(config_name: str, argv: list[str], validate: Callable[[Any], None]) -> None:
    """Compose the config the command line asks for and validate it; one line and exit 2 on error."""
    if any(a.startswith("-") for a in argv):
        return  # --help, --cfg, --multirun ...: Hydra's own business
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from simsched.app.cli import one_line

    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="precheck"):
        def compose_base(ovs: list[str]) -> Any:
            return compose(config_name=config_name, overrides=ovs)

        try:
            cfg = compose_base(overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            _fail(one_line(exc, overrides, compose_base))
        try:
            validate(cfg)
        except SimschedError as exc:
            _fail(str(exc))


def launch(config_name: str, task: Callable[[Any, Path], None], validate: Callable[[Any], None],
           argv: list[str] | None = None) -> None:
    """Run ``task(cfg, run_dir)`` under Hydra with ``conf/<config_name>.yaml``."""
    import hydra

    from simsched.config import register_configs

    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    precheck(config_name, argv, validate)

    def job(cfg: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        try:
            task(cfg, Path(HydraConfig.get().runtime.output_dir))
        except SimschedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    sys.argv = [sys.argv[0]] + argv
    hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(job)()
