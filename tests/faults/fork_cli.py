"""Run a command's real entry point in a forked child, as ``python -m simsched`` would run it.

The test process imports the heavy modules once; each case forks, changes to its own folder,
sends stdout and stderr to files and calls the command's ``main``. An exception that escapes is
printed as a traceback with exit code 1, exactly as the interpreter would, so a case sees what
a user sees: the exit code and every line on stderr. A case that runs past its time limit is
killed and reported as a hang. ``hide`` makes modules unimportable in the child (a launcher's
extra that is not installed). ``test_config_faults.py`` checks this runner against real
``python -m simsched`` processes.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

def _simsched(argv: list[str]) -> None:
    from simsched.app.main import main

    main(argv)


def _report(argv: list[str]) -> None:
    from simsched.app.report import cli

    sys.argv = ["simsched.report", *argv]
    cli()


ENTRIES: dict[str, Callable[[list[str]], None]] = {"simsched": _simsched, "simsched.report": _report}


def warm_up() -> None:
    """Import what every case needs once, in the parent, so that each child starts warm."""
    import hydra.main  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from hydra.core.plugins import Plugins

    import simsched.app.cli  # noqa: F401
    import simsched.app.main  # noqa: F401
    import simsched.app.sweep  # noqa: F401
    import simsched.run  # noqa: F401

    Plugins.instance()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    hung: bool = False

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run(argv: list[str], cwd: Path, *, entry: str = "simsched", hide: tuple[str, ...] = (),
        timeout: float = 120.0) -> Result:
    """Run ``entry`` with ``argv`` in a forked child whose working directory is ``cwd``."""
    out, err = cwd / ".case.stdout", cwd / ".case.stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 1
        try:
            os.chdir(cwd)
            os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
            for name, fd in ((out, 1), (err, 2)):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            # pytest's capture objects stand in for sys.stdout/stderr: write to the real descriptors
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            for module in hide:
                sys.modules[module] = None  # type: ignore[assignment]  # "import X" now fails
            try:
                ENTRIES[entry](list(argv))
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - what the interpreter would print
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code, hung = os.waitstatus_to_exitcode(status), False
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code, hung = -9, True
            break
        time.sleep(0.02)
    return Result(code, out.read_text(errors="replace"), err.read_text(errors="replace"), hung)
