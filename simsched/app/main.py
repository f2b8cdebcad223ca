"""``python -m simsched [overrides]``: one run, or a sweep (``--multirun``, or a named sweep from
``sweeps/`` with ``+sweep=NAME``), configured by Hydra.

User errors (unknown option or key, a bad value) print one line and exit with code 2. A sweep
is checked before any job starts (every value of every swept key). A single run is composed
once: ``hydra.main`` composes a config twice (once only to learn whether it is a multirun), so a
plain single run (no flags, no sweep) goes straight to Hydra's run; only if that fails before
the job starts is the command line diagnosed again, to turn Hydra's multi-line report into one
line. Ctrl-C (or SIGTERM during a sweep) ends with one line and exit code 130.
"""
from __future__ import annotations

import contextlib
import io
import sys


def _is_sweep(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.lstrip("+").startswith("sweep=") or a.startswith("hydra.mode=")
               for a in argv)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _plain_run(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """``(--config-dir, overrides)`` when the command line is overrides and at most a
    ``--config-dir`` (a single run ``_single_run`` can start), else None."""
    config_dir, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv) and config_dir is None:
            config_dir, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config-dir=") and config_dir is None:
            config_dir = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            return None
        else:
            rest.append(arg)
        i += 1
    return config_dir, rest


def _single_run(conf: str, task, overrides: list[str], extra_dir: str | None = None) -> None:
    """``hydra.main``'s path for a plain run, minus its first composition (``Hydra.get_mode``,
    which composes the whole config only to read ``hydra.mode``: a run without ``-m``, a named
    sweep or ``hydra.mode`` is a single run). Hydra 1.3.8 is pinned: these are its own steps,
    ``--config-dir`` included."""
    import os

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, run_and_report
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import SearchPathException

    search_path = create_automatic_config_search_path(None, None, conf)

    def add_extra_dir() -> None:
        if extra_dir is not None:
            folder = os.path.abspath(extra_dir)
            if not os.path.isdir(folder):
                raise SearchPathException(f"Additional config directory '{folder}' not found")
            search_path.prepend(provider="command-line", path=f"file://{folder}",
                                anchor=SearchPathQuery(provider="schema"))

    run_and_report(add_extra_dir)
    hydra = run_and_report(lambda: Hydra.create_main_hydra2(task_name="simsched", config_search_path=search_path))
    try:
        run_and_report(lambda: hydra.run(config_name="config", task_function=task,
                                         overrides=list(overrides) + ["hydra.mode=RUN"]))
    finally:
        GlobalHydra.instance().clear()


def _main(argv: list[str] | None = None) -> None:
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
        from simsched.progress import Phase

        with Phase("checking every configuration of the sweep"):
            head = precheck(conf, argv)
        if head is not None:
            from simsched.app.launch import start_workers_early

            start_workers_early(head)
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

    plain = _plain_run(argv)
    try:
        with contextlib.redirect_stderr(held):
            if plain is not None:
                _single_run(conf, job, plain[1], plain[0])
            else:
                app(job)()
    except SystemExit as exc:
        if not started and exc.code not in (0, None):
            sys.stderr = real_stderr
            precheck(conf, argv)   # exits 2 with one line when it finds the mistake
        release()
        raise
    release()
