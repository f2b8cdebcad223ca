"""Config composition with hydra.compose: every option of every group builds and runs."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simsched.config import register_configs
from simsched.errors import ConfigError
from simsched.registry import SLOTS
from simsched.run import build_components, simulate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["engine", "scheduler", "workload", "latency_model", "predictor", "gpus", "tracking", "router"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def cfg_with(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def needs_user_value(group: str, option: str) -> bool:
    """Options with a mandatory value (``???``: a trace path, a calibration grid) need the user's file."""
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    return any(OmegaConf.is_missing(node, k) for k in node.keys())


# Options that read another group's values (gpus=roofline takes its KV capacity from the roofline).
CONTINUOUS_ONLY = ("vllm", "sjf", "priority", "lpm")
COMPANIONS = {("gpus", "roofline"): ["latency_model=roofline"], ("gpus", "mixed"): ["engine=continuous"],
              **{("scheduler", s): ["engine=continuous"] for s in CONTINUOUS_ONLY},
              **{("router", r): ["engine=continuous"] for r in ("jsq", "least_tokens", "kv_aware", "bin_affine",
                                                               "prefix_affinity")}}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)
                                          if not needs_user_value(g, o)])
def test_every_option_composes_builds_and_runs(group, option):
    cfg = cfg_with(f"{group}={option}", *COMPANIONS.get((group, option), []), "workload.num_requests=300",
                   "tracking=none")
    comps = build_components(cfg)
    res, metrics, _ = simulate_config(cfg, comps)
    assert metrics["arrived"] == metrics["completed"] + metrics["rejected"] + metrics["unfinished"]
    assert metrics["completed"] > 0


def test_presets_compose_queue_policy_and_batcher():
    s = build_components(cfg_with("scheduler=static_fifo")).scheduler
    assert s.k_bins == 1 and s.batcher.batch_size == 8 and not s.batcher.full_batches_only
    m = build_components(cfg_with("scheduler=multi_bin_dynamic")).scheduler
    assert m.k_bins == 4 and m.bin_selection == "round_robin" and m.batcher.b_max == 128
    p = build_components(cfg_with("scheduler=multi_bin_static", "scheduler.k_bins=2")).scheduler
    assert p.k_bins == 2 and p.batcher.full_batches_only
    lat = build_components(cfg_with()).latency_model
    assert (lat.alpha_s, lat.beta_s, lat.gamma, lat.prefill_s_per_token) == (0.05965, 0.00574, 0.316, 0.0)


def test_k1_multi_bin_equals_dynamic_no_bins_through_configs():
    a = simulate_config(cfg_with("scheduler=dynamic_no_bins", "workload.num_requests=800", "tracking=none"))[1]
    b = simulate_config(cfg_with("scheduler=multi_bin_dynamic", "scheduler.k_bins=1",
                                 "workload.num_requests=800", "tracking=none"))[1]
    drop = {"sim_wall_s", "workload_wall_s", "sim_requests_per_s"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


@pytest.mark.parametrize("override,key", [
    ("workload.arrivals.rate=0", "workload.arrivals.rate"),
    ("scheduler.k_bins=0", "scheduler.k_bins"),
    ("scheduler=static_fifo scheduler.batcher.batch_size=0", "scheduler.batcher.batch_size"),
    ("scheduler.batcher.b_min=500", "scheduler.batcher.b_min"),
    ("latency_model.alpha_s=-1", "latency_model.alpha_s"),
    ("sla.latency_s=0", "sla.latency_s"),
    ("metrics.warmup_fraction=1.5", "metrics.warmup_fraction"),
    ("scheduler.bin_selection=random", "scheduler.bin_selection"),
])
def test_bad_values_name_their_key(override, key):
    cfg = cfg_with(*override.split())
    with pytest.raises(ConfigError) as info:
        build_components(cfg)
    assert str(info.value).startswith(key + ":")


SLOT_NODES = {   # a minimal valid node per slot, to put a foreign target in
    "scheduler": {"batcher": {"_target_": "simsched.batchers.FixedBatcher"}},
    "scheduler.batcher": {}, "workload": {}, "workload.arrivals": {}, "workload.prompt": {},
    "workload.output": {}, "latency_model": {}, "predictor": {}, "gpus": {}, "tracking": {},
}


FOREIGN = ["os.system", "simsched.run.run", "simsched.workloads.arrivals.Poisson", "simsched.tracking.NullTracker"]


@pytest.mark.parametrize("slot,target", [(s, t) for s in SLOT_NODES for t in FOREIGN
                                         if t not in SLOTS[s].builtins])   # a real component, elsewhere
def test_build_refuses_targets_outside_the_slot(slot, target):
    from simsched.config import build

    with pytest.raises(ConfigError, match=rf"^{slot}\._target_: not a component of this slot \(got '{target}'\); "
                                          rf"allowed: .*entry-point group '{SLOTS[slot].group}'"):
        build({"_target_": target, **SLOT_NODES[slot]}, slot)


def test_build_checks_nested_targets_and_keys_before_importing(tmp_path, monkeypatch):
    from simsched.config import build

    (tmp_path / "noisy_module.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    node = {"_target_": "simsched.scheduler.Scheduler", "batcher": {"_target_": "noisy_module.B"}}
    with pytest.raises(ConfigError, match=r"^scheduler\.batcher\._target_: not a component"):
        build(node, "scheduler")
    node = {"_target_": "simsched.batchers.FixedBatcher", "extra": {"_target_": "noisy_module.B"}}
    with pytest.raises(ConfigError, match=r"^scheduler\.batcher\.extra\._target_: no component may be built here"):
        build(node, "scheduler.batcher")
    with pytest.raises(ConfigError, match=r"^scheduler\.batcher\.bsize: no such key; allowed: batch_size, "
                                          r"full_batches_only$"):
        build({"_target_": "simsched.batchers.FixedBatcher", "bsize": 3}, "scheduler.batcher")
    with pytest.raises(ConfigError, match=r"^tracking\.urii: no such key; allowed: \(none\)$"):
        build({"_target_": "simsched.tracking.NullTracker", "urii": "x"}, "tracking")


@pytest.mark.parametrize("override,message", [
    ("+engine.horizon=10", "engine.horizon: no such key; allowed: name, horizon_s, release"),
    ("+sed=5", "sed: no such key"),
    ("+sla.latency=1", "sla.latency: no such key; allowed: latency_s, ttft_s, tbt_s"),
    ("+output.quite=true", "output.quite: no such key"),
    ("engine.horizon_s=nan", "engine.horizon_s: must be finite"),
    ("engine.horizon_s=-5", "engine.horizon_s: must be > 0"),
    ("seed=-1", "seed: must be >= 0"),
    ("workload.arrivals.cv=1e-200", "workload.arrivals.cv: must be in [1e-06, 100]"),
    ("workload.arrivals.cv=1e200", "workload.arrivals.cv: must be in [1e-06, 100]"),
    ("workload.num_requests=10000000000000", "workload.num_requests: needs about 2.5 PB of memory"),
    ("workload=onoff workload.arrivals.rate_on=1e-9 workload.arrivals.rate_off=0", "workload.arrivals: 5000 requests"),
    ("workload.arrivals.rate=1e-300", "workload.arrivals: 5000 requests at a mean rate of 1e-300"),
])
def test_every_key_and_value_is_checked_before_the_run(override, message):
    with pytest.raises(ConfigError) as info:
        build_components(cfg_with(*override.split(), "tracking=none"))
    assert str(info.value).startswith(message), str(info.value)


def test_memory_estimate_against_what_is_available():
    from simsched.workloads.requests import BYTES_PER_REQUEST, check_memory

    check_memory("num_requests", 1000, available=1000 * BYTES_PER_REQUEST)
    with pytest.raises(ConfigError, match=r"^num_requests: needs about 250 kB of memory \(250 B per request\), "
                                          r"more than this machine's 249 kB"):
        check_memory("num_requests", 1000, available=1000 * BYTES_PER_REQUEST - 1000)


def test_onoff_period_count_is_bounded():
    from simsched.workloads.arrivals import MAX_PERIODS, OnOff

    OnOff(rate_on=1.0, rate_off=0.0, mean_on_s=1.0, mean_off_s=1.0).check_count(MAX_PERIODS // 2)
    with pytest.raises(ConfigError, match="^rate_on: .* ON/OFF cycle need"):
        OnOff(rate_on=1.0, rate_off=0.0, mean_on_s=1.0, mean_off_s=1.0).check_count(MAX_PERIODS)


def test_hydra_instantiate_options_are_refused_not_passed_on():
    """Components are built from their keys only (config._instantiate); an ``_args_`` or
    ``_partial_`` that a **kwargs component would otherwise swallow is a one-line error."""
    from simsched.config import _instantiate
    from simsched.errors import ConfigError

    assert _instantiate({"_target_": "builtins.dict", "a": {"_target_": "builtins.dict", "b": 1}}, "x") == {"a": {"b": 1}}
    with pytest.raises(ConfigError, match=r"x\._partial_: is not supported"):
        _instantiate({"_target_": "builtins.dict", "_partial_": True}, "x")
