"""``python -m simsched [overrides]``: one run (or a ``--multirun`` sweep) configured by Hydra.

User errors (unknown option or key, a bad value) print one line and exit with code 2. A sweep
is checked before any job starts (every value of every swept key). A single run is not composed
twice: Hydra composes it, and only if that fails before the job starts is the command line
diagnosed again to turn Hydra's multi-line report into one line.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _task(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from simsched.errors import SimschedError
    from simsched.run import run

    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    return metrics.get("goodput_rps")


def main(argv: list[str] | None = None) -> None:
    import hydra

    from simsched.cli import precheck
    from simsched.config import register_configs

    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    if any(a in ("-m", "--multirun") for a in argv):
        precheck(CONFIG_DIR, argv)
    sys.argv = [sys.argv[0]] + argv
    real_stderr = sys.stderr
    held = io.StringIO()   # what Hydra writes to stderr before the job starts
    started = []

    def release() -> None:
        if sys.stderr is not real_stderr:
            sys.stderr = real_stderr
        real_stderr.write(held.getvalue())
        held.seek(0)
        held.truncate()

    def task(cfg) -> float | None:
        started.append(True)
        release()
        return _task(cfg)

    try:
        with contextlib.redirect_stderr(held):
            hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(task)()
    except SystemExit as exc:
        if not started and exc.code not in (0, None):
            sys.stderr = real_stderr
            precheck(CONFIG_DIR, argv)   # exits 2 with one line when it finds the mistake
        release()
        raise
    release()


if __name__ == "__main__":
    main()
