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
from simsched.engines.run_to_completion import SimResult, simulate
from simsched.metrics import Sla, Window, compute_metrics
from simsched.saturation import saturation_throughput
from simsched.outputs import format_table, plot_latency_cdf, write_metrics, write_tables
from simsched.workloads.summary import format_summary, summarize


@dataclass
class Components:
    scheduler: Any
    workload: Any
    latency_model: Any
    predictor: Any
    gpus: Any
    sla: Sla
    window: Window


def build_components(cfg: DictConfig) -> Components:
    """Instantiate every group; a bad value raises ConfigError naming its dotted key."""
    from simsched.errors import ConfigError, check_positive

    parts = {g: build(cfg[g], g) for g in ("scheduler", "workload", "latency_model", "predictor", "gpus")}
    try:
        sla = Sla(**OmegaConf.to_container(cfg.sla))
    except ConfigError as exc:
        raise exc.under("sla") from None
    try:
        window = Window(warmup_fraction=cfg.metrics.warmup_fraction)
        check_positive("saturation_requests", cfg.metrics.saturation_requests, integer=True, allow_zero=True)
    except ConfigError as exc:
        raise exc.under("metrics") from None
    return Components(sla=sla, window=window, **parts)


def simulate_config(cfg: DictConfig, comps: Components | None = None) -> tuple[SimResult, dict[str, Any], Components]:
    """Build and run the simulation of a config; returns the result, its metrics and components."""
    comps = comps or build_components(cfg)
    root = np.random.SeedSequence(int(cfg.seed))
    workload_ss, sim_ss, saturation_ss = root.spawn(3)
    wl_seed = getattr(comps.workload, "seed", None)
    wl_rng = np.random.default_rng(wl_seed if wl_seed is not None else workload_ss)
    t0 = time.perf_counter()
    requests = comps.workload.generate(wl_rng)
    t1 = time.perf_counter()
    res = simulate(requests, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                   np.random.default_rng(sim_ss), horizon_s=cfg.engine.horizon_s, release=cfg.engine.release)
    t2 = time.perf_counter()
    mu_sat = saturation_throughput(requests, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                                   np.random.default_rng(saturation_ss), int(cfg.metrics.saturation_requests))
    metrics = compute_metrics(res, comps.sla, comps.window, saturation_rps=mu_sat)
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
        "scheduler": str(cfg.scheduler.get("name", "")),
        "k_bins": str(cfg.scheduler.get("k_bins", 1)),
        "workload": str(cfg.workload.get("name", "")),
        "lambda": "" if rate != rate else f"{rate:g}",
        "gpus": str(cfg.gpus.get("count", "")),
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
    files += write_tables(out_dir, res, cfg.output.requests_table, cfg.output.batches_table)
    if cfg.output.plots:
        files.append(plot_latency_cdf(out_dir / "latency_cdf.png", res, str(cfg.scheduler.get("name", ""))))
    if not cfg.output.quiet:
        print(format_summary(metrics))
        print(format_table(metrics, f"{cfg.scheduler.get('name', '')} on {comps.gpus.count} GPU(s), "
                                    f"workload {cfg.workload.get('name', '')}"))
        print(f"  outputs in {out_dir}")
    hydra_dir = out_dir / ".hydra"
    if hydra_dir.is_dir():
        files.append(hydra_dir)
    if cfg.tracking is not None:
        tracker = build(cfg.tracking, "tracking")
        tracker.log_run(out_dir, flat_params(cfg), metrics, files, run_tags(cfg) | (tags or {}),
                        parent_run_id=parent_run_id)
    return metrics
