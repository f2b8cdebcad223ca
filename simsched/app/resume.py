"""``python -m simsched.resume SWEEP_DIR``: finish an interrupted sweep in its own folder.

The sweep is started again with the command line Hydra recorded in ``multirun.yaml`` (its
overrides, launcher and config folder), in the working directory it was started from, into the
same folder and under the same MLflow parent run. Jobs whose folder is complete (``done.json``
matches every file) are kept as they are (and logged to MLflow if they were not); the others,
failed, unfinished, damaged or never started, run again from a clean folder. The summary then
covers every job, and the parent run gets its final status.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from simsched.errors import ConfigError

_DROP = ("hydra.sweep.dir=", "hydra.callbacks.sweep.resume=")


def resume_command(sweep_dir: Path) -> tuple[list[str], Path]:
    """The ``python -m simsched`` arguments that resume the sweep, and the folder to run them in."""
    from omegaconf import OmegaConf

    from simsched.app.sweep import MARKER

    if not (sweep_dir / MARKER).is_file():
        raise ConfigError("sweep_dir", f"{sweep_dir} holds no sweep ({MARKER} is missing)")
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        raise ConfigError("sweep_dir", f"{sweep_dir} has no multirun.yaml: the sweep stopped before its first "
                                       "job; start it again")
    try:
        cfg = OmegaConf.load(saved)
        task = [str(o) for o in cfg.hydra.overrides.task]
        hydra = [str(o) for o in cfg.hydra.overrides.hydra if not str(o).startswith(_DROP)]
        sources = list(cfg.hydra.runtime.config_sources)
        config_name = str(cfg.hydra.job.config_name or "config")
        cwd = Path(str(cfg.hydra.runtime.cwd))
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line
        raise ConfigError("sweep_dir", f"{saved} is unreadable ({type(exc).__name__})") from None
    args = ["-m", *hydra, *task, f"hydra.sweep.dir={sweep_dir}", "hydra.callbacks.sweep.resume=true"]
    extra = [str(s.path) for s in sources if s.get("provider") == "command-line" and str(s.path).startswith("file://")]
    if extra:
        args = ["--config-dir", extra[0][len("file://"):], *args]
    if config_name != "config":
        args = ["--config-name", config_name, *args]
    return args, cwd if cwd.is_dir() else Path.cwd()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simsched.resume", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the folder of the interrupted sweep")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise ConfigError("sweep_dir", "no such folder", args.sweep_dir)
    command, cwd = resume_command(sweep_dir)
    print(f"resuming sweep {sweep_dir} in {cwd}: python -m simsched {' '.join(command)}", file=sys.stderr, flush=True)
    os.chdir(cwd)
    from simsched.app.main import main as simsched_main

    simsched_main(command)


def cli() -> None:
    """The command: one line and exit code 2 for a user's mistake."""
    from simsched.app.cli import run_command

    run_command(main)
