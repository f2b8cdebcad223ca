"""``python -m simsched [overrides]``: one run, or a sweep (``--multirun``, or a named sweep from
``sweeps/`` with ``+sweep=NAME``), configured by Hydra.

User errors (unknown option or key, a bad value) print one line and exit with code 2. A sweep
is checked before any job starts (every value of every swept key). A single run is not composed
an extra time: Hydra composes it, and only if that fails before the job starts is the command
line diagnosed again, to turn Hydra's multi-line report into one line.
"""
from __future__ import annotations

import contextlib
import io
import sys


def _is_sweep(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.lstrip("+").startswith("sweep=") for a in argv)


def main(argv: list[str] | None = None) -> None:
    import hydra

    from simsched.app.cli import check_command_line, precheck
    from simsched.app.help import register_help_resolver
    from simsched.app.paths import config_dir
    from simsched.app.sweep import register_sweeps, task
    from simsched.config import register_configs

    argv = sys.argv[1:] if argv is None else argv
    check_command_line(argv)
    register_configs()
    register_sweeps()
    register_help_resolver()
    conf = config_dir()
    sys.argv = [sys.argv[0]] + argv
    app = hydra.main(config_path=conf, config_name="config", version_base="1.3")
    if _is_sweep(argv):
        precheck(conf, argv)
        app(task)()   # the task itself: launchers pickle it to send it to their workers
        return
    real_stderr = sys.stderr
    held = io.StringIO()   # what Hydra writes to stderr before the first job starts
    started: list[bool] = []

    def release() -> None:
        if sys.stderr is not real_stderr:
            sys.stderr = real_stderr
        real_stderr.write(held.getvalue())
        held.seek(0)
        held.truncate()

    def job(cfg) -> float | None:
        if not started:
            started.append(True)
            release()
        return task(cfg)

    try:
        with contextlib.redirect_stderr(held):
            app(job)()
    except SystemExit as exc:
        if not started and exc.code not in (0, None):
            sys.stderr = real_stderr
            precheck(conf, argv)   # exits 2 with one line when it finds the mistake
        release()
        raise
    release()
