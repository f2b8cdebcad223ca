"""``python -m simsched [overrides]``: one run (or a ``--multirun`` sweep) configured by Hydra.

Named sweeps live in ``sweeps/`` (group ``sweep``): ``python -m simsched +sweep=compare``.

User errors (unknown option or key, a bad value) print one line and exit with code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def main(argv: list[str] | None = None) -> None:
    import hydra

    from simsched.cli import precheck
    from simsched.config import register_configs
    from simsched.sweep import register_sweeps, task

    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    register_sweeps()
    precheck(CONFIG_DIR, argv)
    sys.argv = [sys.argv[0]] + argv
    hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(task)()


if __name__ == "__main__":
    main()
