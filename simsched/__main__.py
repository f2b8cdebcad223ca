"""``python -m simsched [overrides]``: one run (or a ``--multirun`` sweep) configured by Hydra.

User errors (unknown option or key, a bad value) print one line and exit with code 2.
"""
from __future__ import annotations

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
    precheck(CONFIG_DIR, argv)
    sys.argv = [sys.argv[0]] + argv
    hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
