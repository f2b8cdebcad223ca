"""Where the config tree and the named sweeps are: the one place that knows.

``conf/`` and ``sweeps/`` at the top of the source tree are the source of truth; the build
ships them inside the package as ``simsched.conf`` and ``simsched.sweeps`` (pyproject
``package-dir``), so a wheel install and an editable install resolve them the same way, through
``importlib.resources``: to ``site-packages/simsched/conf`` or to the checkout's ``conf/``.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_dir() -> str:
    """Absolute path of the Hydra config tree (``conf/``)."""
    return str(Path(str(files("simsched.conf"))).resolve())


def sweeps_dir() -> Path:
    """Absolute path of the named sweeps (``sweeps/``)."""
    return Path(str(files("simsched.sweeps"))).resolve()
