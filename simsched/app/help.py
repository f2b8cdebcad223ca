"""``python -m simsched --help``: the application's help, through Hydra's help template.

``hydra.help.template`` in ``conf/config.yaml`` holds the text (examples, where outputs go) and
calls the resolver ``${simsched_groups:}`` for the config groups: one line saying what each is,
then its options, as Hydra's config loader sees them (so options on a user's search path show
up too), and never Hydra's internal ``schema/*`` groups.
"""
from __future__ import annotations

from pathlib import Path

# What each group is for, in one line; the order is the order of the help.
GROUPS = {
    "scheduler": "the batching policy: a queue policy (one FIFO or K bins) and a batcher",
    "workload": "arrivals and prompt/output lengths, synthetic or a trace (workload.path=FILE)",
    "latency_model": "the batch time T(b, L, P) of the serving engine",
    "predictor": "the output-length predictor the scheduler sees",
    "gpus": "GPU type and KV cache per GPU (gpus.count=G for the number)",
    "tracking": "where runs are logged: MLflow (tracking.uri=...) or none",
    "sweep": "named sweeps, selected with +sweep=NAME (a multirun)",
    "hydra/launcher": "where sweep jobs run (joblib, ray_local, slurm need their extra)",
}


def _defaults(config_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    out: dict[str, str] = {}
    for item in OmegaConf.load(config_dir / "config.yaml").get("defaults", []):
        if isinstance(item, str):
            continue
        for group, option in item.items():
            out[str(group)] = str(option)
    return out


def _options(group: str) -> list[str]:
    """The group's options as Hydra's config loader lists them (search path included)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():
        return []
    return sorted(hydra.config_loader().get_group_options(group))


def groups_text() -> str:
    """The groups section of the help: a line per group, its options below it."""
    from simsched.app.paths import config_dir

    defaults = _defaults(Path(config_dir()))
    lines = []
    for group, what in GROUPS.items():
        options = _options(group)
        if group == "hydra/launcher" and "basic" not in options:
            options = ["basic"] + options
        shown = [o + (" (default)" if defaults.get(group) == o else "") for o in options]
        lines.append(f"  {group:<15} {what}")
        lines.append(f"  {'':<15} {', '.join(shown) or '(none found)'}")
    return "\n".join(lines)


def register_help_resolver() -> None:
    """Make ``${simsched_groups:}`` available to the help template (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("simsched_groups", groups_text, replace=True)
