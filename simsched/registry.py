"""Which components a config may build: a closed set per slot, checked before anything is imported.

A config names a component by ``_target_`` (a dotted path), and Hydra would import and call
whatever it is given: ``workload.arrivals._target_=shutil.copyfile`` would copy files. So every
``_target_`` is checked against its *slot* (the config path it sits at, e.g. ``scheduler`` or
``workload.arrivals``) first: the built-in components of that slot, plus the components that
installed distributions register in the slot's entry-point group, e.g. in a ``pyproject.toml``::

    [project.entry-points."simsched.batchers"]
    pow2 = "pow2_batcher:PowerOfTwoBatcher"

Reading entry points reads package metadata only; nothing is imported until the target is
allowed. Installing a distribution is the user's decision to trust its code; a config is not.
"""
from __future__ import annotations

from dataclasses import dataclass

from simsched.errors import ConfigError

HOW_TO_REGISTER = "README 'Your own components'"

_LENGTHS = tuple(f"simsched.workloads.lengths.{c}" for c in
                 ("Fixed", "Uniform", "Lognormal", "Zipf", "Bimodal", "Empirical"))


@dataclass(frozen=True)
class Slot:
    """A place in the config where a component is built, its entry-point group and built-ins."""

    group: str
    builtins: tuple[str, ...]


SLOTS: dict[str, Slot] = {
    "engine": Slot("simsched.engines", ("simsched.engines.run_to_completion_options.RunToCompletionEngine",
                                        "simsched.engines.continuous.options.ContinuousEngine")),
    "scheduler": Slot("simsched.schedulers", ("simsched.scheduler.Scheduler", "simsched.scheduler.VllmScheduler",
                                                "simsched.scheduler.QueuePolicy")),
    "scheduler.batcher": Slot("simsched.batchers", ("simsched.batchers.FixedBatcher",
                                                    "simsched.batchers.DynamicBatcher")),
    "workload": Slot("simsched.workloads", ("simsched.workloads.synthetic.SyntheticWorkload",
                                            "simsched.workloads.traces.BurstGPTTrace",
                                            "simsched.workloads.traces.AzureTrace",
                                            "simsched.workloads.mooncake.MooncakeTrace")),
    "workload.arrivals": Slot("simsched.arrivals", tuple(f"simsched.workloads.arrivals.{c}" for c in
                                                         ("Poisson", "Gamma", "OnOff", "WindowedGamma"))),
    "workload.prompt": Slot("simsched.lengths", _LENGTHS),
    "workload.output": Slot("simsched.lengths", _LENGTHS),
    "latency_model": Slot("simsched.latency_models", ("simsched.latency.SeedForm", "simsched.latency.Affine",
                                                      "simsched.latency.StepTime",
                                                      "simsched.calibration.Calibrated",
                                                      "simsched.roofline.Roofline")),
    "predictor": Slot("simsched.predictors", ("simsched.predictor.Oracle", "simsched.predictor.Noisy")),
    "gpus": Slot("simsched.gpus", ("simsched.cluster.Gpus",)),
    "router": Slot("simsched.routers", ("simsched.engines.continuous.routing.Router",)),
    "tracking": Slot("simsched.trackers", ("simsched.tracking.MlflowTracker", "simsched.tracking.NullTracker")),
}

# Config-group options: the top-level slots (each a Hydra group with its own schema).
GROUPS = tuple(path for path in SLOTS if "." not in path)


def registered(group: str) -> tuple[str, ...]:
    """Dotted paths of the components installed distributions register in an entry-point group
    (``module:Class`` becomes ``module.Class``); metadata only, nothing is imported."""
    from importlib.metadata import entry_points

    return tuple(sorted({ep.value.replace(":", ".").replace(" ", "") for ep in entry_points(group=group)}))


def allowed_targets(path: str) -> tuple[str, ...]:
    """Every ``_target_`` the slot at ``path`` accepts (empty: no component may be built there)."""
    slot = SLOTS.get(path)
    if slot is None:
        return ()
    return slot.builtins + tuple(t for t in registered(slot.group) if t not in slot.builtins)


def check_target(path: str, target: object) -> str:
    """Return ``target`` if the slot at ``path`` may build it; else a ConfigError naming the
    allowed targets and how to register one. Nothing is imported."""
    slot = SLOTS.get(path)
    if slot is not None and isinstance(target, str) and target in slot.builtins:
        return target   # the common case reads no package metadata
    allowed = allowed_targets(path)
    if isinstance(target, str) and target in allowed:
        return target
    key = f"{path}._target_" if path else "_target_"
    if not allowed:
        raise ConfigError(key, "no component may be built here (only at: " + ", ".join(SLOTS) + ")", target)
    assert slot is not None
    raise ConfigError(key, "not a component of this slot", target,
                      ", ".join(allowed) + f"; to add your own, register it in the entry-point group "
                                           f"'{slot.group}' ({HOW_TO_REGISTER})")
