"""One simulation run from a composed config: build, simulate, measure, write, then track.

Plain Python over an OmegaConf node; the Hydra entry point (``__main__``) only supplies the
config and the output folder, so notebooks and tests call ``run`` directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from simsched.config import build
from simsched.engines.continuous import ContinuousEngine, simulate_continuous
from simsched.engines.continuous.routing import ROUND_ROBIN_ROUTER
from simsched.engines.continuous.simulate import prepare as prepare_continuous
from simsched.engines.run_to_completion import SimResult, simulate
from simsched.errors import ConfigError
from simsched.metrics import Sla, Window, compute_metrics
from simsched.outputs import (format_table, plot_latency_cdf, write_metrics, write_serving_tables,
                              write_tables)
from simsched.scheduler import VllmScheduler
from simsched.serving_metrics import compute_serving_metrics, format_serving_table
from simsched.workloads.summary import format_summary, summarize


@dataclass
class Components:
    engine: Any
    scheduler: Any
    workload: Any
    latency_model: Any
    predictor: Any
    gpus: Any
    router: Any
    sla: Sla
    window: Window


def build_components(cfg: DictConfig) -> Components:
    """Instantiate every group; a bad value, or groups that do not go together (a scheduler
    or latency model the engine cannot run), raises ConfigError naming its dotted key."""
    parts = {g: build(cfg[g], g) for g in ("engine", "scheduler", "workload", "latency_model", "predictor", "gpus")}
    parts["router"] = build(cfg.router, "router") if cfg.get("router") is not None else ROUND_ROBIN_ROUTER
    try:
        sla = Sla(**OmegaConf.to_container(cfg.sla))
    except ConfigError as exc:
        raise exc.under("sla") from None
    try:
        window = Window(**OmegaConf.to_container(cfg.metrics))
    except ConfigError as exc:
        raise exc.under("metrics") from None
    comps = Components(sla=sla, window=window, **parts)
    if is_continuous(comps):
        prepare_continuous(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
        check_router(comps.router, comps.gpus)
    elif getattr(comps.gpus, "pools", None):
        raise ConfigError("gpus.pools", "heterogeneous pools run on engine=continuous only")
    elif comps.router.name != "round_robin":
        raise ConfigError("router", "routes arrivals on engine=continuous only (run_to_completion dispatches "
                          "each batch to the first free GPU)", comps.router.name, allowed="round_robin")
    elif isinstance(comps.scheduler, VllmScheduler):
        raise ConfigError("scheduler", "vllm is vLLM's own scheduler and runs only on engine=continuous",
                          "vllm", allowed="static_fifo, dynamic_no_bins, multi_bin_dynamic, multi_bin_static")
    return comps


def check_router(router: Any, gpus: Any) -> None:
    """A router's settings against the fleet (one-line errors naming the key)."""
    if router.name == "bin_affine" and router.k_bins > gpus.count:
        raise ConfigError("router.k_bins", f"must be at most the number of replicas (gpus.count = {gpus.count})",
                          router.k_bins)


def is_continuous(comps: Components) -> bool:
    return isinstance(comps.engine, ContinuousEngine)


def simulate_config(cfg: DictConfig, comps: Components | None = None) -> tuple[Any, dict[str, Any], Components]:
    """Build and run the simulation of a config; returns the result (a run-to-completion
    ``SimResult`` or a ``ContinuousResult``), its metrics and components."""
    comps = comps or build_components(cfg)
    root = np.random.SeedSequence(int(cfg.seed))
    workload_ss, sim_ss = root.spawn(2)
    wl_seed = getattr(comps.workload, "seed", None)
    wl_rng = np.random.default_rng(wl_seed if wl_seed is not None else workload_ss)
    t0 = time.perf_counter()
    requests = comps.workload.generate(wl_rng)
    t1 = time.perf_counter()
    if is_continuous(comps):
        step, hardware, cap = prepare_continuous(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
        predicted = None
        if comps.router.name in ("least_tokens", "bin_affine"):
            predicted = comps.predictor.predict(requests.output, np.random.default_rng(sim_ss))
        res, _ = simulate_continuous(requests, comps.engine, step, hardware, cap, router=comps.router,
                                     predicted=predicted)
        t2 = time.perf_counter()
        metrics = compute_serving_metrics(res, comps.sla, comps.window)
    else:
        res = simulate(requests, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                       np.random.default_rng(sim_ss), horizon_s=comps.engine.horizon_s,
                       release=comps.engine.release)
        t2 = time.perf_counter()
        metrics = compute_metrics(res, comps.sla, comps.window, comps.latency_model,
                                  comps.scheduler.batcher.max_batch)
    metrics["workload_wall_s"] = t1 - t0
    metrics["sim_wall_s"] = t2 - t1
    metrics["sim_requests_per_s"] = len(requests) / (t2 - t1) if t2 > t1 else float("nan")
    metrics.update(summarize(requests))
    return res, metrics, comps


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (MLflow params)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that make runs easy to compare in the MLflow UI."""
    from simsched.workloads.rates import arrival_rate
    from simsched.tracking import git_commit

    rate = arrival_rate(cfg)
    return {
        "engine": str(cfg.engine.get("name", "")),
        "scheduler": str(cfg.scheduler.get("name", "")),
        "k_bins": str(cfg.scheduler.get("k_bins", 1)),
        "workload": str(cfg.workload.get("name", "")),
        "lambda": "" if rate != rate else f"{rate:g}",
        "gpus": str(cfg.gpus.get("count", "")),
        "router": str(cfg.router.get("name", "")) if cfg.get("router") is not None else "",
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
    }


def run(cfg: DictConfig, out_dir: Path, *, tags: dict[str, str] | None = None,
        parent_run_id: str | None = None) -> dict[str, Any]:
    """Run one simulation and write its folder; tracking comes last and cannot lose results.
    ``tags`` are added to the run's tags; ``parent_run_id`` nests it under a sweep's run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    res, metrics, comps = simulate_config(cfg)
    write_metrics(out_dir / "metrics.json", metrics)
    files = [out_dir / "metrics.json"]
    continuous = is_continuous(comps)
    if continuous:
        files += write_serving_tables(out_dir, res, cfg.output.requests_table)
    else:
        files += write_tables(out_dir, res, cfg.output.requests_table, cfg.output.batches_table)
    if cfg.output.plots:
        files.append(plot_latency_cdf(out_dir / "latency_cdf.png", res, str(cfg.scheduler.get("name", ""))))
    if not cfg.output.quiet:
        label = (f"{cfg.engine.get('name', '')}/{cfg.scheduler.get('name', '')} on {comps.gpus.count} GPU(s), "
                 f"workload {cfg.workload.get('name', '')}")
        print(format_summary(metrics))
        print(format_serving_table(metrics, label) if continuous else format_table(metrics, label))
        print(f"  outputs in {out_dir}")
    hydra_dir = out_dir / ".hydra"
    if hydra_dir.is_dir():
        files.append(hydra_dir)
    if cfg.tracking is not None:
        tracker = build(cfg.tracking, "tracking")
        tracker.log_run(out_dir, flat_params(cfg), metrics, files, run_tags(cfg) | (tags or {}),
                        parent_run_id=parent_run_id)
    return metrics
